"""The KV router's per-worker cost terms, kept between decisions, and the pick over them.

A decision's cost per worker (cost_model.costs) is

    base - w * overlap + per_token * backlog + decode

where only `base` (the request's size) and `overlap` (what the worker holds
of this prompt) depend on the request, and `backlog` and `decode` depend on
the worker's load, which changes only when a request is added, prefilled or
freed on it, when it reports, or when its report goes stale. So the table
keeps, per worker that may take requests, those terms and whether it is busy,
refreshed for the workers ActiveLoadManager.take_changed names, and rebuilt
when the worker set (its InstanceInfo objects), the refused workers, the
block size or the config change. Per decision it scores the workers that
hold some of the prompt, and only if none of them is clearly the cheapest,
also those whose load term is within a hair of the least: every other worker
costs more than the cheapest by more than the pick's tie tolerance, so
leaving it out changes nothing.

The choice is exactly the full computation's, bit for bit: the costs of the
workers it scores are computed with the same expression and operands, in the
same order of workers, so the minimum, the tied set and the rng draws are the
same (tests/unit/router/test_score_table.py checks it against the full
computation over random states). The margin covers float rounding: a worker
left out has no overlap, so its cost is `base + key` up to a few ulps, and
the margin (2e-9 plus 1e-9 of the magnitudes) is many orders of magnitude
above those. With a temperature above 0 every worker is scored (the softmax
weighs them all), from the kept terms.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from itertools import compress

from tandem.runtime.instance_info import InstanceInfo

from . import cost_model
from .active_load import ActiveLoadManager
from .config import RoutingConfig
from .radix_index import TierOverlaps

INF = float("inf")
TIE_TOLERANCE = cost_model.TIE_TOLERANCE


class ScoreTable:
    """Owns the load terms and busy state of each worker that may take requests."""

    def __init__(self, load: ActiveLoadManager) -> None:
        self._load = load
        self._all: list[InstanceInfo] = []  # the worker view's values when built...
        self._built_ids: list[int] = []  # ...and their id()s
        self._refused: Mapping[str, str] | None = None
        self._block_size = 0
        self._config: RoutingConfig | None = None  # None: never built
        self.ids: list[str] = []
        """Workers neither draining nor refused, in the worker view's order."""
        self.infos: list[InstanceInfo] = []
        self._position: dict[str, int] = {}
        self._backlogs: list[int] = []  # cost_model.backlog_tokens of the queued prefill
        self._decodes: list[int] = []
        self._keys: list[float] = []  # per_token * backlog + decode; INF when busy
        self._per_token = 0.0
        self._threshold = 1.0

    def sync(
        self,
        instances: Mapping[str, InstanceInfo],
        refused: Mapping[str, str],
        block_size: int,
        config: RoutingConfig,
        now: float,
    ) -> None:
        """Bring the table up to date with the workers and their loads at `now`."""
        changed = self._load.take_changed(now)
        if (
            # By identity (the records are kept, so their ids are not reused): a record
            # replaced by an equal one costs one rebuild, not comparing every field of every
            # record on every decision.
            list(map(id, instances.values())) != self._built_ids
            or refused is not self._refused
            or block_size != self._block_size
            or config is not self._config
        ):
            self._rebuild(list(instances.values()), refused, block_size, config, now)
        elif changed:
            position = self._position
            rows = [position[iid] for iid in changed if iid in position]
            if rows:
                self._refresh(rows, now)

    def _rebuild(
        self,
        infos: list[InstanceInfo],
        refused: Mapping[str, str],
        block_size: int,
        config: RoutingConfig,
        now: float,
    ) -> None:
        self._all = infos
        self._built_ids = list(map(id, infos))
        self._refused = refused
        self._block_size = block_size
        self._config = config
        # Same expression as cost_model.costs, so the same float.
        self._per_token = (
            config.kv_overlap_score_weight * cost_model.PREFILL_BLOCK_COST / block_size
        )
        self._threshold = config.busy_threshold
        # A draining worker is still registered (its streams finish) but takes nothing new.
        self.infos = [i for i in infos if not i.draining and i.instance_id not in refused]
        self.ids = [i.instance_id for i in self.infos]
        self._position = {iid: row for row, iid in enumerate(self.ids)}
        n = len(self.ids)
        self._backlogs = [0] * n
        self._decodes = [0] * n
        self._keys = [INF] * n
        self._refresh(list(range(n)), now)

    def _refresh(self, rows: list[int], now: float) -> None:
        load = self._load
        prefills, decodes, used = load.loads([self.ids[row] for row in rows], now)
        per_token = self._per_token
        threshold = self._threshold
        for row, prefill, decode, in_use in zip(rows, prefills, decodes, used, strict=True):
            total = self.infos[row].total_blocks or load.total_blocks(self.ids[row])
            backlog = cost_model.backlog_tokens(prefill)
            self._backlogs[row] = backlog
            self._decodes[row] = decode
            is_busy = total > 0 and in_use > threshold * total
            self._keys[row] = INF if is_busy else per_token * backlog + decode

    def num_allowed(self, exclude: Collection[str]) -> int:
        """Workers that may take this request (busy or not)."""
        if not exclude:
            return len(self.ids)
        position = self._position
        return len(self.ids) - len({iid for iid in exclude if iid in position})

    def choose(
        self,
        overlaps: TierOverlaps,
        prompt_blocks: int,
        request_blocks: int,
        exclude: Collection[str],
        rng: random.Random,
    ) -> tuple[int, int] | None:
        """(row, blocks it holds in any tier) of the cheapest worker below the busy threshold
        (cost_model.costs and cost_model.pick over all of them), or None if all are busy."""
        config = self._config
        assert config is not None, "sync() first"
        keys = self._keys
        position = self._position
        if exclude:
            keys = keys.copy()
            for iid in exclude:
                row = position.get(iid)
                if row is not None:
                    keys[row] = INF
        device, host, disk = overlaps
        # Rows holding some of the prompt, and what they are credited with.
        held: dict[int, int] = {}
        credited: dict[int, float] | dict[int, int]
        if host or disk:
            host_weight = config.router_host_cache_hit_weight
            disk_weight = config.router_disk_cache_hit_weight
            tiered: dict[int, float] = {}
            for iid in {*device, *host, *disk}:
                row = position.get(iid)
                if row is not None and keys[row] != INF:
                    d, h, k = device.get(iid, 0), host.get(iid, 0), disk.get(iid, 0)
                    tiered[row] = cost_model.credited_overlap(d, h, k, host_weight, disk_weight)
                    held[row] = d + h + k
            credited, zero = tiered, 0.0
        else:
            for iid, n in device.items():
                row = position.get(iid)
                if row is not None and keys[row] != INF:
                    held[row] = n
            credited, zero = held, 0
        w = config.kv_overlap_score_weight * cost_model.PREFILL_BLOCK_COST
        base = w * prompt_blocks + request_blocks
        per_token = self._per_token
        backlogs = self._backlogs
        decodes = self._decodes
        get = credited.get

        def costs(rows: list[int]) -> list[float]:
            # cost_model.costs's expression, operand for operand.
            return [
                base - w * get(row, zero) + per_token * backlogs[row] + decodes[row] for row in rows
            ]

        temperature = config.router_temperature
        if temperature > 0:
            rows = [row for row, key in enumerate(keys) if key != INF]
            if not rows:
                return None
            cost = costs(rows)
        else:
            least = min(keys, default=INF)
            if least == INF:
                return None
            margin = 2 * TIE_TOLERANCE + TIE_TOLERANCE * (abs(base) + abs(least))
            rows = sorted(held)
            cost = costs(rows)
            # A worker that holds none of the prompt costs base + its key (to a few ulps): if
            # a holder is cheaper than the least of those by more than the tolerance, none
            # of them is the cheapest or ties with it (the usual case when the prompt is held).
            if not rows or min(cost) + TIE_TOLERANCE + margin >= base + least:
                near = compress(range(len(keys)), map((least + margin).__ge__, keys))
                rows = sorted({*near, *held})
                cost = costs(rows)
        best = rows[cost_model.pick(cost, [decodes[row] for row in rows], temperature, rng)]
        return best, held.get(best, 0)
