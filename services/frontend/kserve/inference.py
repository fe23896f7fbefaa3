"""One KServe inference request through the frontend's generation path.

The same steps as an OpenAI completion (`http_server.py`): the model lookup,
the prompt tokenized within the model's limit (`endpoints.encode`), a
`GenerationJob` the `Generator` routes, streams and migrates, the request
metrics; only the way in (tensors) and out (`text_output`) differ.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping

from opentelemetry.trace import SpanKind, Tracer
from tandem.runtime.tracing import context_from_metadata, context_to_metadata
from tandem.runtime.wire.kserve import grpc_service_pb2 as pb

from ..endpoints import encode
from ..errors import InvalidRequestError, ModelNotFoundError
from ..generation import Generator
from ..job import GenerationJob
from ..metrics import FrontendMetrics
from ..models import ModelRegistry, ServedModel
from ..request_limits import ConcurrencyLimit
from ..request_outcome import RequestOutcome
from .llm_request import TEXT_INPUT, TEXT_OUTPUT, LlmRequest, read_request
from .status import OverloadedError
from .tensors import add_bytes_output

# Every model has one version; a request may name it or leave it empty.
MODEL_VERSION = "1"
# A ModelStreamInfer request parameter (tritonclient's `enable_empty_final_response`): the
# last response of each request is an empty one flagged `triton_final_response`.
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
FINAL_RESPONSE = "triton_final_response"
_TRACE_KEYS = ("traceparent", "tracestate")

Emit = Callable[[pb.ModelInferResponse], None]


class KserveInference:
    """Runs KServe inference requests on the frontend's models, generator, limit and metrics."""

    def __init__(
        self,
        models: ModelRegistry,
        generator: Generator,
        metrics: FrontendMetrics,
        limit: ConcurrencyLimit,
        tracer: Tracer | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics
        self._models = models
        self._generator = generator
        self._metrics = metrics
        self._limit = limit
        self._tracer = tracer
        self._overloaded = metrics.rejected.labels("overloaded")

    async def lookup(self, name: str, version: str) -> ServedModel:
        """The model `name` at `version` ("" or the one version); NOT_FOUND / UNAVAILABLE else."""
        if version not in ("", MODEL_VERSION):
            raise ModelNotFoundError(
                f"The model '{name}' has no version '{version}'; its one version is "
                f"'{MODEL_VERSION}'.",
                param="model_version",
            )
        return await self._models.lookup(name)

    async def run(
        self,
        request: pb.ModelInferRequest,
        metadata: Mapping[str, str],
        endpoint: str,
        emit: Emit,
        *,
        streaming: bool,
    ) -> None:
        """Answer `request`: `emit` its responses (one per chunk when it streams), or raise.

        `streaming`: the request came on ModelStreamInfer, whose responses carry
        the `triton_final_response` flag and may be many.
        """
        # Counted against the same limit as the OpenAI API; refused before any work.
        if not self._limit.try_acquire():
            self._overloaded.inc()
            raise OverloadedError(
                f"This frontend is serving its limit of {self._limit.limit} concurrent requests; "
                "retry shortly."
            )
        try:
            if self._tracer is None:
                await self._run(request, metadata, endpoint, emit, streaming)
                return
            parent = context_from_metadata(metadata)
            name = "ModelStreamInfer" if streaming else "ModelInfer"
            with self._tracer.start_as_current_span(
                f"KServe {name}", context=parent, kind=SpanKind.SERVER
            ):
                await self._run(request, metadata, endpoint, emit, streaming)
        finally:
            self._limit.release()

    async def _run(
        self,
        request: pb.ModelInferRequest,
        metadata: Mapping[str, str],
        endpoint: str,
        emit: Emit,
        streaming: bool,
    ) -> None:
        with RequestOutcome(self._metrics, self._generator, endpoint) as outcome:
            parsed = read_request(request)
            if parsed.stream and not streaming:
                raise InvalidRequestError(
                    "'stream' true answers one response per chunk: send it on ModelStreamInfer",
                    param="stream",
                )
            model = await self.lookup(parsed.model, request.model_version)
            outcome.model = model.name
            job = GenerationJob(
                uuid.uuid4().hex,
                model,
                await encode(model, parsed.text, TEXT_INPUT),
                parsed.sampling,
                prompt_param=TEXT_INPUT,
                length_param="max_tokens" if parsed.has_max_tokens else TEXT_INPUT,
                trace_metadata=self._trace_metadata(metadata),
            )
            with outcome.generating(job):
                await self._relay(job, parsed, request, emit, streaming)

    async def _relay(
        self,
        job: GenerationJob,
        parsed: LlmRequest,
        request: pb.ModelInferRequest,
        emit: Emit,
        streaming: bool,
    ) -> None:
        parameters = request.parameters  # (indexing a missing key would add it)
        empty_final = (
            streaming
            and EMPTY_FINAL_RESPONSE in parameters
            and parameters[EMPTY_FINAL_RESPONSE].bool_param
        )

        def respond(text: str, final: bool, *, with_output: bool = True) -> None:
            response = pb.ModelInferResponse(
                model_name=job.model.name, model_version=MODEL_VERSION, id=request.id
            )
            if with_output:
                add_bytes_output(response, TEXT_OUTPUT, (text.encode(),), parsed.shape)
            if streaming:
                response.parameters[FINAL_RESPONSE].bool_param = final
            emit(response)

        texts = [] if parsed.exclude_input or parsed.stream else [parsed.text]
        async with contextlib.aclosing(self._generator.stream(job)) as outputs:
            async for out in outputs:
                final = out.finish_reason is not None
                if not parsed.stream:
                    texts.extend(out.texts)
                    continue
                text = "".join(out.texts)
                # A chunk whose text is held back (a partial character or stop string) is
                # not a response; the last one is, text or not, unless an empty one follows.
                if text or (final and not empty_final):
                    respond(text, final and not empty_final)
        if not parsed.stream:
            respond("".join(texts), not empty_final)
        if empty_final:
            respond("", True, with_output=False)

    def _trace_metadata(self, metadata: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The trace context the worker gets: our span's, else the client's (passed on)."""
        if self._tracer is not None:
            return tuple(context_to_metadata())
        return tuple((key, metadata[key]) for key in _TRACE_KEYS if key in metadata)
