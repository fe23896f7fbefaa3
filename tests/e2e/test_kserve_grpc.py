"""The KServe v2 gRPC API of a real frontend process, through the real `tritonclient` (sync)
client, against real mocker worker processes: health and metadata, infer, stream infer and
cancellation, and each refusal's gRPC status."""

from __future__ import annotations

import queue
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tandem.launcher.local_infra import LocalInfra, free_port
from tritonclient.utils import InferenceServerException

from tests.e2e.openai_cluster import MODEL, Cluster

KEY = "sk-kserve-e2e-5b1f"


def start_kserve_frontend(cluster: Cluster, *extra: str, wait_workers: int = 1) -> str:
    """Start `cluster`'s frontend with the KServe API on a free port; its host:port."""
    port = free_port()
    cluster.start_frontend("--grpc-port", str(port), *extra, wait_workers=wait_workers)
    assert cluster.frontend is not None
    cluster.frontend.wait_log("KServe gRPC inference API at")
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("kserve-logs")
    c = Cluster(infra, logs)
    try:
        # Real-time decode (~6 ms a token): a long stream stays open while the test looks.
        c.start_workers(1, speedup=1.0)
        c.grpc_url = start_kserve_frontend(c)  # type: ignore[attr-defined]
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(cluster.grpc_url)  # type: ignore[attr-defined]
    yield c
    c.close()


