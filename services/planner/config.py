"""Settings of the planner service (`tandem planner`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tandem.runtime.config import RuntimeConfig, option
from tandem.runtime.model_card import DEFAULT_MODEL_NAME

from .kubernetes_connector import KubernetesConnectorConfig
from .policy import Thresholds
from .pool_policy import PoolThresholds
from .predictors import PREDICTORS, PredictorSettings
from .sla_policy import SlaBounds


@dataclass(frozen=True, kw_only=True)
class PlannerConfig(RuntimeConfig):
    """Tandem planner: sizes a model's worker pools from their load or to latency targets.

    Every --adjustment-interval seconds it reads the live workers (etcd) and
    their load reports (NATS), and writes the pool size it wants to the etcd
    key tandem/{namespace}/planner/replicas/{model}. A connector makes it so
    (`tandem up --planner` runs the local one).

    --mode load (default) scales on KV usage and queue depth. --mode sla sizes
    the pools for the demand it predicts from the frontends' /metrics
    (--frontend-url) and what one worker sustains within --ttft-target-ms and
    --itl-target-ms (--profile, made by `tandem profile`), corrected by the
    latencies the frontends observe. Prefill and decode workers (their role
    in etcd) are sized as two pools, in both modes: in --mode load the prefill
    pool on the prefill queue's depth, the decode pool on its KV usage.

    Several planners of one model may run: one leads (an etcd lease), the
    others stand by and take over within --leader-lease-ttl when it dies.
    """

    model: str = option(DEFAULT_MODEL_NAME, "Model whose worker pool is scaled.")
    mode: str = option("load", "How pools are sized.", choices=("load", "sla"))
    min_workers: int = option(1, "Never ask for fewer workers than this (at least 1).")
    max_workers: int = option(
        8, "Never ask for more workers than this (prefill and decode pools: in all)."
    )
    ttft_target_ms: float = option(500.0, "--mode sla: time to first token to meet (mean, ms).")
    itl_target_ms: float = option(50.0, "--mode sla: inter-token latency to meet (mean, ms).")
    profile: str = option("", "--mode sla: the worker profile JSON `tandem profile` wrote.")
    frontend_url: list[str] = option(
        default_factory=list,
        help="--mode sla: frontends whose /metrics give demand and latency "
        "(http://host:port, comma-separated).",
    )
    predictor: str = option(
        "holt-winters",
        "--mode sla: how the next interval's request rate, input and output lengths are "
        "predicted (holt-winters follows trends and, with --predictor-season, cycles).",
        choices=tuple(PREDICTORS),
    )
    predictor_window: int = option(5, "--predictor moving-average: intervals averaged.")
    predictor_season: int = option(
        0, "--predictor holt-winters: intervals in one season (a daily cycle); 0 = none."
    )
    predict_ahead: int = option(
        1,
        "--mode sla: size the pool for the busiest of the next N intervals' predicted demand "
        "(N x --adjustment-interval about what a new worker takes to start serving).",
    )
    min_prefill_workers: int = option(1, "Fewest prefill workers (when disaggregated).")
    max_prefill_workers: int = option(8, "Most prefill workers (within --max-workers in all).")
    min_decode_workers: int = option(1, "Fewest decode workers (when disaggregated).")
    max_decode_workers: int = option(8, "Most decode workers (within --max-workers in all).")
    leader_lease_ttl: int = option(
        10, "Seconds a standby planner waits for a dead leader's lease to end before taking over."
    )
    adjustment_interval: float = option(10.0, "Seconds between two decisions.")
    scale_up_kv_usage: float = option(
        0.8, "Scale up when the pool's KV usage (active/total blocks) is above this (0-1)."
    )
    scale_up_waiting: float = option(
        1.0, "Scale up when waiting requests per worker are above this."
    )
    scale_down_kv_usage: float = option(
        0.3,
        "Scale down when KV usage is below this (0-1), nobody waits, and one worker fewer fits.",
    )
    scale_up_prefill_queue: float = option(
        2.0,
        "--mode load, disaggregated: grow the prefill pool when its prefill jobs (queued or "
        "running) per prefill worker are above this.",
    )
    scale_down_prefill_queue: float = option(
        0.5,
        "--mode load, disaggregated: shrink the prefill pool when its jobs per worker are "
        "below this and would stay within --scale-up-prefill-queue on one worker fewer.",
    )
    scale_up_intervals: int = option(2, "Consecutive high-load intervals before scaling up.")
    scale_down_intervals: int = option(3, "Consecutive low-load intervals before scaling down.")
    max_wait_intervals: int = option(
        6,
        "Intervals to wait for the live pool to reach the last target before deciding anyway.",
    )
    load_max_age: float = option(
        5.0, "Seconds after which a worker's last load report no longer counts."
    )
    metrics_host: str = option("0.0.0.0", "Address the /metrics and /health server binds.")
    metrics_port: int = option(0, "Port of /metrics and /health (0 = a free port).")
    connector: str = option(
        "local",
        "Who makes the target so: local (someone else follows the etcd key: `tandem up "
        "--planner`) or kubernetes (this planner sets --kubernetes-deployment's replicas).",
        choices=("local", "kubernetes"),
    )
    kubernetes: KubernetesConnectorConfig = option(
        help="the kubernetes connector", default_factory=KubernetesConnectorConfig
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model must not be empty")
        if self.min_workers < 1:
            raise ValueError(f"--min-workers must be at least 1, got {self.min_workers}")
        if self.max_workers < self.min_workers:
            raise ValueError(
                f"--max-workers ({self.max_workers}) must be >= --min-workers ({self.min_workers})"
            )
        if self.adjustment_interval <= 0:
            raise ValueError("--adjustment-interval must be > 0 seconds")
        for name, value in (
            ("--scale-up-kv-usage", self.scale_up_kv_usage),
            ("--scale-down-kv-usage", self.scale_down_kv_usage),
        ):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.scale_down_kv_usage >= self.scale_up_kv_usage:
            raise ValueError(
                f"--scale-down-kv-usage ({self.scale_down_kv_usage}) must be below "
                f"--scale-up-kv-usage ({self.scale_up_kv_usage}), or the pool would flap"
            )
        if self.scale_up_waiting < 0:
            raise ValueError("--scale-up-waiting must be >= 0")
        if not 0 <= self.scale_down_prefill_queue < self.scale_up_prefill_queue:
            raise ValueError(
                f"--scale-down-prefill-queue ({self.scale_down_prefill_queue}) must be >= 0 and "
                f"below --scale-up-prefill-queue ({self.scale_up_prefill_queue})"
            )
        for pool in ("prefill", "decode"):
            low, high = getattr(self, f"min_{pool}_workers"), getattr(self, f"max_{pool}_workers")
            if low < 1 or high < low:
                raise ValueError(
                    f"--min-{pool}-workers ({low}) must be >= 1 and <= --max-{pool}-workers ({high})"
                )
        if self.scale_up_intervals < 1 or self.scale_down_intervals < 1:
            raise ValueError("--scale-up-intervals and --scale-down-intervals must be at least 1")
        if self.max_wait_intervals < 0:
            raise ValueError("--max-wait-intervals must be >= 0")
        if self.load_max_age <= 0:
            raise ValueError("--load-max-age must be > 0 seconds")
        if self.leader_lease_ttl < 2:
            raise ValueError(
                f"--leader-lease-ttl must be at least 2 seconds, got {self.leader_lease_ttl}"
            )
        if self.connector == "kubernetes" and not self.kubernetes.is_set:
            raise ValueError(
                "--connector kubernetes needs --kubernetes-deployment or --kubernetes-pool-deployment"
            )
        if self.mode == "sla":
            self._check_sla()

    def _check_sla(self) -> None:
        if not self.profile:
            raise ValueError("--mode sla needs --profile (a file written by `tandem profile`)")
        if not self.frontend_url:
            raise ValueError("--mode sla needs --frontend-url (the frontends' http://host:port)")
        if self.ttft_target_ms <= 0 or self.itl_target_ms <= 0:
            raise ValueError("--ttft-target-ms and --itl-target-ms must be > 0")
        if self.predict_ahead < 1:
            raise ValueError(f"--predict-ahead must be at least 1, got {self.predict_ahead}")
        if self.predictor_window < 1 or self.predictor_season < 0:
            raise ValueError("--predictor-window must be >= 1 and --predictor-season >= 0")

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            scale_up_kv_usage=self.scale_up_kv_usage,
            scale_up_waiting=self.scale_up_waiting,
            scale_down_kv_usage=self.scale_down_kv_usage,
            scale_up_intervals=self.scale_up_intervals,
            scale_down_intervals=self.scale_down_intervals,
            max_wait_intervals=self.max_wait_intervals,
        )

    @property
    def pool_thresholds(self) -> PoolThresholds:
        """--mode load of a disaggregated model: each pool within its bounds and the budget."""
        t = self.thresholds
        return PoolThresholds(
            prefill=replace(
                t,
                min_workers=self.min_prefill_workers,
                max_workers=self.max_prefill_workers,
                scale_up_queue=self.scale_up_prefill_queue,
                scale_down_queue=self.scale_down_prefill_queue,
            ),
            decode=replace(
                t, min_workers=self.min_decode_workers, max_workers=self.max_decode_workers
            ),
            max_workers=self.max_workers,
        )

    @property
    def sla_bounds(self) -> SlaBounds:
        return SlaBounds(
            ttft_ms=self.ttft_target_ms,
            itl_ms=self.itl_target_ms,
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            min_prefill_workers=self.min_prefill_workers,
            max_prefill_workers=self.max_prefill_workers,
            min_decode_workers=self.min_decode_workers,
            max_decode_workers=self.max_decode_workers,
            scale_down_intervals=self.scale_down_intervals,
        )

    @property
    def predictor_settings(self) -> PredictorSettings:
        return PredictorSettings(window=self.predictor_window, season=self.predictor_season)
