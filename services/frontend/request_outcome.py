"""One request's outcome in the frontend's metrics, whichever API it came through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import TracebackType

from .errors import FrontendError
from .generation import Generator
from .job import GenerationJob
from .metrics import FrontendMetrics


class RequestOutcome:
    """`with RequestOutcome(...) as outcome:` counts the request in `requests_total` once,
    as it ends: success, its FrontendError's status, cancelled (a disconnect) or error.
    Set `model` once the request's model is known; wrap the generation in `generating(job)`.
    """

    def __init__(self, metrics: FrontendMetrics, generator: Generator, endpoint: str) -> None:
        self._metrics = metrics
        self._generator = generator
        self._endpoint = endpoint
        self.model = ""

    def __enter__(self) -> RequestOutcome:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            status = "success"
        elif isinstance(exc, asyncio.CancelledError):
            status = "cancelled"
            if self.model:
                self._metrics.model(self.model).disconnects.inc()
        elif isinstance(exc, FrontendError):
            status = str(exc.status)
        else:
            status = "error"
        self._metrics.count_request(self._endpoint, self.model, status)

    @contextlib.contextmanager
    def generating(self, job: GenerationJob) -> Iterator[None]:
        """The request in flight; its per-request metrics recorded when it ends."""
        inflight = self._metrics.model(self.model).inflight
        inflight.inc()
        try:
            yield
        finally:
            inflight.dec()
            self._generator.record(job)
