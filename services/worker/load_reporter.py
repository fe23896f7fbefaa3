"""Publishes this worker's `LoadMetrics` on NATS: on change (rate-limited) and as a heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics

from .engine import EngineStats

log = logging.getLogger(__name__)


class LoadTransport(Protocol):
    async def publish_load(self, metrics: LoadMetrics) -> None: ...


class LoadReporter:
    """Owns the reporting task. `poke()` says load may have changed (cheap, loop thread only)."""

    def __init__(
        self,
        instance_id: str,
        stats: Callable[[], EngineStats],
        transport: LoadTransport,
        interval: float = 1.0,
        min_interval: float = 0.05,
    ) -> None:
        self.instance_id = instance_id
        self._stats = stats
        self._transport = transport
        self._interval = interval
        self._min_interval = min_interval
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._changed.set()  # first report at once
        self._task = asyncio.create_task(self._run(), name="load-reporter")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def poke(self) -> None:
        self._changed.set()

    def snapshot(self) -> LoadMetrics:
        s = self._stats()
        return LoadMetrics(
            instance_id=self.instance_id,
            total_blocks=s.total_blocks,
            active_blocks=s.active_blocks,
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            pending_prefill_tokens=s.pending_prefill_tokens,
            timestamp=time.time(),
        )

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self._transport.publish_load(self.snapshot())
            except Exception as exc:  # a NATS hiccup must not stop reporting
                log.warning(
                    "load report not published: %s", exc, extra={"instance_id": self.instance_id}
                )
            # Rate limit: coalesce the changes of the next `min_interval`.
            await asyncio.sleep(self._min_interval)
