"""Disaggregated serving on mocker workers: real frontend, prefill and decode worker processes.

The conditional rule (short -> local, long -> remote, long with a full queue ->
local, long but cached on the decode worker -> local), its knobs changed at
run time through etcd, token-identical output remote vs local, and the
faults: a prefill worker killed mid-job (its jobs move to another one), a
decode worker killed mid-transfer, a client that disconnects while its prompt
is prefilled elsewhere.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.discovery import Discovery
from tandem.runtime.keys import disagg_settings_key
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from tests.e2e.openai_cluster import MODEL, Cluster, Worker, post
from tests.support.processes import spawn_mocker_worker, worker_ready

pytestmark = pytest.mark.timeout(300)

LONG = 64  # --max-local-prefill-length of these tests' frontends


@pytest.fixture
def cluster(infra: LocalInfra, log_dir: Path) -> Iterator[Cluster]:
    c = Cluster(infra, log_dir)
    yield c
    c.stop()


def start_role(c: Cluster, role: str, *extra: str, speedup: float = 100.0) -> tuple[Worker, str]:
    """One mocker worker of `role`; returns it and its /metrics address."""
    proc = spawn_mocker_worker(
        c.infra, c.namespace, c.log_dir, "--speedup-ratio", str(speedup),
        "--disaggregation-mode", role, *extra,
    )  # fmt: skip
    instance_id, endpoint, metrics = worker_ready(proc, timeout=60)
    worker = Worker(proc, instance_id, endpoint)
    c.workers.append(worker)
    return worker, metrics


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stats(worker: Worker) -> worker_pb2.StatsResponse:
    with grpc.insecure_channel(worker.endpoint) as channel:
        return worker_pb2_grpc.WorkerStub(channel).Stats(worker_pb2.StatsRequest(), timeout=5)


def prompt(n: int, tag: str) -> list[int]:
    """`n` token ids unique to `tag` (completions take token ids as the prompt)."""
    seed = sum(map(ord, tag)) * 7919
    return [(seed + 31 * i) % 40000 + 100 for i in range(n)]


def complete(c: Cluster, ids: list[int], max_tokens: int = 12, **extra: object) -> dict:
    status, body = post(
        f"{c.url}/v1/completions",
        {"model": MODEL, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, **extra},
        timeout=60,
    )
    assert status == 200, body
    return body


def decisions(c: Cluster, decision: str, reason: str) -> float:
    return metric(
        f"{c.url}/metrics", "tandem_frontend_disagg_decisions_total", decision=decision,
        reason=reason,
    )  # fmt: skip


def put_settings(c: Cluster, max_local_prefill_length: int, max_prefill_queue_size: int) -> None:
    """Change the frontend's knobs at run time (the etcd key it watches); wait until it has."""
    settings = {
        "max_local_prefill_length": max_local_prefill_length,
        "max_prefill_queue_size": max_prefill_queue_size,
    }

    async def put() -> None:
        discovery = Discovery(c.infra.etcd_url, c.namespace)
        await discovery.start()
        try:
            await discovery.client.kv.put(disagg_settings_key(c.namespace), json.dumps(settings))  # type: ignore[union-attr]
        finally:
            await discovery.close()

    asyncio.run(put())
    assert c.frontend is not None
    want = " ".join(f"{k}={v}" for k, v in settings.items())
    c.frontend.wait_log(f"disaggregation settings {want}", timeout=30)


def wait_idle(c: Cluster, *workers: Worker) -> None:
    """Until every worker holds no blocks for a request (everything freed on both sides)."""
    assert c.frontend is not None

    def idle() -> bool:
        return all(
            (s := stats(w)).active_blocks == 0 and s.num_running == 0 and s.num_waiting == 0
            for w in workers
        )

    c.frontend.wait_until(idle, 30, "every worker to free its blocks")


def disagg_cluster(
    c: Cluster,
    *decode_extra: str,
    prefill_extra: tuple[str, ...] = (),
    prefill_speedup: float = 100,
) -> tuple[Worker, str, Worker, str]:
    """One prefill and one decode worker, and a frontend with the rule at `LONG` tokens."""
    prefill, p_metrics = start_role(c, "prefill", *prefill_extra, speedup=prefill_speedup)
    decode, d_metrics = start_role(c, "decode", *decode_extra)
    c.start_frontend("--max-local-prefill-length", str(LONG), wait_workers=2)
    return prefill, p_metrics, decode, d_metrics