def tensor(name: str, datatype: str, value: Any) -> triton.InferInput:
    dtype = {"BYTES": np.object_, "INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32}
    t = triton.InferInput(name, [1, 1], datatype)  # with a batch dimension, as TRT-LLM's are
    t.set_data_from_numpy(np.array([[value]], dtype=dtype[datatype]))
    return t


def llm_inputs(
    prompt: str = "Tell me about the sea.", max_tokens: int = 8, **extra: Any
) -> list[triton.InferInput]:
    tensors = [
        tensor("text_input", "BYTES", prompt.encode()),
        tensor("max_tokens", "INT32", max_tokens),
        tensor("ignore_eos", "BOOL", True),
    ]
    return tensors + [tensor(name, dt, value) for name, (dt, value) in extra.items()]


def text_of(result: Any) -> str:
    values = result.as_numpy("text_output")
    assert values.shape == (1, 1)  # text_input's shape
    return str(values[0][0].decode())


def frontend_metric(cluster: Cluster, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{cluster.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def status_of(call: Any, *args: Any, **kw: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kw)
    return str(info.value.status()), str(info.value.message())


def test_live_ready_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    names = [t["name"] for t in meta["inputs"]]
    assert names[0] == "text_input" and {"max_tokens", "stream", "temperature", "top_p"} <= set(
        names
    )
    assert [t["name"] for t in meta["outputs"]] == ["text_output"]


def test_infer_generates_max_tokens_of_text(
    cluster: Cluster, client: triton.InferenceServerClient
) -> None:
    tokens_before = frontend_metric(
        cluster, "tandem_frontend_output_sequence_tokens_sum", model=MODEL
    )
    result = client.infer(
        MODEL, llm_inputs(max_tokens=12, temperature=("FP32", 0.0)), request_id="e2e-1"
    )
    assert text_of(result) and result.get_response().id == "e2e-1"
    # The worker generated what max_tokens asked, through the frontend's generation path.
    tokens = frontend_metric(cluster, "tandem_frontend_output_sequence_tokens_sum", model=MODEL)
    assert tokens - tokens_before == 12
    assert (
        frontend_metric(
            cluster, "tandem_frontend_requests_total", endpoint="kserve_infer", status="success"
        )
        >= 1
    )


def test_the_vllm_models_sampling_parameters(
    cluster: Cluster, client: triton.InferenceServerClient
) -> None:
    before = frontend_metric(cluster, "tandem_frontend_output_sequence_tokens_sum", model=MODEL)
    parameters = b'{"max_tokens": "5", "temperature": "0.7", "ignore_eos": true}'
    result = client.infer(
        MODEL,
        [tensor("text_input", "BYTES", b"Hi"), tensor("sampling_parameters", "BYTES", parameters)],
    )
    assert text_of(result)
    after = frontend_metric(cluster, "tandem_frontend_output_sequence_tokens_sum", model=MODEL)
    assert after - before == 5


def test_stream_infer_streams_and_a_cancelled_stream_frees_the_worker(
    cluster: Cluster, client: triton.InferenceServerClient
) -> None:
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put(error or result))
    # A whole short answer: chunks, the last one flagged final.
    client.async_stream_infer(
        MODEL, llm_inputs(max_tokens=10, stream=("BOOL", True)), request_id="short"
    )
    chunks = []
    while (
        not chunks or not chunks[-1].get_response().parameters["triton_final_response"].bool_param
    ):
        item = got.get(timeout=60)
        assert not isinstance(item, Exception), item
        chunks.append(item)
    assert "".join(text_of(c) for c in chunks)
    assert {c.get_response().id for c in chunks} == {"short"}

    # A long one (~12 s of decode): its first chunk arrives while the worker still runs it.
    client.async_stream_infer(
        MODEL, llm_inputs(max_tokens=2000, stream=("BOOL", True)), request_id="long"
    )
    first = got.get(timeout=60)
    assert not isinstance(first, Exception), first
    assert not first.get_response().parameters["triton_final_response"].bool_param
    worker = cluster.workers[0]
    assert worker.num_running() == 1
    client.stop_stream(cancel_requests=True)
    assert cluster.frontend is not None
    cluster.frontend.wait_until(lambda: worker.num_running() == 0, 30, "the worker to drop it")


def test_bad_requests_get_their_grpc_status(client: triton.InferenceServerClient) -> None:
    missing = [tensor("max_tokens", "INT32", 4)]
    assert status_of(client.infer, MODEL, missing)[0] == "StatusCode.INVALID_ARGUMENT"
    wrong_type = [tensor("text_input", "INT32", 3)]
    code, message = status_of(client.infer, MODEL, wrong_type)
    assert code == "StatusCode.INVALID_ARGUMENT" and "must be BYTES" in message
    code, message = status_of(client.infer, "no-such-model", llm_inputs())
    assert code == "StatusCode.NOT_FOUND" and "does not exist" in message
    code, _ = status_of(client.get_model_metadata, "no-such-model")
    assert code == "StatusCode.NOT_FOUND"
    # Longer than the mocker's context: the worker refuses it, the client is told why.
    code, message = status_of(client.infer, MODEL, llm_inputs(max_tokens=2**31 - 1))
    assert code == "StatusCode.INVALID_ARGUMENT", message


def test_keys_limit_and_no_worker(
    infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A locked frontend with room for one request, and a model with no worker yet."""
    logs = tmp_path_factory.mktemp("kserve-locked")
    c = Cluster(infra, logs)
    try:
        url = start_kserve_frontend(
            c, "--api-key", KEY, "--max-concurrent-requests", "1", *c.static_model_flags(),
            wait_workers=0,
        )  # fmt: skip
        client = triton.InferenceServerClient(url)
        auth = {"authorization": f"Bearer {KEY}"}
        assert client.is_server_live() and not client.is_server_ready()  # open, no worker yet
        for headers in (None, {"authorization": "Bearer sk-wrong"}):
            code, _ = status_of(client.infer, MODEL, llm_inputs(), headers=headers)
            assert code == "StatusCode.UNAUTHENTICATED"
        # Served here, no worker: UNAVAILABLE, retry later.
        code, message = status_of(client.infer, MODEL, llm_inputs(), headers=auth)
        assert code == "StatusCode.UNAVAILABLE" and "No worker" in message

        c.start_workers(1, speedup=1.0)
        c.wait_workers(1)
        assert client.is_server_ready() and client.is_model_ready(MODEL, headers=auth)
        got: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: got.put(error or result), headers=auth)
        client.async_stream_infer(MODEL, llm_inputs(max_tokens=2000, stream=("BOOL", True)))
        assert not isinstance(got.get(timeout=60), Exception)  # it holds the one place
        code, message = status_of(client.infer, MODEL, llm_inputs(), headers=auth)
        assert code == "StatusCode.RESOURCE_EXHAUSTED" and "limit of 1" in message
        client.stop_stream(cancel_requests=True)
        client.close()
    finally:
        c.stop()
