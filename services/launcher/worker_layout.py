"""The worker layout `tandem up` and the fleet simulator share: N aggregated workers, or P + D."""

from __future__ import annotations


class WorkerLayout:
    """What a config with `workers`, `prefill_workers` and `decode_workers` fields derives.

    `workers` aggregated workers, or, when `prefill_workers` and `decode_workers`
    are set (both or neither), that many prefill and decode workers instead.
    """

    workers: int
    prefill_workers: int
    decode_workers: int

    def check_layout(self) -> None:
        """ValueError unless the prefill and decode counts go together, each at least 1."""
        if (self.prefill_workers > 0) != (self.decode_workers > 0) or min(
            self.prefill_workers, self.decode_workers
        ) < 0:
            raise ValueError(
                "--prefill-workers and --decode-workers go together, each at least 1 "
                f"(got {self.prefill_workers} and {self.decode_workers})"
            )

    @property
    def is_disaggregated(self) -> bool:
        return self.prefill_workers > 0

    @property
    def num_workers(self) -> int:
        """Workers of every role."""
        return self.prefill_workers + self.decode_workers if self.is_disaggregated else self.workers