def test_conditional_rule_and_identical_tokens(cluster: Cluster) -> None:
    prefill, p_metrics, decode, d_metrics = disagg_cluster(cluster)
    p_url, d_url = f"http://{p_metrics}/metrics", f"http://{d_metrics}/metrics"

    # Short: the decode worker prefills it.
    complete(cluster, prompt(20, "short"))
    assert decisions(cluster, "local", "short_prompt") == 1

    # Long: prefilled on the prefill worker, its KV moved, decoded on the decode worker.
    long_ids = prompt(400, "long")
    remote = complete(cluster, long_ids)
    assert decisions(cluster, "remote", "long_prompt") == 1
    assert metric(d_url, "tandem_worker_remote_prefills_total", outcome="remote") == 1
    assert metric(p_url, "tandem_worker_prefill_jobs_total", outcome="done") == 1
    # 400 tokens = 25 blocks of 16, none held by the decode worker: all 25 moved.
    assert metric(p_url, "tandem_worker_kv_transfer_bytes_total", direction="sent") == (
        25 * 16 * 131072
    )
    assert remote["usage"]["completion_tokens"] == 12

    # Long but cached on the decode worker now (its KV landed there): local, and the same
    # tokens as the remote run (the first one sampled on the prefill worker).
    again = complete(cluster, long_ids)
    assert decisions(cluster, "local", "prefix_cached") == 1
    assert again["choices"][0]["text"] == remote["choices"][0]["text"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 384  # 24 whole blocks

    # Long with a full queue (size 0, set at run time): local.
    put_settings(cluster, LONG, 0)
    complete(cluster, prompt(400, "queued"))
    assert decisions(cluster, "local", "queue_full") == 1

    # The length knob at run time: a long prompt is short now.
    put_settings(cluster, 100_000, 32)
    complete(cluster, prompt(400, "now-short"))
    assert decisions(cluster, "local", "short_prompt") == 2
    assert decisions(cluster, "remote", "long_prompt") == 1
    wait_idle(cluster, prefill, decode)


def stream_completion(
    c: Cluster, ids: list[int], max_tokens: int, out: list[str], errors: list[Exception]
) -> None:
    """One streamed completion; appends its text (or the error) when it ends."""
    client = openai.OpenAI(base_url=f"{c.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        stream = client.completions.create(
            model=MODEL, prompt=ids, max_tokens=max_tokens, temperature=0, stream=True
        )
        out.append("".join(chunk.choices[0].text for chunk in stream if chunk.choices))
    except Exception as exc:
        errors.append(exc)


def run_streams(
    c: Cluster, prompts: list[list[int]], max_tokens: int
) -> tuple[list[str], list[Exception], list[threading.Thread]]:
    out: list[str] = []
    errors: list[Exception] = []
    threads = [
        threading.Thread(target=stream_completion, args=(c, ids, max_tokens, out, errors))
        for ids in prompts
    ]
    for t in threads:
        t.start()
    return out, errors, threads


def test_prefill_worker_killed_mid_job_is_redelivered(cluster: Cluster) -> None:
    # The first prefill worker's transfers would take ~520 s (25 blocks of 2 MiB at 0.0001
    # GB/s): it holds every long prompt's job when it is killed. The decode worker would wait
    # 300 s before prefilling them itself, so only the second prefill worker, started once
    # the jobs are held, can be what serves them: the decode worker moves the jobs to it
    # when the first one's etcd record goes.
    doomed, _ = start_role(cluster, "prefill", "--kv-transfer-bandwidth", "0.0001", speedup=1.0)
    decode, d_metrics = start_role(cluster, "decode", "--remote-prefill-timeout", "300")
    cluster.start_frontend("--max-local-prefill-length", str(LONG), wait_workers=2)
    long_prompts = [prompt(400, f"kill{i}") for i in range(4)]
    short_prompts = [prompt(20, f"live{i}") for i in range(4)]
    out, errors, threads = run_streams(cluster, long_prompts + short_prompts, 40)
    cluster.frontend.wait_until(  # type: ignore[union-attr]
        lambda: stats(doomed).active_blocks == 4 * 25, 30, "the four jobs to be mid-transfer"
    )
    survivor, s_metrics = start_role(cluster, "prefill")
    decode.proc.wait_log(f"instance added: worker {survivor.instance_id}", timeout=30)
    doomed.proc.kill()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(out) == 8
    d_url, s_url = f"http://{d_metrics}/metrics", f"http://{s_metrics}/metrics"
    assert metric(d_url, "tandem_worker_prefill_redeliveries_total") == 4
    # Every long prompt's KV came from the survivor; none was prefilled on the decode worker.
    assert metric(d_url, "tandem_worker_remote_prefills_total", outcome="remote") == 4
    assert metric(d_url, "tandem_worker_remote_prefills_total") == 4
    assert metric(s_url, "tandem_worker_prefill_jobs_total", outcome="done") == 4
    assert metric(s_url, "tandem_worker_kv_transfer_bytes_total", direction="sent") == (
        4 * 25 * 16 * 131072
    )
    wait_idle(cluster, decode, survivor)


def test_decode_worker_killed_mid_transfer(cluster: Cluster) -> None:
    # Transfers take ~26 s (25 blocks of 2 MiB at 0.002 GB/s) and the decode workers wait for
    # them: the one that gets the requests is killed meanwhile, and the frontend migrates them
    # to the other one.
    prefill, p_metrics = start_role(cluster, "prefill", "--kv-transfer-bandwidth", "0.002",
                                    speedup=1.0)  # fmt: skip
    first, _ = start_role(cluster, "decode", "--remote-prefill-timeout", "120")
    cluster.start_frontend("--max-local-prefill-length", str(LONG), wait_workers=2)
    long_prompts = [prompt(400, f"mig{i}") for i in range(3)]
    out, errors, threads = run_streams(cluster, long_prompts, 20)
    cluster.frontend.wait_until(  # type: ignore[union-attr]
        lambda: stats(first).num_running >= 3, 30, "the requests to be parked on the decode worker"
    )
    second, _ = start_role(cluster, "decode", "--remote-prefill-timeout", "120")
    cluster.wait_workers(3)
    first.proc.kill()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(out) == 3
    p_url = f"http://{p_metrics}/metrics"
    cluster.frontend.wait_until(  # type: ignore[union-attr]
        lambda: (
            metric(p_url, "tandem_worker_prefill_jobs_total", outcome="decode_unreachable") == 3
        ),
        60,
        "the prefill worker to drop a job whose decode worker died",
    )
    wait_idle(cluster, prefill, second)


def test_client_disconnect_withdraws_the_job(cluster: Cluster) -> None:
    # A ~26 s transfer (0.002 GB/s): the client leaves while it runs.
    prefill, p_metrics = start_role(cluster, "prefill", "--kv-transfer-bandwidth", "0.002",
                                    speedup=1.0)  # fmt: skip
    decode, d_metrics = start_role(cluster, "decode", "--remote-prefill-timeout", "120")
    cluster.start_frontend("--max-local-prefill-length", str(LONG), wait_workers=2)
    body = {"model": MODEL, "prompt": prompt(400, "gone"), "max_tokens": 20, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        cluster.frontend.wait_until(  # type: ignore[union-attr]
            lambda: stats(decode).num_running == 1 and stats(prefill).active_blocks > 0,
            30,
            "the prompt to be prefilled remotely",
        )
    finally:
        conn.close()
    # The client left mid-transfer: the decode worker freed its parked blocks at once; the
    # prefill worker's completion, once its transfer ends, is refused and it frees its own.
    wait_idle(cluster, decode)
    assert stats(prefill).active_blocks > 0  # still pinned: its transfer runs
    p_url = f"http://{p_metrics}/metrics"
    cluster.frontend.wait_until(  # type: ignore[union-attr]
        lambda: metric(p_url, "tandem_worker_prefill_jobs_total", outcome="refused") == 1,
        60,
        "the prefill worker's completion to be refused",
    )
    wait_idle(cluster, prefill)
    assert metric(f"http://{d_metrics}/metrics", "tandem_worker_remote_prefills_total",
                  outcome="remote") == 0  # fmt: skip
