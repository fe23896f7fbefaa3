"""One exception per failure a client can see, each mapped once to an HTTP status.

The body is always the OpenAI error object
`{"error": {"message", "type", "param", "code"}}`, the shape the official
clients parse. The HTTP layer is the only place that turns these into responses.
"""

from __future__ import annotations

from typing import Any


class FrontendError(Exception):
    """Base: a failure with its HTTP status and OpenAI error type/code."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """HTTP headers the response carries beside the body."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(FrontendError):
    """A well-formed request asking for something invalid (range, empty messages, role...)."""

    status = 400
    type = "invalid_request_error"


class MalformedJsonError(InvalidRequestError):
    """The body is not JSON, or not a JSON object."""

    code = "invalid_json"


class UnsupportedParameterError(InvalidRequestError):
    """A parameter we do not implement, or an unknown one."""

    code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus max_tokens does not fit the model's context (the worker says so)."""

    code = "context_length_exceeded"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class UnauthorizedError(FrontendError):
    """No API key, or not one of the frontend's (`--api-key`); OpenAI's 401 shape."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class InvalidTypeError(FrontendError):
    """A field has the wrong JSON type, or a required one is missing (422, as schema errors)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_type"


class ModelNotFoundError(FrontendError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(FrontendError):
    """An HTTP path we do not serve."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(FrontendError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


RETRY_AFTER_SECONDS = 1
"""What a 503 tells a client to wait: each cause (a worker about to register, a stream freeing
its place, the router's queue draining) clears within seconds."""


class ServiceUnavailableError(FrontendError):
    """No worker can take the request right now (none registered, all failed, router queue full).

    The response says when to try again (`Retry-After`, seconds).
    """

    status = 503
    type = "service_unavailable_error"
    code = "service_unavailable"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int = RETRY_AFTER_SECONDS,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class EngineError(FrontendError):
    """The worker reported an error for this request (not the client's fault)."""

    status = 500
    type = "server_error"
    code = "engine_error"
