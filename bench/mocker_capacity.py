"""What the mocker's step-time model lets its workers deliver, computed in simulated time.

    python bench/mocker_capacity.py [--workers 8] [--streams 32 128 256 512]
                                    [--max-tokens 128] [--prompt-tokens 37] [mocker flags]

Closed-loop streams, as in `bench/frontend_overhead.py --scenario realistic`,
run through the real mocker scheduler and block manager, with a clock that
jumps from step to step by the step-time model instead of sleeping: no CPU,
no frontend, no timer error. It answers "how many tokens/s can these
simulated GPUs produce under this load?", for the defaults or for any
calibration given as mocker flags (`--decode-seq-seconds 10e-6`, ...).

The result depends on when requests reach a worker: a step that prefills
costs a fixed `--prefill-step-seconds`, so prompts that arrive together
share it. A stream's next request goes to the next worker in turn after a
client gap drawn from 0 to G ms, for each G of --gaps-ms. Two figures per row:
- burst: every stream starts at once, as each level of a benchmark run
  does, measured over the first --burst-seconds. The streams start in step
  and each worker prefills a wave of new requests in one step; client gaps
  spread them out only slowly, so this flatters short runs.
- steady: the streams start spread over a second and the rate is measured
  from 10 s on for --seconds: what the engines sustain. (From a burst start
  the rate falls to the same figure, after several minutes.)

A benchmark of the calibration, not of the code: it asserts nothing.
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass, field

from frontend_overhead import reference_prompt  # bench/ is on sys.path when run as a script
from tandem.runtime.config import add_arguments, config_from_namespace
from tandem.worker.engine import EngineRequest, SamplingConfig
from tandem.worker.mocker import MockerConfig, MockerEngine
from tandem.worker.mocker.sequence import MockSequence
from tandem.worker.scheduler import ScheduledBatch


@dataclass
class SimWorker:
    engine: MockerEngine
    busy_until: float = 0.0
    batch: ScheduledBatch[MockSequence] | None = None  # the step in flight


@dataclass
class Outcome:
    tokens: int = 0
    steps: int = 0
    prefill_steps: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)


def simulate(
    config: MockerConfig,
    workers: int,
    streams: int,
    prompt_tokens: int,
    max_tokens: int,
    gap_s: float,
    horizon_s: float,
    *,
    warmup_s: float = 0.0,
    start_spread_s: float = 0.0,
) -> Outcome:
    """Simulate until `horizon_s`, the streams starting within `start_spread_s`;
    the figures count only what happens after `warmup_s`."""
    rng = random.Random(0)
    sims = [SimWorker(MockerEngine(config)) for _ in range(workers)]
    sampling = SamplingConfig(max_tokens=max_tokens, ignore_eos=True)
    arrivals: list[tuple[float, int, int]] = []  # (time, request number, worker)
    arrived_at: dict[str, float] = {}
    out = Outcome()
    issued = 0

    def issue(at: float, worker: int) -> None:
        nonlocal issued
        heapq.heappush(arrivals, (at, issued, worker))
        issued += 1

    for n in range(streams):
        issue(rng.uniform(0.0, start_spread_s), n % workers)
    now = 0.0
    while now < horizon_s:
        for sim in sims:  # steps that end now
            if sim.batch is None or sim.busy_until > now:
                continue
            batch, sim.batch = sim.batch, None
            sim.engine.scheduler.postprocess(batch, [s.draw_token() for s in batch.sampled])
            counted = now >= warmup_s
            for seq in batch.sampled:
                result = seq.take_output()
                out.tokens += len(result.token_ids) if counted else 0
                if seq.request_id in arrived_at:  # its first token
                    ttft = now - arrived_at.pop(seq.request_id)
                    if counted:
                        out.ttft.append(ttft)
                if result.finish_reason is not None:
                    issue(now + rng.uniform(0.0, gap_s), issued % workers)
        while arrivals and arrivals[0][0] <= now:  # requests that arrive now
            at, n, w = heapq.heappop(arrivals)
            prompt = reference_prompt(n, prompt_tokens)
            seq = sims[w].engine.new_sequence(EngineRequest(f"r{n}", prompt, sampling))
            sims[w].engine.scheduler.add(seq)
            arrived_at[seq.request_id] = at
        for sim in sims:  # idle workers start their next step
            if sim.batch is None and sim.engine.scheduler.has_work:
                batch = sim.engine.scheduler.schedule()
                sim.batch, sim.busy_until = batch, now + sim.engine.step_seconds(batch)
                if now >= warmup_s:
                    out.steps += 1
                    out.prefill_steps += bool(batch.prefills)
        events = [s.busy_until for s in sims if s.batch is not None]
        events += [arrivals[0][0]] if arrivals else []
        now = min(events)
    out.seconds = now - warmup_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--streams", type=int, nargs="+", default=[32, 128, 256, 512])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--prompt-tokens", type=int, default=37, help="the realistic scenario's chat prompts"
    )
    parser.add_argument(
        "--gaps-ms", type=float, nargs="+", default=[0.0, 5.0, 20.0, 50.0],
        help="largest client gap before a stream's next request, one row each",
    )  # fmt: skip
    parser.add_argument("--burst-seconds", type=float, default=20.0, help="burst: measured time")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady: measured time")
    add_arguments(parser, MockerConfig)
    args = parser.parse_args()
    try:
        mocker = config_from_namespace(MockerConfig, args)
    except ValueError as exc:
        parser.error(str(exc))
    print(
        f"mocker capacity: {args.workers} workers, {args.max_tokens}-token streams, "
        f"{args.prompt_tokens}-token prompts; burst: first {args.burst_seconds:g} simulated s, "
        f"steady: {args.seconds:g} simulated s"
    )
    header = (
        f"{'streams':>7}  {'client gap':>10}  {'burst tok/s':>11}  {'steady tok/s':>12}"
        f"  {'prefill steps':>13}  {'TTFT p50':>9}"
    )
    print(header)
    print("-" * len(header))
    for streams in args.streams:
        for gap_ms in args.gaps_ms:
            load = (
                mocker,
                args.workers,
                streams,
                args.prompt_tokens,
                args.max_tokens,
                gap_ms / 1e3,
            )
            burst = simulate(*load, args.burst_seconds)
            steady = simulate(*load, 10.0 + args.seconds, warmup_s=10.0, start_spread_s=1.0)
            ttft = sorted(steady.ttft)[len(steady.ttft) // 2] if steady.ttft else 0.0
            print(
                f"{streams:>7}  {f'0-{gap_ms:g} ms':>10}  {burst.tokens / burst.seconds:>11.0f}"
                f"  {steady.tokens / steady.seconds:>12.0f}"
                f"  {steady.prefill_steps / steady.steps:>13.1%}  {ttft * 1e3:>7.1f}ms"
            )


if __name__ == "__main__":
    main()
