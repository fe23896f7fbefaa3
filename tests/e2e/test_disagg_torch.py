"""Torch engine served disaggregated: 1 prefill + 1 decode worker (real processes, nats, etcd).

A long prompt sent to the decode worker with a remote-prefill instruction is
prefilled on the prefill worker, its KV moved into the decode worker's pool
(`--kv-transport nixl` and `grpc`), and decoded there: the greedy output is
token-identical to the same engine serving it aggregated, and the decode
worker ran no prefill step (its prefill step time stays 0).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from tests.support.kv_transfer import TRANSPORTS
from tests.support.processes import ServiceProcess, infra_flags, worker_ready
from tests.support.torch_engine import collect, random_prompt, started_engine

pytestmark = pytest.mark.slow

PROMPT = random_prompt(300, seed=12)  # 19 blocks of 16: a real transfer
MAX_TOKENS = 24


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


def _prefill_step_seconds(metrics: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r"^tandem_worker_prefill_step_seconds(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert match, text[:2000]
    return float(match.group(1))


@pytest.fixture(scope="module")
def aggregated_tokens() -> list[int]:
    """The reference: the same engine and settings, serving the prompt aggregated."""
    import asyncio

    async def run() -> list[int]:
        async with started_engine(num_kv_blocks=256) as (engine, _):
            tokens, _ = await collect(engine, PROMPT, "ref", max_tokens=MAX_TOKENS)
        return tokens

    return asyncio.run(run())


@pytest.fixture
def pair(
    request: pytest.FixtureRequest, infra: LocalInfra, namespace: str, log_dir: Path
) -> Iterator[tuple[tuple[str, str, str], tuple[str, str, str], ServiceProcess, ServiceProcess]]:
    transport = request.param
    prefill = _torch_worker(infra, namespace, log_dir, "prefill", transport)
    decode = _torch_worker(infra, namespace, log_dir, "decode", transport)
    try:
        yield worker_ready(prefill, 180), worker_ready(decode, 180), prefill, decode
    finally:
        decode.stop()
        prefill.stop()


@pytest.mark.parametrize("pair", TRANSPORTS, indirect=True)
async def test_disaggregated_output_matches_aggregated(pair, aggregated_tokens: list[int]) -> None:  # type: ignore[no-untyped-def]
    (prefill_id, _, prefill_metrics), (_, decode_endpoint, decode_metrics), prefill, decode = pair
    request = worker_pb2.GenerateRequest(
        request_id="disagg-1",
        token_ids=PROMPT,
        sampling=worker_pb2.SamplingParams(max_tokens=MAX_TOKENS),
        remote_prefill=worker_pb2.RemotePrefill(prefill_instance_id=prefill_id),
    )
    async with create_channel(decode_endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        tokens = [t async for r in stub.Generate(request, timeout=240) for t in r.token_ids]
    assert tokens == aggregated_tokens
    # The decode worker computed nothing of the prompt; the prefill worker did.
    assert _prefill_step_seconds(decode_metrics) == 0.0
    assert _prefill_step_seconds(prefill_metrics) > 0.0
    prefill.wait_log("kv transfer sent transfer_id=", timeout=10)
    decode.wait_log("kv transfer received transfer_id=", timeout=10)
