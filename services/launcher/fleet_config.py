"""The fleet simulator's settings: the fleet (layout, workers' and router's config) and the replay."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.frontend.config import FrontendConfig
from tandem.frontend.disagg import DisaggSettings
from tandem.router.config import RoutingConfig
from tandem.runtime.config import option
from tandem.worker.config import LOAD_REPORT_INTERVAL_SECONDS
from tandem.worker.mocker import MockerConfig

from .mooncake_trace import DEFAULT_BLOCK_TOKENS
from .worker_layout import WorkerLayout


@dataclass(frozen=True, kw_only=True)
class FleetConfig(WorkerLayout):
    """A simulated fleet: how many mocker workers, how they are configured and routed, and how
    the trace is replayed on them."""

    workers: int = option(8, "Simulated mocker workers (aggregated).")
    prefill_workers: int = option(
        0,
        "Simulated prefill workers; with --decode-workers, a disaggregated fleet instead of "
        "--workers aggregated ones.",
    )
    decode_workers: int = option(0, "Simulated decode workers; with --prefill-workers.")
    max_local_prefill_length: int = option(
        FrontendConfig.max_local_prefill_length,
        "Disaggregated: a prompt goes to a prefill worker only with more uncached tokens than "
        "this on its decode worker (the frontend's flag).",
    )
    max_prefill_queue_size: int = option(
        FrontendConfig.max_prefill_queue_size,
        "Disaggregated: ... and only while fewer prefill jobs than this are queued or running.",
    )
    concurrency: int = option(
        0,
        "Closed loop: this many requests in flight, each stream sending its next record when "
        "its previous one ends (0 = open loop at the trace's timestamps).",
    )
    ramp_up: float = option(
        0.0,
        "Closed loop: the streams' first sends are spread evenly over this many simulated "
        "seconds (0 = all at once; equal requests sent together stay in lockstep).",
    )
    time_scale: float = option(
        1.0,
        "Trace time is divided by this (4 = four times as fast as recorded), "
        "as --speedup of bench/trace_replay.py.",
    )
    max_requests: int = option(0, "Replay only the first N records of the trace (0 = all).")
    block_tokens: int = option(
        DEFAULT_BLOCK_TOKENS, "Prompt tokens one hash id of the trace stands for (Mooncake: 512)."
    )
    seed: int = option(
        0, "Seed of the prompts' token ids, the router's tie-breaks and the generated tokens."
    )
    load_report_interval: float = option(
        LOAD_REPORT_INTERVAL_SECONDS,
        "Seconds between a worker's load reports when nothing changes (the workers' flag).",
    )
    drain_timeout: float = option(
        600.0, "Simulated seconds to wait for answers after the last arrival; the rest are errors."
    )
    routing: RoutingConfig = option(
        help="How the router picks workers.", default_factory=RoutingConfig
    )
    mocker: MockerConfig = option(
        help="Every simulated worker's mocker settings.", default_factory=MockerConfig
    )

    def __post_init__(self) -> None:
        if self.workers <= 0:
            raise ValueError("workers must be positive")
        self.check_layout()
        DisaggSettings(self.max_local_prefill_length, self.max_prefill_queue_size)  # validates
        if self.mocker.kvbm.enabled:
            raise ValueError(
                "--connector kvbm: the fleet simulator does not simulate the KVBM tiers; "
                "measure them on live mocker workers (bench/kvbm.py)"
            )
        if self.concurrency < 0 or self.ramp_up < 0:
            raise ValueError("concurrency and ramp_up must be >= 0")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.max_requests < 0:
            raise ValueError("max_requests must be >= 0 (0 = all)")
        if self.block_tokens < 2:
            raise ValueError("block_tokens must be at least 2")
        if self.load_report_interval <= 0 or self.drain_timeout <= 0:
            raise ValueError("load_report_interval and drain_timeout must be positive")

    @property
    def disagg_settings(self) -> DisaggSettings:
        return DisaggSettings(self.max_local_prefill_length, self.max_prefill_queue_size)


@dataclass(frozen=True, kw_only=True)
class SimulateConfig(FleetConfig):
    """tandem simulate: replay a Mooncake-format trace on a simulated fleet, in one process.

    The real router (index, cost model, active load, busy threshold) and N
    mocker workers' real schedulers and block managers run on a simulated
    clock: deterministic, no CPU time in the figures, much faster than the
    trace. Prints the table bench/trace_replay.py prints for a live cluster.
    Routing flags are the frontend's; mocker flags are the workers'.
    """

    trace: str = option("", "Mooncake-format JSONL trace to replay (required).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.trace:
            raise ValueError("--trace is required")
