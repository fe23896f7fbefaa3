"""The text-in, text-out tensors of Triton's LLM backends, and a request's reading of them.

A model served over KServe v2 takes `text_input` (BYTES, one element: the
prompt, no chat template) and optionally the generation controls Triton's
TensorRT-LLM and vLLM models take under the same names (`max_tokens`,
`stream`, `temperature`, ...); it answers `text_output` (BYTES: the generated
text). `read_request` checks a `ModelInferRequest` against that contract and
gives the `LlmRequest` the generation path runs; everything it refuses is an
`InvalidRequestError` naming the tensor (gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tandem.runtime.wire.kserve import grpc_service_pb2 as pb

from ..errors import InvalidRequestError
from ..request_types import DEFAULT_COMPLETIONS_MAX_TOKENS, MAX_STOP_SEQUENCES, SamplingOptions
from .sampling_json import SAMPLING_PARAMETERS, sampling_values
from .tensors import BYTES, FLOAT_TYPES, INTEGER_TYPES, element_count, read_input

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
_INT32_MAX = 2**31 - 1
_UINT64 = 2**64


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input the model takes: its published datatype and shape, what else it accepts."""

    name: str
    datatype: str
    accepts: frozenset[str]
    # Elements it takes at most (1: a scalar, sent with any shape of one element).
    max_elements: int = 1
    required: bool = False

    @property
    def shape(self) -> list[int]:
        return [1] if self.max_elements == 1 else [-1]


_BYTES = frozenset({BYTES})
_BOOL = frozenset({"BOOL"})
INPUTS: dict[str, InputSpec] = {
    s.name: s
    for s in (
        InputSpec(TEXT_INPUT, BYTES, _BYTES, required=True),
        InputSpec("max_tokens", "INT32", INTEGER_TYPES),
        InputSpec("stream", "BOOL", _BOOL),
        InputSpec("temperature", "FP32", FLOAT_TYPES),
        InputSpec("top_p", "FP32", FLOAT_TYPES),
        InputSpec("top_k", "INT32", INTEGER_TYPES),
        InputSpec("random_seed", "UINT64", INTEGER_TYPES),
        InputSpec("stop_words", BYTES, _BYTES, max_elements=MAX_STOP_SEQUENCES),
        InputSpec("ignore_eos", "BOOL", _BOOL),
        InputSpec("exclude_input_in_output", "BOOL", _BOOL),
        # The vLLM model's way: the controls above as one JSON object.
        InputSpec(SAMPLING_PARAMETERS, BYTES, _BYTES),
    )
}
# (name, datatype, shape) of every output, as ModelMetadata publishes them.
OUTPUTS = ((TEXT_OUTPUT, BYTES, [-1]),)


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """A checked KServe request: the prompt text and how to continue it."""

    model: str
    text: str
    sampling: SamplingOptions
    # The client gave max_tokens (an error about the length then names it).
    has_max_tokens: bool
    # One response per output chunk (ModelStreamInfer only), else one with all the text.
    stream: bool
    # True (the default): text_output is the generated text; false puts the prompt before
    # it in a whole answer, as Triton's vLLM model does by default (never in a stream).
    exclude_input: bool
    # text_input's shape, which text_output's repeats ([1], or [1, 1] with a batch dimension).
    shape: tuple[int, ...]


def read_request(request: pb.ModelInferRequest) -> LlmRequest:
    """The `LlmRequest` that `request` makes, or the `InvalidRequestError` for what it breaks."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs",
            param="raw_input_contents",
        )
    for output in request.outputs:
        if output.name != TEXT_OUTPUT:
            raise InvalidRequestError(
                f"unknown output '{output.name}' requested; this model has only '{TEXT_OUTPUT}'",
                param=output.name,
            )
    values: dict[str, list[Any]] = {}
    shape: tuple[int, ...] = (1,)
    for i, tensor in enumerate(request.inputs):
        spec = INPUTS.get(tensor.name)
        if spec is None:
            raise InvalidRequestError(
                f"unknown input '{tensor.name}'; this model takes {', '.join(INPUTS)}",
                param=tensor.name,
            )
        if tensor.name in values:
            raise InvalidRequestError(f"input '{tensor.name}' given twice", param=tensor.name)
        if tensor.datatype not in spec.accepts:
            raise InvalidRequestError(
                f"input '{tensor.name}' must be {spec.datatype}, not {tensor.datatype or 'untyped'}",
                param=tensor.name,
            )
        count = element_count(tensor)
        if not 1 <= count <= spec.max_elements:
            what = "one element" if spec.max_elements == 1 else f"1 to {spec.max_elements} elements"
            raise InvalidRequestError(
                f"input '{tensor.name}' must hold {what}; its shape {list(tensor.shape)} holds "
                f"{count}",
                param=tensor.name,
            )
        values[tensor.name] = read_input(tensor, raw[i] if raw else None)
        if tensor.name == TEXT_INPUT:
            shape = tuple(tensor.shape)
    if SAMPLING_PARAMETERS in values:
        for name, elements in sampling_values(values.pop(SAMPLING_PARAMETERS)[0]).items():
            if name in values:
                raise InvalidRequestError(
                    f"'{name}' is given both as an input and in '{SAMPLING_PARAMETERS}'",
                    param=name,
                )
            values[name] = elements
    if TEXT_INPUT not in values:
        raise InvalidRequestError(
            f"the input '{TEXT_INPUT}' (BYTES, the prompt) is missing", param=TEXT_INPUT
        )
    text = _text(TEXT_INPUT, values[TEXT_INPUT][0])
    if not text:
        raise InvalidRequestError(f"'{TEXT_INPUT}' must not be empty", param=TEXT_INPUT)

    def scalar(name: str, check: Callable[[Any], bool], rule: str) -> Any:
        if name not in values:
            return None
        value = values[name][0]
        if not check(value):
            raise InvalidRequestError(f"'{name}' must be {rule}, got {value!r}", param=name)
        return value

    max_tokens = scalar("max_tokens", lambda v: 1 <= v <= _INT32_MAX, f"in [1, {_INT32_MAX}]")
    temperature = scalar("temperature", lambda v: 0.0 <= v <= 2.0, "in [0, 2]")
    top_p = scalar("top_p", lambda v: 0.0 < v <= 1.0, "in (0, 1]")
    top_k = scalar("top_k", lambda v: 0 <= v <= _INT32_MAX, "0 (off) or a positive count")
    seed = scalar("random_seed", lambda _v: True, "an integer")
    stops = tuple(_text("stop_words", word) for word in values.get("stop_words", ()))
    if any(not word for word in stops) or len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"'stop_words' must hold 1 to {MAX_STOP_SEQUENCES} strings, none empty",
            param="stop_words",
        )
    sampling = SamplingOptions(
        max_tokens=DEFAULT_COMPLETIONS_MAX_TOKENS if max_tokens is None else max_tokens,
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=top_k or 0,
        seed=None if seed is None else seed % _UINT64,
        stop=stops,
        ignore_eos=bool(scalar("ignore_eos", _any, "a boolean")),
    )
    exclude = scalar("exclude_input_in_output", _any, "a boolean")
    return LlmRequest(
        model=request.model_name,
        text=text,
        sampling=sampling,
        has_max_tokens=max_tokens is not None,
        stream=bool(scalar("stream", _any, "a boolean")),
        exclude_input=True if exclude is None else bool(exclude),
        shape=shape,
    )


def _any(_value: Any) -> bool:
    return True


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"'{name}' must be UTF-8 text", param=name) from None
