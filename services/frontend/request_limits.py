"""The limit on requests served at once (`--max-concurrent-requests`)."""

from __future__ import annotations


class ConcurrencyLimit:
    """Owns the count of API requests in flight; refuses one beyond `limit` rather than queue it.

    A request counts from its arrival until its response is written (a stream
    until its last byte), so a slow stream holds its place as long as it runs.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1
