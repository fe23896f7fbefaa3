"""The gRPC status of each frontend error: the one mapping of the KServe edge.

The frontend's errors carry the HTTP status the OpenAI API answers them with;
the KServe service answers the same failure with the gRPC status that means
it, so both APIs refuse the same requests for the same reasons.
"""

from __future__ import annotations

import grpc

from ..errors import FrontendError, ServiceUnavailableError

_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,  # a bad tensor, prompt too long, bad stop words
    401: grpc.StatusCode.UNAUTHENTICATED,  # no or a wrong API key
    404: grpc.StatusCode.NOT_FOUND,  # no such model (or version)
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # beyond a size limit
    422: grpc.StatusCode.INVALID_ARGUMENT,  # a wrong type
    503: grpc.StatusCode.UNAVAILABLE,  # no worker can take it now: retry
}


class OverloadedError(ServiceUnavailableError):
    """`--max-concurrent-requests` are in flight: the OpenAI API's 503, gRPC's RESOURCE_EXHAUSTED."""


def status_code(exc: FrontendError) -> grpc.StatusCode:
    """The gRPC status that answers `exc` (INTERNAL for an engine or unexpected failure)."""
    if isinstance(exc, OverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _BY_HTTP_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)
