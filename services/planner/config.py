"""Settings of the planner service (`tandem planner`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.config import RuntimeConfig, option
from tandem.runtime.model_card import DEFAULT_MODEL_NAME

from .policy import Thresholds


@dataclass(frozen=True, kw_only=True)
class PlannerConfig(RuntimeConfig):
    """Tandem planner: sizes a model's worker pool from its load.

    Every --adjustment-interval seconds it reads the live workers (etcd) and
    their load reports (NATS), and writes the pool size it wants to the etcd
    key tandem/{namespace}/planner/replicas/{model}. A connector makes it so
    (`tandem up --planner` runs the local one). Run one planner per model.
    """

    model: str = option(DEFAULT_MODEL_NAME, "Model whose worker pool is scaled.")
    min_workers: int = option(1, "Never ask for fewer workers than this (at least 1).")
    max_workers: int = option(8, "Never ask for more workers than this.")
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
        if self.scale_up_intervals < 1 or self.scale_down_intervals < 1:
            raise ValueError("--scale-up-intervals and --scale-down-intervals must be at least 1")
        if self.max_wait_intervals < 0:
            raise ValueError("--max-wait-intervals must be >= 0")
        if self.load_max_age <= 0:
            raise ValueError("--load-max-age must be > 0 seconds")

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
