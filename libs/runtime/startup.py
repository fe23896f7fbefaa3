"""Start-up failures that a restart would only repeat, and the exit code that says so.

A service that cannot start as configured (its port is taken, its model
file is missing) logs one line and exits with EXIT_CANNOT_START; the
supervisor of `tandem up` then gives up on it at once instead of restarting
it for a minute with backoff.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# sysexits.h EX_CONFIG.
EXIT_CANNOT_START = 78


class StartupError(Exception):
    """The service cannot start as configured; the message says what to change."""


@contextlib.contextmanager
def binding(what: str, host: str, port: int) -> Iterator[None]:
    """Turn a failure to listen on `host:port` into a StartupError naming `what`."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"{what} cannot listen on {host}:{port}: {reason}") from None
