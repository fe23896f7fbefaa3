"""The `tandem simulate` and `tandem router tune` commands: flags, the trace, the printed tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tandem.runtime.config import parse_config

from .fleet_config import FleetConfig, SimulateConfig
from .fleet_sim import run_fleet
from .mooncake_trace import TraceRecord, read_trace
from .router_tune import Trial, TuneConfig, format_trials, knob_flags, tune
from .trace_summary import format_table


def _records(config: SimulateConfig, prog: str) -> list[TraceRecord] | None:
    """The records to replay, or None (after saying why) when the trace cannot be read."""
    try:
        return list(read_trace(config.trace, config.max_requests or None))
    except (OSError, ValueError) as exc:
        print(f"{prog}: cannot read --trace {config.trace}: {exc}", file=sys.stderr)
        return None


def _describe(config: FleetConfig, records: Sequence[TraceRecord], trace: str) -> str:
    span = records[-1].arrival_s - records[0].arrival_s if records else 0.0
    sending = (
        f"closed loop at {config.concurrency} in flight"
        if config.concurrency
        else f"time scale {config.time_scale:g}"
    )
    workers = (
        f"{config.prefill_workers} prefill + {config.decode_workers} decode"
        if config.is_disaggregated
        else f"{config.workers}"
    )
    return (
        f"{Path(trace).name}, {len(records)} requests over {span:.0f} s of trace, "
        f"{sending}, {workers} simulated mocker workers "
        f"({config.mocker.num_kv_blocks} KV blocks of "
        f"{config.mocker.scheduler.kv_cache_block_size} tokens, "
        f"speedup ratio {config.mocker.speedup_ratio:g})"
    )


def simulate_main(argv: Sequence[str]) -> int:
    config = parse_config(SimulateConfig, argv, prog="tandem simulate")
    records = _records(config, "tandem simulate")
    if records is None:
        return 2
    started, cpu_started = time.perf_counter(), time.process_time()
    sim = run_fleet(records, config)
    result = sim.result
    took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"simulated trace replay: {_describe(config, records, config.trace)}")
    print(format_table([result]))
    if sim.disagg is not None:
        decisions = ", ".join(f"{n} {k}" for k, n in sorted(sim.disagg.decisions.items()))
        print(
            f"disaggregation: {decisions or 'no decisions'}; "
            f"{sim.disagg.transfer_bytes / 1e9:.1f} GB of KV moved in "
            f"{sim.disagg.transfer_seconds:.1f} simulated seconds of transfers"
        )
    print(f"{result.wall:.0f} simulated seconds in {took:.1f} s ({cpu:.1f} s of CPU)")
    return 0


def tune_main(argv: Sequence[str]) -> int:
    config = parse_config(TuneConfig, argv, prog="tandem router tune")
    records = _records(config, "tandem router tune")
    if records is None:
        return 2
    print(f"router tune: {_describe(config, records, config.trace)}; objective {config.objective}")
    started = time.perf_counter()

    def progress(trial: Trial) -> None:
        print(f"  simulated {knob_flags(trial.routing)}: {config.objective} "
              f"{trial.score[1] * 1e3:.0f} ms, {trial.score[0]} errors", flush=True)  # fmt: skip

    cpu_started = time.process_time()
    found = tune(records, config, config.objective, config.passes, progress)
    print(f"{len(found.trials)} settings simulated in {time.perf_counter() - started:.0f} s "
          f"({time.process_time() - cpu_started:.0f} s of CPU)")  # fmt: skip
    print(format_trials([("given", found.start), ("best", found.best)]))
    print(f"flags: {knob_flags(found.best.routing)}")
    return 0
