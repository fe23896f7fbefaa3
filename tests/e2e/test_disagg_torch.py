"""Torch engine served disaggregated: 1 prefill + 1 decode worker (real processes, nats, etcd).

A long prompt sent to the decode worker with a remote-prefill instruction is
prefilled on the prefill worker, its KV moved into the decode worker's pool
(`--kv-transport nixl` and `grpc`), and decoded there: the greedy output is
token-identical to the same engine serving it aggregated, and the decode
worker ran no prefill step (its prefill step time stays 0). Through a
frontend (gRPC transport), the conditional rule sends a long prompt there by
itself and the OpenAI API returns the aggregated engine's greedy text.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from tests.e2e.openai_cluster import MODEL, Cluster
from tests.support.kv_transfer import TRANSPORTS
from tests.support.processes import ServiceProcess, infra_flags, worker_ready
from tests.support.torch_engine import collect, random_prompt, started_engine

pytestmark = pytest.mark.slow

PROMPT = random_prompt(300, seed=12)  # 19 blocks of 16: a real transfer
FRONTEND_PROMPT = random_prompt(300, seed=13)  # no prefix shared with PROMPT
MAX_TOKENS = 24


@dataclass
class Pair:
    """A prefill and a decode torch worker of one transport, in a namespace of their own."""

    infra: LocalInfra
    namespace: str
    log_dir: Path
    prefill: tuple[str, str, str]  # instance id, gRPC endpoint, /metrics address
    decode: tuple[str, str, str]
    prefill_proc: ServiceProcess
    decode_proc: ServiceProcess


def _torch_worker(
    infra: LocalInfra, namespace: str, log_dir: Path, role: str, transport: str
) -> ServiceProcess:
    args = ["--engine", "torch", *infra_flags(infra, namespace), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--disaggregation-mode", role,
            "--kv-transport", transport, "--dtype", "float32", "--device", "cpu",
            "--num-kv-blocks", "256", "--instance-id", f"{role}-{transport}",
            # A loaded CI machine may take many seconds for one prefill: never fall back here.
            "--remote-prefill-timeout", "300"]  # fmt: skip
    return ServiceProcess("tandem.worker", args, log_dir)


def _metric(address: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` on `address`'s /metrics whose labels include `labels`."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)
    matching = [v for tags, v in samples if all(f'{k}="{x}"' in tags for k, x in labels.items())]
    assert samples or labels, f"{name} not on {address}: {text[:2000]}"
    return sum(float(v) for v in matching)


@pytest.fixture(scope="module")
def aggregated_tokens() -> dict[str, list[int]]:
    """The reference: the same engine and settings, serving each prompt aggregated."""
    import asyncio

    async def run() -> dict[str, list[int]]:
        async with started_engine(num_kv_blocks=256) as (engine, _):
            direct, _ = await collect(engine, PROMPT, "ref", max_tokens=MAX_TOKENS)
            frontend, _ = await collect(engine, FRONTEND_PROMPT, "ref2", max_tokens=MAX_TOKENS)
        return {"direct": direct, "frontend": frontend}

    return asyncio.run(run())


@pytest.fixture(scope="module")
def pair(
    request: pytest.FixtureRequest, infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """One pair per transport for the module: both tests of a transport share its processes."""
    transport = request.param
    namespace = f"t{uuid.uuid4().hex[:10]}"
    log_dir = tmp_path_factory.mktemp(f"disagg-torch-{transport}")
    prefill = _torch_worker(infra, namespace, log_dir, "prefill", transport)
    decode = _torch_worker(infra, namespace, log_dir, "decode", transport)
    try:
        yield Pair(
            infra, namespace, log_dir, worker_ready(prefill, 180), worker_ready(decode, 180),
            prefill, decode,
        )  # fmt: skip
    finally:
        decode.stop()
        prefill.stop()


@pytest.mark.parametrize("pair", TRANSPORTS, indirect=True)
async def test_disaggregated_output_matches_aggregated(
    pair: Pair, aggregated_tokens: dict[str, list[int]]
) -> None:
    prefill_id, _, prefill_metrics = pair.prefill
    _, decode_endpoint, decode_metrics = pair.decode
    request = worker_pb2.GenerateRequest(
        request_id="disagg-1",
        token_ids=PROMPT,
        sampling=worker_pb2.SamplingParams(max_tokens=MAX_TOKENS),
        remote_prefill=worker_pb2.RemotePrefill(prefill_instance_id=prefill_id),
    )
    async with create_channel(decode_endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        tokens = [t async for r in stub.Generate(request, timeout=240) for t in r.token_ids]
    assert tokens == aggregated_tokens["direct"]
    # The decode worker computed nothing of the prompt; the prefill worker did.
    assert _metric(decode_metrics, "tandem_worker_prefill_step_seconds") == 0.0
    assert _metric(prefill_metrics, "tandem_worker_prefill_step_seconds") > 0.0
    pair.prefill_proc.wait_log("kv transfer sent transfer_id=", timeout=10)
    pair.decode_proc.wait_log("kv transfer received transfer_id=", timeout=10)


@pytest.mark.parametrize("pair", ["grpc"], indirect=True)
def test_through_the_frontend_a_long_prompt_is_prefilled_remotely(
    pair: Pair, aggregated_tokens: dict[str, list[int]]
) -> None:
    cluster = Cluster(pair.infra, pair.log_dir, namespace=pair.namespace)
    try:
        cluster.start_frontend("--max-local-prefill-length", "64", wait_workers=2)
        decode_metrics = pair.decode[2]
        remote_before = _metric(
            decode_metrics, "tandem_worker_remote_prefills_total", outcome="remote"
        )
        client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0)
        reply = client.completions.create(
            model=MODEL, prompt=FRONTEND_PROMPT, max_tokens=MAX_TOKENS, temperature=0, timeout=240
        )
        decision = _metric(
            f"127.0.0.1:{cluster.port}", "tandem_frontend_disagg_decisions_total",
            decision="remote", reason="long_prompt",
        )  # fmt: skip
    finally:
        cluster.stop()
    # The greedy text of the aggregated engine (up to an end-of-text token, where it stops).
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    reference = aggregated_tokens["frontend"][: reply.usage.completion_tokens]
    tokenizer = Tokenizer.from_path(default_model_path())
    assert reply.choices[0].text == tokenizer.decode(reference)
    # The rule sent it to the prefill worker, the KV came back, the decode worker computed none.
    assert decision == 1
    after = _metric(decode_metrics, "tandem_worker_remote_prefills_total", outcome="remote")
    assert after == remote_before + 1
    assert _metric(decode_metrics, "tandem_worker_prefill_step_seconds") == 0.0
