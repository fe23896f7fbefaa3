"""The `inference.GRPCInferenceService` servicer: health, metadata, ModelInfer, ModelStreamInfer.

ServerLive and ServerReady stay open, as `/health` does; every other RPC needs
the frontend's API key, when it has any, in the call metadata
`authorization: Bearer <key>` (else UNAUTHENTICATED). A failed ModelInfer
ends with the status of its error (`status.py`). ModelStreamInfer serves the
requests of one call concurrently and, as Triton does, answers a failed one
with a response whose `error_message` says why, the call going on.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.wire.kserve import grpc_service_pb2 as pb
from tandem.runtime.wire.kserve import grpc_service_pb2_grpc as pb_grpc

from ..api_keys import ApiKeys
from ..errors import FrontendError, UnauthorizedError
from .inference import MODEL_VERSION, KserveInference
from .llm_request import INPUTS, OUTPUTS
from .status import status_code

log = logging.getLogger(__name__)

PLATFORM = "tandem"
TensorMetadata = pb.ModelMetadataResponse.TensorMetadata


def _version() -> str:
    try:
        return importlib.metadata.version("tandem")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata, text values only (keys arrive lowercase)."""
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Answers the KServe v2 RPCs for the frontend's models; owns no state of its own but the
    requests of the ModelStreamInfer calls in flight."""

    def __init__(self, inference: KserveInference, keys: ApiKeys) -> None:
        self._inference = inference
        self._keys = keys
        self._models = inference.models
        self._unauthorized = inference.metrics.rejected.labels("unauthorized")
        self._server_version = _version()

    def _check_key(self, metadata: Mapping[str, str]) -> None:
        if not len(self._keys) or self._keys.accepts(metadata.get("authorization")):
            return
        self._unauthorized.inc()
        if "authorization" in metadata:
            raise UnauthorizedError("Incorrect API key provided.")
        raise UnauthorizedError(
            "Missing API key: send it in the call metadata as 'authorization: Bearer <key>'."
        )

    # -- health and metadata ---------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        # Ready to infer: some model has a live worker.
        return pb.ServerReadyResponse(ready=any(len(m.workers) for m in self._models.known()))

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        await self._authorized(context)
        return pb.ServerMetadataResponse(name=PLATFORM, version=self._server_version)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        await self._authorized(context)
        model = self._models.get(request.name)
        ready = (
            model is not None and len(model.workers) > 0 and request.version in ("", MODEL_VERSION)
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        await self._authorized(context)
        try:
            model = await self._inference.lookup(request.name, request.version)
        except FrontendError as exc:
            await context.abort(status_code(exc), exc.message)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[
                TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in INPUTS.values()
            ],  # fmt: skip
            outputs=[TensorMetadata(name=n, datatype=t, shape=s) for n, t, s in OUTPUTS],
        )

    async def _authorized(self, context: grpc.aio.ServicerContext) -> dict[str, str]:
        """The call's metadata once its API key is checked; aborts UNAUTHENTICATED else."""
        metadata = _metadata(context)
        try:
            self._check_key(metadata)
        except UnauthorizedError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        return metadata

    # -- inference -------------------------------------------------------------------------

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        metadata = await self._authorized(context)
        responses: list[pb.ModelInferResponse] = []
        try:
            await self._inference.run(
                request, metadata, "kserve_infer", responses.append, streaming=False
            )
        except FrontendError as exc:
            await context.abort(status_code(exc), exc.message)
        except Exception:
            log.exception("KServe request %s failed", request.id or "(no id)")
            await context.abort(grpc.StatusCode.INTERNAL, "Internal server error.")
        return responses[-1]

    async def ModelStreamInfer(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        metadata = await self._authorized(context)
        # Requests run side by side; their responses leave through one queue, in the order
        # they were made. None: every request read has been answered.
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        reading = True

        def ended(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not reading and not running:
                out.put_nowait(None)

        async def answer(request: pb.ModelInferRequest) -> None:
            def emit(response: pb.ModelInferResponse) -> None:
                out.put_nowait(pb.ModelStreamInferResponse(infer_response=response))

            try:
                await self._inference.run(
                    request, metadata, "kserve_stream_infer", emit, streaming=True
                )
            except FrontendError as exc:
                out.put_nowait(_error_response(request, exc.message))
            except Exception:
                log.exception("KServe stream request %s failed", request.id or "(no id)")
                out.put_nowait(_error_response(request, "Internal server error."))

        async def read() -> None:
            nonlocal reading
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request), name="kserve-stream-request")
                    running.add(task)
                    task.add_done_callback(ended)
            except Exception as exc:  # the call broke; gRPC ends the handler too
                log.debug("KServe stream stopped reading: %r", exc)
            finally:
                reading = False
                if not running:
                    out.put_nowait(None)

        reader = asyncio.create_task(read(), name="kserve-stream-reader")
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            # The client went away, or every request is answered: nothing is left running.
            await cancel_and_wait(reader)
            for task in list(running):
                await cancel_and_wait(task)


def _error_response(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A stream's answer to a request that failed: why, and which request it was."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
    )
