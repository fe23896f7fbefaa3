"""Benchmark: KV index throughput and routing-decision latency (not a test).

100 workers, 1,000,000 resident (worker, block) entries built from KV events
(BlocksStored runs of 16 blocks, as a prefill produces them), then the steady
state of full caches (each new block evicts one: 1-block Removed + Stored),
then routing decisions for 4,000-token prompts that share prefixes with what
the workers hold, and for prompts nobody holds. Events are timed from their
serialized protobuf bytes as the router takes them off the stream
(KvEventFollower.handle_bytes: parse + order check + index update),
decisions end to end through KvRouter.route (hash the prompt, walk the
index, score 100 workers, count the load). Each part is then timed alone
(scoring too: KvRouter._choose with the overlaps found beforehand),
and so are the floors beneath them (decoding an event alone; packing a
prompt and its XXH3 calls alone): what bounds the rate when the rest gets
cheaper. `--clock cpu` times with the thread's CPU time, for runs on cores
that other work shares.

    python bench/router_index.py [--workers 100] [--blocks 1000000] [--decisions 5000]
                                 [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import random
import statistics
import struct
import time
from collections.abc import Callable
from itertools import repeat

import xxhash
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.radix_index import RadixIndex
from tandem.router.worker_view import StaticWorkerView
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.wire.kv_events_pb2 import KvEvent, KvEventColumns, StoredBlock

Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""--clock: wall time, or this thread's CPU time (steadier when other work shares the cores)."""
BLOCK_SIZE = 16
PROMPT_TOKENS = 4000
EVENT_BLOCKS = 16


def static_workers(ids: list[str], total_blocks: int = 1 << 20) -> StaticWorkerView:
    """A fixed worker view of the workers `ids`, in BLOCK_SIZE-token blocks."""
    return StaticWorkerView(
        [
            InstanceInfo(i, "worker", f"{i}:1", block_size=BLOCK_SIZE, total_blocks=total_blocks)
            for i in ids
        ]
    )


