"""How the Worker service ends a request an engine refused: the gRPC status each refusal maps to."""

from __future__ import annotations

import grpc
from tandem.worker.admission import ContextLengthError
from tandem.worker.engine import EngineError, EngineStoppedError
from tandem.worker.grpc_service import status_of


def test_each_refusal_has_the_status_its_client_acts_on() -> None:
    # OUT_OF_RANGE and INVALID_ARGUMENT: the request is bad (a 400 at the frontend);
    # UNAVAILABLE: this worker cannot take it now, another one may.
    assert status_of(ContextLengthError("too long")) == grpc.StatusCode.OUT_OF_RANGE
    assert status_of(EngineError("bad value")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(EngineStoppedError("engine is not running")) == grpc.StatusCode.UNAVAILABLE
