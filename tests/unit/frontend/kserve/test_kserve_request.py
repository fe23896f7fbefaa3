"""The KServe LLM tensor contract: a ModelInferRequest read into an LlmRequest, or refused
with an error naming the tensor (both raw and typed contents, as clients send them)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from tandem.frontend.errors import InvalidRequestError
from tandem.frontend.kserve.llm_request import read_request
from tandem.frontend.kserve.tensors import bytes_tensor_raw
from tandem.frontend.request_types import DEFAULT_COMPLETIONS_MAX_TOKENS
from tandem.runtime.wire.kserve import grpc_service_pb2 as pb

_CODES = {"BOOL": "?", "INT32": "i", "INT64": "q", "UINT64": "Q", "FP32": "f", "FP64": "d"}


def raw_request(*inputs: tuple[str, str, list[int], list[Any]]) -> pb.ModelInferRequest:
    """A request carrying `inputs` (name, datatype, shape, values) in raw_input_contents."""
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, values in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        if datatype == "BYTES":
            request.raw_input_contents.append(bytes_tensor_raw(values))
        else:
            code = _CODES[datatype]
            request.raw_input_contents.append(struct.pack(f"<{len(values)}{code}", *values))
    return request


def text(
    value: bytes = b"Hello", shape: list[int] | None = None
) -> tuple[str, str, list[int], list[Any]]:
    return ("text_input", "BYTES", shape or [1], [value])


def refused(request: pb.ModelInferRequest) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        read_request(request)
    return info.value


def test_text_alone_gets_the_defaults() -> None:
    parsed = read_request(raw_request(text(b"Hello, sea")))
    assert parsed.model == "m" and parsed.text == "Hello, sea"
    assert parsed.sampling.max_tokens == DEFAULT_COMPLETIONS_MAX_TOKENS
    assert (parsed.sampling.temperature, parsed.sampling.top_p, parsed.sampling.top_k) == (
        1.0,
        1.0,
        0,
    )
    assert not parsed.stream and parsed.exclude_input and not parsed.has_max_tokens
    assert parsed.shape == (1,)


def test_every_control_is_read_from_raw_contents() -> None:
    parsed = read_request(
        raw_request(
            text(b"Hi", shape=[1, 1]),
            ("max_tokens", "INT32", [1, 1], [7]),
            ("stream", "BOOL", [1], [True]),
            ("temperature", "FP32", [1], [0.5]),
            ("top_p", "FP64", [1], [0.25]),
            ("top_k", "INT64", [1], [40]),
            ("random_seed", "UINT64", [1], [2**64 - 1]),
            ("stop_words", "BYTES", [2], [b"\n\n", b"END"]),
            ("ignore_eos", "BOOL", [1], [True]),
            ("exclude_input_in_output", "BOOL", [1], [False]),
        )
    )
    s = parsed.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed) == (7, 0.5, 0.25, 40, 2**64 - 1)
    assert s.stop == ("\n\n", "END") and s.ignore_eos
    assert parsed.stream and not parsed.exclude_input and parsed.has_max_tokens
    assert parsed.shape == (1, 1)


def test_typed_contents_are_read_too() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(
        name="text_input", datatype="BYTES", shape=[1]
    ).contents.bytes_contents.append(b"Hey")
    request.inputs.add(name="max_tokens", datatype="INT32", shape=[1]).contents.int_contents.append(
        3
    )
    request.inputs.add(
        name="temperature", datatype="FP32", shape=[1]
    ).contents.fp32_contents.append(0.0)
    parsed = read_request(request)
    assert parsed.text == "Hey" and parsed.sampling.max_tokens == 3
    assert parsed.sampling.temperature == 0.0


@pytest.mark.parametrize(
    ("inputs", "param", "words"),
    [
        ((("max_tokens", "INT32", [1], [4]),), "text_input", "missing"),
        ((text(b""),), "text_input", "empty"),
        ((text(b"\xff\xfe"),), "text_input", "UTF-8"),
        ((("text_input", "INT32", [1], [5]),), "text_input", "must be BYTES"),
        ((text(shape=[2]),), "text_input", "one element"),
        ((text(), ("max_tokens", "FP32", [1], [4.0])), "max_tokens", "must be INT32"),
        ((text(), ("max_tokens", "INT32", [1], [0])), "max_tokens", "in [1,"),
        ((text(), ("temperature", "FP32", [1], [float("nan")])), "temperature", "in [0, 2]"),
        ((text(), ("top_p", "FP32", [1], [0.0])), "top_p", "(0, 1]"),
        ((text(), ("top_k", "INT32", [1], [-1])), "top_k", "0 (off)"),
        ((text(), ("stream", "INT32", [1], [1])), "stream", "must be BOOL"),
        ((text(), ("stop_words", "BYTES", [1], [b""])), "stop_words", "none empty"),
        ((text(), ("stop_words", "BYTES", [17], [b"x"] * 17)), "stop_words", "1 to 16"),
        ((text(), ("beam_width", "INT32", [1], [1])), "beam_width", "unknown input"),
        ((text(), text()), "text_input", "twice"),
    ],
)
def test_bad_inputs_are_refused_naming_the_tensor(
    inputs: tuple[tuple[str, str, list[int], list[Any]], ...], param: str, words: str
) -> None:
    error = refused(raw_request(*inputs))
    assert error.param == param and words in error.message, error.message


def test_contents_that_do_not_add_up_are_refused() -> None:
    short = raw_request(text())
    short.raw_input_contents[0] = b"\x09\x00\x00\x00abc"  # says 9 bytes, holds 3
    assert "says 9 bytes" in refused(short).message
    odd = raw_request(text(), ("max_tokens", "INT32", [1], [4]))
    odd.raw_input_contents[1] = b"\x01\x02\x03"
    assert "whole number" in refused(odd).message
    missing = raw_request(text(), ("max_tokens", "INT32", [1], [4]))
    del missing.raw_input_contents[1]
    assert refused(missing).param == "raw_input_contents"
    negative = raw_request(text(shape=[-1]))
    assert "negative" in refused(negative).message
    request = raw_request(text())
    request.outputs.add(name="logits")
    assert "unknown output 'logits'" in refused(request).message


def sampling(parameters: object) -> tuple[str, str, list[int], list[Any]]:
    raw = parameters if isinstance(parameters, bytes) else json.dumps(parameters).encode()
    return ("sampling_parameters", "BYTES", [1], [raw])


def test_the_vllm_models_sampling_parameters_json_string_values_too() -> None:
    parameters = {"temperature": "0.1", "top_p": 0.9, "top_k": -1, "max_tokens": "64",
                  "seed": 7, "stop": ["\n"], "ignore_eos": "true"}  # fmt: skip
    parsed = read_request(raw_request(text(), sampling(parameters)))
    s = parsed.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.seed) == (0.1, 0.9, 0, 64, 7)
    assert s.stop == ("\n",) and s.ignore_eos and parsed.has_max_tokens
    assert read_request(raw_request(text(), sampling({"stop": "END"}))).sampling.stop == ("END",)


@pytest.mark.parametrize(
    ("parameters", "param", "words"),
    [
        (b"{not json", "sampling_parameters", "JSON object"),
        ([1, 2], "sampling_parameters", "JSON object"),
        ({"presence_penalty": 0.5}, "sampling_parameters", "'presence_penalty' is not supported"),
        ({"max_tokens": "many"}, "sampling_parameters", "invalid value"),
        ({"max_tokens": 2.5}, "sampling_parameters", "invalid value"),
        ({"ignore_eos": "yes"}, "sampling_parameters", "invalid value"),
        ({"temperature": 3}, "temperature", "in [0, 2]"),
        ({"stop": ["x"] * 17}, "stop_words", "1 to 16"),
    ],
)
def test_bad_sampling_parameters_are_refused(parameters: object, param: str, words: str) -> None:
    error = refused(raw_request(text(), sampling(parameters)))
    assert error.param == param and words in error.message, error.message


def test_a_control_given_twice_is_refused() -> None:
    request = raw_request(text(), ("max_tokens", "INT32", [1], [4]), sampling({"max_tokens": 8}))
    error = refused(request)
    assert error.param == "max_tokens" and "both" in error.message
