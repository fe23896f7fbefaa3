"""A real worker process (mocker engine) against real nats + etcd, over real gRPC."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.discovery import Discovery
from tandem.runtime.messaging import Messaging
from tandem.runtime.model_card import DEFAULT_MODEL_NAME, ModelCard
from tandem.runtime.startup import EXIT_CANNOT_START
from tandem.runtime.wire import kv_events_pb2, worker_pb2, worker_pb2_grpc

from tests.support.checks import scrape, wait_until
from tests.support.kv_state import apply
from tests.support.processes import ServiceProcess, infra_flags, spawn_mocker_worker, worker_ready

UP_TO_CONTEXT = 0  # max_tokens: generate until the context length


@dataclass
class Worker:
    proc: ServiceProcess
    namespace: str
    instance_id: str
    endpoint: str
    metrics: str


def start_worker(infra: LocalInfra, namespace: str, log_dir: Path, *extra: str) -> Worker:
    proc = spawn_mocker_worker(infra, namespace, log_dir, "--speedup-ratio", "100", *extra)
    return Worker(proc, namespace, *worker_ready(proc, timeout=60))


def gen_request(
    rid: str, prompt: list[int], max_tokens: int, **kw: object
) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=rid,
        token_ids=prompt,
        sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, **kw),
    )


@pytest.fixture(scope="module")
def worker(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One shared worker with a tiny KV event ring (8) so snapshots are reachable."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    w = start_worker(
        infra,
        namespace,
        tmp_path_factory.mktemp("logs"),
        "--kv-event-buffer",
        "8",
        "--num-kv-blocks",
        "512",
    )
    yield w
    assert w.proc.stop() == 0, w.proc.log_text()[-3000:]


async def test_generate_streams_tokens_over_grpc(worker: Worker) -> None:
    async with grpc.aio.insecure_channel(worker.endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        health = await stub.Health(worker_pb2.HealthRequest())
        assert health.ready and health.instance_id == worker.instance_id
        responses = [
            r async for r in stub.Generate(gen_request("g1", list(range(50)), 20, logprobs=True))
        ]
        tokens = [t for r in responses for t in r.token_ids]
        assert len(tokens) == 20
        assert [lp.token_id for r in responses for lp in r.logprobs] == tokens
        last = responses[-1]
        assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (50, 20)
        assert all(r.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED for r in responses[:-1])

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(gen_request("bad", [], 5)):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(
                worker_pb2.GenerateRequest(request_id="m", model="nope", token_ids=[1])
            ):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    text = await asyncio.to_thread(scrape, f"http://{worker.metrics}/metrics")
    assert "tandem_worker_prefill_latency_seconds_count" in text
    # Every sample carries the worker's model, instance id and role (labels sorted by name).
    labels = f'model="{DEFAULT_MODEL_NAME}",role="aggregated",worker="{worker.instance_id}"'
    assert re.search(
        rf'^tandem_worker_requests_total\{{finish_reason="length",{labels}\}} [1-9]', text, re.M
    ), text
    for name in (
        "kv_usage_ratio",
        "prefix_cache_hit_ratio",
        "waiting_requests",
        "running_requests",
        "decode_step_seconds",
    ):
        assert f"tandem_worker_{name}{{{labels}}} " in text


async def test_rejections_carry_their_status_on_generate_and_generate_stream(
    worker: Worker,
) -> None:
    too_long = gen_request("long", list(range(8000)), 500)  # the KV pool: 512 x 16 = 8192
    bad_sampling = gen_request("hot", list(range(10)), 5, temperature=-1.0)
    message = (
        "This model's maximum context length is 8192 tokens. However, you requested 8500 "
        "tokens (8000 in the messages, 500 in the completion). Please reduce the length of "
        "the messages or completion."
    )
    async with grpc.aio.insecure_channel(worker.endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        for request, code in (
            (too_long, grpc.StatusCode.OUT_OF_RANGE),
            (bad_sampling, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Generate(request):
                    pass
            assert err.value.code() == code
        assert err.value.details() and "temperature" in err.value.details()

        client = StreamClient(stub)
        client.start(1, too_long)
        client.start(2, bad_sampling)
        outputs = await client.until_ended({1, 2})
        [long_end], [hot_end] = outputs[1], outputs[2]
        assert long_end.status_code == grpc.StatusCode.OUT_OF_RANGE.value[0]
        assert long_end.status_message == message
        assert hot_end.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        client.outgoing.put_nowait(None)


async def test_cancel_aborts_and_frees_blocks(worker: Worker) -> None:
    async with grpc.aio.insecure_channel(worker.endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        call = stub.Generate(gen_request("c1", list(range(7000, 7200)), UP_TO_CONTEXT))
        first = await call.read()
        assert first.token_ids
        stats = await stub.Stats(worker_pb2.StatsRequest())
        assert stats.active_blocks > 0 and stats.num_running == 1
        call.cancel()
        latest = stats

        async def freed() -> bool:
            nonlocal latest
            latest = await stub.Stats(worker_pb2.StatsRequest())
            return latest.active_blocks == 0

        await wait_until(freed, 5, "blocks freed after cancel")
        assert (latest.num_running, latest.num_waiting) == (0, 0)
        assert latest.cached_blocks >= 200 // 16


class StreamClient:
    """A raw Worker.GenerateStream call: send StreamRequests, read StreamResponses."""

    def __init__(self, stub: worker_pb2_grpc.WorkerStub) -> None:
        self.outgoing: asyncio.Queue[worker_pb2.StreamRequest | None] = asyncio.Queue()
        self.call = stub.GenerateStream(self._requests())

    async def _requests(self):  # type: ignore[no-untyped-def]
        while (msg := await self.outgoing.get()) is not None:
            yield msg

    def start(self, key: int, request: worker_pb2.GenerateRequest) -> None:
        self.outgoing.put_nowait(worker_pb2.StreamRequest(key=key, start=request))

    def cancel(self, key: int) -> None:
        self.outgoing.put_nowait(worker_pb2.StreamRequest(key=key, cancel=True))

    async def until_ended(self, keys: set[int]) -> dict[int, list[worker_pb2.StreamOutput]]:
        """Read until every request in `keys` has finished or failed; outputs by key."""
        outputs: dict[int, list[worker_pb2.StreamOutput]] = {}
        self.batch_sizes: list[int] = []
        pending = set(keys)
        while pending:
            batch = await asyncio.wait_for(self.call.read(), 30)
            self.batch_sizes.append(len({o.key for o in batch.outputs}))
            for out in batch.outputs:
                outputs.setdefault(out.key, []).append(out)
                if out.status_code or out.response.finish_reason:
                    pending.discard(out.key)
        return outputs


async def test_generate_stream_multiplexes_requests_and_fails_them_one_by_one(
    worker: Worker,
) -> None:
    async with grpc.aio.insecure_channel(worker.endpoint) as channel:
        client = StreamClient(worker_pb2_grpc.WorkerStub(channel))
        for key in (1, 2, 4, 5):
            client.start(key, gen_request(f"s{key}", list(range(key * 100, key * 100 + 40)), 30))
        client.start(3, worker_pb2.GenerateRequest(request_id="s3", model="nope", token_ids=[1]))
        client.start(6, gen_request("s6", [], 5))
        outputs = await client.until_ended({1, 2, 3, 4, 5, 6})

        for key in (1, 2, 4, 5):
            responses = [o.response for o in outputs[key]]
            assert not any(o.status_code for o in outputs[key])
            assert sum(len(r.token_ids) for r in responses) == 30
            assert responses[-1].finish_reason == worker_pb2.FINISH_REASON_LENGTH
            assert responses[-1].usage.prompt_tokens == 40
        for key, needle in ((3, "not served here"), (6, "")):
            [failed] = outputs[key]
            assert failed.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert needle in failed.status_message
        # Requests that run together share messages: one write per engine step.
        assert max(client.batch_sizes) >= 2
        client.outgoing.put_nowait(None)
        assert await asyncio.wait_for(client.call.read(), 10) == grpc.aio.EOF


async def test_generate_stream_cancel_frees_blocks_and_the_stream_goes_on(worker: Worker) -> None:
    async with grpc.aio.insecure_channel(worker.endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        client = StreamClient(stub)
        client.start(1, gen_request("long", list(range(8000, 8200)), UP_TO_CONTEXT))
        first = await asyncio.wait_for(client.call.read(), 30)
        assert first.outputs[0].key == 1 and first.outputs[0].response.token_ids
        client.cancel(1)

        async def freed() -> bool:
            stats = await stub.Stats(worker_pb2.StatsRequest())
            return stats.active_blocks == 0 and stats.num_running == 0

        await wait_until(freed, 5, "blocks freed after a stream cancel")
        client.start(2, gen_request("after", list(range(50)), 5))
        outputs = await client.until_ended({2})
        assert sum(len(o.response.token_ids) for o in outputs[2]) == 5

        # Ending the whole call aborts what is still running on it.
        client.start(3, gen_request("orphan", list(range(9000, 9200)), UP_TO_CONTEXT))
        while not (await asyncio.wait_for(client.call.read(), 30)).outputs:
            pass
        client.call.cancel()
        await wait_until(freed, 5, "blocks freed after the call ended")


async def test_kv_events_on_jetstream_and_events_since(infra: LocalInfra, worker: Worker) -> None:
    messaging = Messaging(infra.nats_url, worker.namespace)
    await messaging.connect()
    received: list[kv_events_pb2.KvEvent] = []

    async def on_event(event: kv_events_pb2.KvEvent, _seq: int) -> None:
        if event.instance_id == worker.instance_id:
            received.append(event)

    sub = await messaging.subscribe_kv_events(on_event)
    try:
        async with grpc.aio.insecure_channel(worker.endpoint) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            for i in range(12):  # distinct prompts: at least 12 stored events
                async for _ in stub.Generate(gen_request(f"k{i}", [i + 1] * 40, 3)):
                    pass
            gap = await stub.KvEventsSince(worker_pb2.KvEventsSinceRequest(from_event_id=10**6))
            last = gap.last_event_id
            assert last >= 11
            await wait_until(lambda: len(received) >= last + 1, 10, "KV events on JetStream")
            assert [e.event_id for e in received] == list(range(last + 1))

            tail = await stub.KvEventsSince(worker_pb2.KvEventsSinceRequest(from_event_id=last - 2))
            assert not tail.is_snapshot and tail.last_event_id == last
            assert list(tail.events) == received[last - 2 :]

            snap = await stub.KvEventsSince(worker_pb2.KvEventsSinceRequest(from_event_id=0))
            assert snap.is_snapshot and snap.last_event_id == last
            assert snap.events[0].WhichOneof("data") == "cleared"
            from_stream: dict[int, int | None] = {}
            from_snapshot: dict[int, int | None] = {}
            apply(received, from_stream)
            apply(list(snap.events), from_snapshot)
            assert from_snapshot == from_stream and from_stream
    finally:
        await sub.unsubscribe()
        await messaging.close()


async def test_registers_then_vanishes_after_sigkill_while_the_model_card_stays(
    infra: LocalInfra, namespace: str, log_dir: Path
) -> None:
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    messaging = Messaging(infra.nats_url, namespace)
    await messaging.connect()
    loads: list[kv_events_pb2.LoadMetrics] = []

    async def on_load(m: kv_events_pb2.LoadMetrics) -> None:
        loads.append(m)

    await messaging.subscribe_load(on_load)
    try:
        view = await discovery.instance_set("worker").start()
        survivor = start_worker(infra, namespace, log_dir)
        w = start_worker(infra, namespace, log_dir, "--num-kv-blocks", "1000")  # last card writer
        await view.wait_for(lambda d: w.instance_id in d and survivor.instance_id in d, 10)
        info = view.get(w.instance_id)
        assert info is not None
        assert (info.endpoint, info.model, info.role) == (
            w.endpoint,
            "SmolLM2-135M-Instruct",
            "aggregated",
        )
        assert (info.block_size, info.total_blocks) == (16, 1000) and info.started_at > 0
        raw = await discovery.get_model_card(info.model)
        assert raw is not None
        card = ModelCard.from_dict(raw)
        assert await asyncio.to_thread(os.path.isfile, card.model_path)
        assert card.model_path.endswith(".gguf")
        # The mocker's context (131,072 by default) capped by its KV pool: 1000 x 16 tokens.
        assert (card.block_size, card.context_length, card.eos_token_ids) == (16, 16_000, (2,))
        await wait_until(
            lambda: any(m.instance_id == w.instance_id for m in loads), 5, "a load report"
        )
        assert {m.total_blocks for m in loads if m.instance_id == w.instance_id} == {1000}

        w.proc.kill()
        killed_at = time.monotonic()
        await view.wait_for(lambda d: w.instance_id not in d, 15)
        assert time.monotonic() - killed_at <= 12

        # etcd dropped the card with the dead writer's lease; the survivor writes it back.
        async def card_present() -> bool:
            return await discovery.get_model_card(info.model) is not None

        await wait_until(card_present, 5, "the model card written back")
        assert survivor.proc.stop() == 0
    finally:
        await messaging.close()
        await discovery.close()


async def test_sigterm_aborts_streams_and_deregisters_at_once(
    infra: LocalInfra, namespace: str, log_dir: Path
) -> None:
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    try:
        view = await discovery.instance_set("worker").start()
        w = start_worker(infra, namespace, log_dir, "--drain-timeout", "0")  # no drain
        await view.wait_for(lambda d: w.instance_id in d, 10)
        async with grpc.aio.insecure_channel(w.endpoint) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            call = stub.Generate(gen_request("t1", list(range(100)), UP_TO_CONTEXT))
            assert (await call.read()).token_ids
            w.proc.proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while True:
                    msg = await call.read()
                    assert msg is not grpc.aio.EOF, "stream ended normally instead of being aborted"
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            await view.wait_for(lambda d: w.instance_id not in d, 3)
        assert await asyncio.to_thread(w.proc.proc.wait, 10) == 0
        assert "worker stopped" in w.proc.log_text()
    finally:
        await discovery.close()


def test_a_missing_model_file_is_one_clear_line_and_exit_code(
    infra: LocalInfra, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "tandem.worker", "--engine", "torch", "--model-path", str(missing),
         *infra_flags(infra, "missing-model"), "--host", "127.0.0.1", "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == EXIT_CANNOT_START, out
    assert f"worker cannot start: model not found: '{missing}'" in out
    assert "Traceback" not in out


def test_a_worker_whose_block_size_differs_from_its_models_cannot_start(
    infra: LocalInfra, tmp_path: Path
) -> None:
    namespace = f"bs{uuid.uuid4().hex[:10]}"
    first = start_worker(infra, namespace, tmp_path, "--kv-cache-block-size", "64")
    try:
        other = spawn_mocker_worker(infra, namespace, tmp_path, "--kv-cache-block-size", "16")
        assert other.proc.wait(120) == EXIT_CANNOT_START, other.log_text()
        out = other.log_text()
        other.stop()
        assert (
            "worker cannot start: model SmolLM2-135M-Instruct is served with KV blocks of 64 "
            "tokens, this worker's --kv-cache-block-size is 16" in out
        ), out
        assert "Traceback" not in out
        same = start_worker(infra, namespace, tmp_path, "--kv-cache-block-size", "64")
        same.proc.stop()
    finally:
        first.proc.stop()