def build_events(
    rng: random.Random, workers: list[str], docs: list[list[int]], target_entries: int
) -> tuple[list[bytes], dict[str, list[list[int]]]]:
    """Serialized BlocksStored events filling the workers with document prefixes."""
    events: list[bytes] = []
    held: dict[str, list[list[int]]] = {w: [] for w in workers}
    next_id = dict.fromkeys(workers, 0)
    per_worker = target_entries // len(workers)
    for w in workers:
        count = 0
        for doc in rng.sample(docs, len(docs)):
            if count >= per_worker:
                break
            n = min(rng.randrange(len(doc) // 2, len(doc) + 1), per_worker - count)
            prefix = doc[:n]
            held[w].append(prefix)
            count += n
            for start in range(0, n, EVENT_BLOCKS):
                ev = KvEvent(instance_id=w, event_id=next_id[w])
                next_id[w] += 1
                if start:
                    ev.stored.parent_hash = prefix[start - 1]
                ev.stored.tier = "hbm"
                ev.stored.blocks.extend(
                    StoredBlock(block_hash=h, local_hash=h)
                    for h in prefix[start : start + EVENT_BLOCKS]
                )
                events.append(ev.SerializeToString())
    return events, held


def churn_events(
    rng: random.Random, held: dict[str, list[list[int]]], first_ids: dict[str, int], n: int
) -> list[bytes]:
    """A full cache's steady state, as the workers' block manager reports it: every newly
    filled block evicts one LRU block (BlocksRemoved of 1 block, BlocksStored of 1 block)."""
    out = []
    workers = list(held)
    next_id = dict(first_ids)
    for _ in range(n // 2):
        w = rng.choice(workers)
        chain = rng.choice(held[w])
        tail = chain[-1:]
        rm = KvEvent(instance_id=w, event_id=next_id[w])
        rm.removed.block_hashes.extend(tail)
        rm.removed.tier = "hbm"
        st = KvEvent(instance_id=w, event_id=next_id[w] + 1)
        st.stored.tier = "hbm"
        st.stored.blocks.extend(StoredBlock(block_hash=h, local_hash=h) for h in tail)
        next_id[w] += 2
        out += [rm.SerializeToString(), st.SerializeToString()]
    return out


def apply(router: KvRouter, raw_events: list[bytes], now: Clock) -> float:
    """Seconds to apply `raw_events` as the router does off the stream (handle_bytes)."""
    follower = router.follower
    assert follower is not None
    handle = follower.handle_bytes
    started = now()
    for raw in raw_events:
        handle(raw)
    return now() - started


async def run(args: argparse.Namespace) -> None:
    now = CLOCKS[args.clock]
    rng = random.Random(0)
    workers = [f"worker-{i:03d}" for i in range(args.workers)]
    router = KvRouter(RoutingConfig(), static_workers(workers), rng=random.Random(1))
    doc_tokens = [[rng.randrange(32000) for _ in range(PROMPT_TOKENS)] for _ in range(args.docs)]
    docs = [sequence_hashes(t, BLOCK_SIZE) for t in doc_tokens]

    events, held = build_events(rng, workers, docs, args.blocks)
    fill_s = apply(router, events, now)
    first_ids = {w: router.follower.last_event_id(w) + 1 for w in workers}  # type: ignore[union-attr,operator]
    churn = churn_events(rng, held, first_ids, args.churn)
    churn_s = apply(router, churn, now)

    print(
        f"index: {args.workers} workers, "
        f"{router.index.num_entries:,} resident (worker, block) entries, "
        f"{router.index.num_blocks:,} distinct blocks"
    )
    print()
    print(f"{'phase':<32}{'events':>10}{'blocks/event':>14}{'seconds':>10}{'events/s':>14}")
    for name, evs, secs, bpe in (
        ("fill (BlocksStored)", events, fill_s, EVENT_BLOCKS),
        ("steady churn (Removed/Stored)", churn, churn_s, 1),
    ):
        print(f"{name:<32}{len(evs):>10,}{bpe:>14}{secs:>10.2f}{len(evs) / secs:>14,.0f}")
    if args.replay_events:
        await replay_rate(args.replay_events)
    decode_s, store_s = fill_ceilings(events, now)
    print(
        f"  fill ceilings: decoding alone (parse + the fields read) {len(events) / decode_s:,.0f}"
        f" events/s; index.store alone {len(events) / store_s:,.0f} events/s "
        f"({store_s / (len(events) * EVENT_BLOCKS) * 1e9:.0f} ns/block); both, nothing else "
        f"{len(events) / (decode_s + store_s):,.0f} events/s"
    )

    # Routing decisions: 4,000-token prompts = a document's first 3,000-4,000 tokens + a fresh
    # tail; and prompts nobody holds (the walk ends at their first block).
    prompts = []
    for _ in range(512):
        toks = rng.choice(doc_tokens)
        keep = rng.randrange(3000, PROMPT_TOKENS + 1)
        prompts.append(toks[:keep] + [rng.randrange(32000) for _ in range(PROMPT_TOKENS - keep)])
    fresh = [[rng.randrange(32000) for _ in range(PROMPT_TOKENS)] for _ in range(64)]
    print()
    print(
        f"{'routing decisions (4,000-token prompt)':<40}{'count':>8}{'decisions/s':>13}"
        f"{'p50 us':>9}{'p99 us':>9}{'max us':>9}{'mean overlap':>14}"
    )
    total = 0.0
    for name, batch, count in (
        (f"KvRouter.route, {args.workers} workers", prompts, args.decisions),
        ("  prompts nobody holds", fresh, args.decisions // 5),
    ):
        latencies, overlap = await decisions(router, batch, args.warmup, count, now)
        total = total or sum(latencies)
        p50, p99 = (latencies[min(int(q * count), count - 1)] * 1e6 for q in (0.5, 0.99))
        print(
            f"{name:<40}{count:>8}{count / sum(latencies):>13,.0f}"
            f"{p50:>9.0f}{p99:>9.0f}{latencies[-1] * 1e6:>9.0f}"
            f"{overlap:>11.1f}/{PROMPT_TOKENS // BLOCK_SIZE}"
        )

    hash_times, walk_times = [], []
    for i in range(1000):  # each hash then its walk, in the order route() runs them
        t0 = now()
        hashes = sequence_hashes(prompts[i % len(prompts)], BLOCK_SIZE)
        t1 = now()
        router.index.overlaps(hashes)
        walk_times.append(now() - t1)
        hash_times.append(t1 - t0)
    hash_us = statistics.mean(hash_times) * 1e6
    walk_us = statistics.mean(walk_times) * 1e6
    print(
        "  parts: hashing all of the prompt (block_hash.sequence_hashes) "
        f"{hash_us:.0f} us ({hash_us * 1e3 / (PROMPT_TOKENS // BLOCK_SIZE):.0f} ns/block); "
        f"index walk (RadixIndex.overlaps) {walk_us:.0f} us; "
        f"the rest (scoring {args.workers} workers, load counts, metrics) "
        f"{total / args.decisions * 1e6 - hash_us - walk_us:.0f} us, "
        f"of which scoring alone (KvRouter._choose) {scoring_us(router, prompts, now):.0f} us"
    )
    pack_us, xxh3_us = hash_ceilings(prompts, now)
    print(
        f"  hashing ceilings: packing {PROMPT_TOKENS:,} token ids alone {pack_us:.0f} us; "
        f"the {2 * PROMPT_TOKENS // BLOCK_SIZE} XXH3 calls alone (inputs ready, called from C) "
        f"{xxh3_us:.0f} us"
    )


async def decisions(
    router: KvRouter, prompts: list[list[int]], warmup: int, count: int, now: Clock
) -> tuple[list[float], float]:
    """Sorted latencies of `count` decisions (after `warmup`) and their mean overlap."""
    latencies = []
    overlap = 0
    active: list[str] = []
    for i in range(warmup + count):
        rid = f"r{i}"
        t0 = now()
        result = await router.route(rid, prompts[i % len(prompts)])
        dt = now() - t0
        active.append(rid)
        if len(active) > 256:  # keep ~256 requests in flight, as on a busy cluster
            router.free(active.pop(0))
        if i >= warmup:
            latencies.append(dt)
            overlap += result.overlap_blocks
    for rid in active:
        router.free(rid)
    return sorted(latencies), overlap / count


def scoring_us(router: KvRouter, prompts: list[list[int]], now: Clock) -> float:
    """Mean microseconds of choosing the worker alone (the cost model over every worker and
    the load counts), the prompt's overlaps found beforehand; between two choices one
    request is added and one freed, as between two decisions of `decisions`."""
    overlaps = [router.index.tier_overlaps(sequence_hashes(p, BLOCK_SIZE)) for p in prompts]
    prompt_blocks = PROMPT_TOKENS // BLOCK_SIZE
    times = []
    active: list[str] = []
    for i in range(1000):
        t0 = now()
        chosen = router._choose(overlaps[i % len(overlaps)], prompt_blocks, prompt_blocks, ())
        times.append(now() - t0)
        assert chosen is not None
        active.append(f"s{i}")
        router.load.add(active[-1], chosen[0].instance_id, 0, prompt_blocks)
        if len(active) > 256:
            router.load.free(active.pop(0))
    for rid in active:
        router.load.free(rid)
    return statistics.mean(times) * 1e6


def fill_ceilings(raw_events: list[bytes], now: Clock) -> tuple[float, float]:
    """Seconds to decode the fill events alone (the parse and the fields the follower reads),
    and to store their blocks into a fresh index alone: what bounds the fill rate however
    cheap the rest of handling an event gets."""
    started = now()
    for raw in raw_events:  # nothing kept, as in the follower
        ev = KvEventColumns.FromString(raw)
        stored = ev.stored
        ev.instance_id, ev.event_id, ev.WhichOneof("data"), stored.tier, stored.blocks.block_hash[:]  # noqa: B018
    decode_s = now() - started
    batches = [
        (ev.instance_id, ev.stored.blocks.block_hash[:])
        for ev in map(KvEventColumns.FromString, raw_events)
    ]
    index = RadixIndex()
    started = now()
    for worker, hashes in batches:
        index.store(worker, hashes)
    return decode_s, now() - started


def hash_ceilings(prompts: list[list[int]], now: Clock) -> tuple[float, float]:
    """Mean microseconds to pack a prompt's token ids alone, and to make its two XXH3 calls
    per block alone (inputs prepared beforehand, called from C): below what any Python
    hashing of the prompt costs."""
    sample = prompts[:200]
    started = now()
    for tokens in sample:
        array.array("I", tokens).tobytes()
    pack_s = now() - started
    inputs = []
    for tokens in sample:
        packed = array.array("I", tokens).tobytes()
        stride = BLOCK_SIZE * 4
        blocks = [packed[i : i + stride] for i in range(0, len(packed), stride)]
        inputs.append(blocks + [struct.pack("<QQ", i, i) for i in range(len(blocks))])
    xxh3 = xxhash.xxh3_64_intdigest
    started = now()
    for batch in inputs:
        list(map(xxh3, batch, repeat(1337)))
    xxh3_s = now() - started
    return pack_s / len(sample) * 1e6, xxh3_s / len(sample) * 1e6


async def replay_rate(num_events: int) -> None:
    """A late router's rebuild: replay `num_events` 4-block events from a real JetStream."""
    import tempfile
    from pathlib import Path

    from tandem.launcher.local_infra import InfraError, LocalInfra
    from tandem.router.kv_event_follower import KvEventFollower
    from tandem.runtime.messaging import Messaging

    try:
        infra = LocalInfra.start(Path(tempfile.mkdtemp(prefix="router-bench-")))
    except InfraError as exc:
        print(f"(JetStream replay skipped: {exc})")
        return
    rng = random.Random(2)
    try:
        messaging = Messaging(infra.nats_url, "bench")
        await messaging.connect()
        await messaging.ensure_kv_stream()
        for i in range(num_events):
            ev = KvEvent(instance_id=f"w{i % 100}", event_id=i // 100)
            ev.stored.blocks.extend(
                StoredBlock(block_hash=rng.getrandbits(63), local_hash=0) for _ in range(4)
            )
            await messaging.nc.publish(f"tandem.bench.kv.w{i % 100}", ev.SerializeToString())
        await messaging.nc.flush()
        follower = KvEventFollower(RadixIndex(), endpoint_of=lambda w: None)
        follower.replay_max_events = num_events
        t0 = time.perf_counter()
        await follower.start(messaging, wait_seconds=600)
        secs = time.perf_counter() - t0
        await follower.stop()
        await messaging.close()
        print(
            f"{'late-router replay from JetStream':<32}{follower.num_applied:>10,}{4:>14}"
            f"{secs:>10.2f}{follower.num_applied / secs:>14,.0f}"
        )
    finally:
        infra.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--churn", type=int, default=200_000)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="time with the wall clock, or with this thread's CPU time: on shared cores the "
        "CPU time leaves out the time other processes ran (JetStream replay: always wall)",
    )
    parser.add_argument(
        "--replay-events", type=int, default=100_000, help="JetStream replay size (0 = skip)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
