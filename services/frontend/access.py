"""The door in front of the API: an API key (401), then room under the concurrency limit (503).

One aiohttp middleware, inside the error middleware (which renders what it
raises, headers and all) and before any handler reads the body: a refused
request costs a header check, nothing more. `/health` and `/metrics` stay
open to probes and scrapers and never count against the limit, so an
overloaded frontend still answers its health checks.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from .api_keys import ApiKeys
from .errors import ServiceUnavailableError, UnauthorizedError
from .metrics import FrontendMetrics
from .request_limits import ConcurrencyLimit

OPEN_PATHS = frozenset({"/health", "/metrics"})


def access_middleware(
    keys: ApiKeys, limit: ConcurrencyLimit, metrics: FrontendMetrics
) -> Middleware:
    """The middleware enforcing `keys` (when there are any) and `limit` on every API path."""
    unauthorized = metrics.rejected.labels("unauthorized")
    overloaded = metrics.rejected.labels("overloaded")
    locked = len(keys) > 0

    @web.middleware
    async def access(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if locked and not keys.accepts(request.headers.get("Authorization")):
            unauthorized.inc()
            if "Authorization" in request.headers:
                raise UnauthorizedError("Incorrect API key provided.")
            raise UnauthorizedError("Missing API key: send it as 'Authorization: Bearer <key>'.")
        if not limit.try_acquire():
            overloaded.inc()
            raise ServiceUnavailableError(
                f"This frontend is serving its limit of {limit.limit} concurrent requests; "
                "retry shortly.",
            )
        try:
            return await handler(request)
        finally:
            limit.release()

    return access
