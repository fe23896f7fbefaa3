"""A real Prometheus scrapes a running cluster; every query of the Grafana dashboard returns data.

The cluster is a frontend (in-process KV router), two mocker workers and a
planner, as separate processes; Prometheus is Debian's `prometheus` binary
(`make test` installs it; the test is skipped, saying so, where it is
missing). Requests flow for the whole test, so rates and quantiles have
data. It also checks that every `tandem_*` series scraped is one
docs/metrics.md lists, and that the compose stack's prometheus.yml is valid.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.runtime import metrics_doc
from tandem.runtime.metrics import declared_names

from tests.e2e.openai_cluster import MODEL, Cluster, Worker, post
from tests.support.processes import ServiceProcess, infra_flags, spawn_mocker_worker, worker_ready

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tandem.json"
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs Debian's prometheus binary (apt-get install prometheus; make test installs it)",
)
# What Grafana substitutes in the dashboard's queries: every model, a rate window of
# several 1 s scrapes.
GRAFANA_VARIABLES = {"$model": ".*", "$__rate_interval": "10s"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, Grafana variables substituted."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            queries.append((panel["title"], expr))
    return queries


class Prometheus:
    """A prometheus server process scraping `targets` (job -> host:port list) every second."""

    def __init__(self, tmp_path: Path, log_dir: Path, targets: dict[str, list[str]]) -> None:
        assert PROMETHEUS is not None
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(addrs)}\n"
            for job, addrs in targets.items()
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = log_dir / "prometheus.log"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                if predicate():
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (histogram_quantile over no traffic is NaN)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


def scraped_name_is_declared(name: str, declared: dict[str, str]) -> bool:
    """`name` as scraped (with prometheus_client's `_total`/`_bucket`/`_created`...) is declared."""
    if name in declared:
        return True
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        base = name.removesuffix(suffix)
        if base != name and (declared.get(base) == "histogram" or f"{base}_total" in declared):
            return True
    return False


class Load:
    """Sends chat completions one after another on a thread until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failures: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            content = "the same long system prompt for prefix hits " * 8 + str(self.sent % 5)
            status, body = post(
                f"{self.url}/v1/chat/completions",
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": content}],
                    "max_tokens": 8,
                    "ignore_eos": True,
                },
            )
            if status != 200:
                self.failures.append(body)
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def cluster(infra: LocalInfra, log_dir: Path) -> Iterator[tuple[Cluster, dict[str, list[str]]]]:
    """Frontend + two mocker workers + a planner; their /metrics addresses by job."""
    c = Cluster(infra, log_dir)
    planner = None
    try:
        worker_metrics = []
        procs = [
            spawn_mocker_worker(infra, c.namespace, log_dir, "--speedup-ratio", "100")
            for _ in range(2)
        ]
        for proc in procs:
            instance_id, endpoint, metrics = worker_ready(proc, timeout=60)
            c.workers.append(Worker(proc, instance_id, endpoint))
            worker_metrics.append(metrics)
        c.start_frontend(wait_workers=2)
        planner = ServiceProcess(
            "tandem.planner",
            [
                *infra_flags(infra, c.namespace),
                "--model",
                MODEL,
                "--adjustment-interval",
                "1",
                "--metrics-host",
                "127.0.0.1",
                "--max-workers",
                "2",
            ],
            log_dir,
        )
        planner.wait_log("planner ready", timeout=60)
        found = re.search(r"planner ready .* metrics=(\S+)", planner.log_text())
        assert found is not None
        yield (
            c,
            {
                "tandem-frontend": [f"127.0.0.1:{c.port}"],
                "tandem-worker": worker_metrics,
                "tandem-planner": [found.group(1)],
            },
        )
    finally:
        if planner is not None:
            planner.stop()
        c.stop()


@needs_prometheus
def test_every_dashboard_query_returns_data_from_a_scraped_cluster(
    cluster: tuple[Cluster, dict[str, list[str]]], tmp_path: Path, log_dir: Path
) -> None:
    running, targets = cluster
    prometheus = Prometheus(tmp_path, log_dir, targets)
    load = Load(running.url)
    try:
        num_targets = sum(map(len, targets.values()))

        def all_up() -> bool:
            active = prometheus.get("/api/v1/targets")["activeTargets"]
            return len(active) == num_targets and all(t["health"] == "up" for t in active)

        prometheus.wait(all_up, 60, f"Prometheus to scrape all {num_targets} targets")
        queries = dashboard_queries()
        assert len(queries) >= 9
        missing = list(queries)

        def every_query_has_data() -> bool:
            missing[:] = [
                (title, expr)
                for title, expr in missing
                if not has_data(prometheus.get("/api/v1/query", query=expr)["result"])
            ]
            return not missing

        try:
            prometheus.wait(every_query_has_data, 90, "every dashboard query to return data")
        except AssertionError:
            raise AssertionError(f"queries without data: {missing}") from None
        assert not load.failures, load.failures[:3]

        # Every series Prometheus scraped is one docs/metrics.md lists.
        declared = declared_names(metrics_doc.declared_groups())
        names = prometheus.get("/api/v1/label/__name__/values")
        scraped = [n for n in names if n.startswith("tandem_")]
        assert "tandem_worker_kv_usage_ratio" in scraped
        undeclared = [n for n in scraped if not scraped_name_is_declared(n, declared)]
        assert not undeclared, f"scraped but not declared (docs/metrics.md): {undeclared}"

        # The per-process labels made it through the scrape.
        usage = prometheus.get("/api/v1/query", query="tandem_worker_kv_usage_ratio")["result"]
        assert {s["metric"]["worker"] for s in usage} == {w.instance_id for w in running.workers}
        assert {(s["metric"]["model"], s["metric"]["role"]) for s in usage} == {
            (MODEL, "aggregated")
        }
    finally:
        load.stop()
        prometheus.stop()


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus package)")
def test_the_compose_stacks_prometheus_config_is_valid() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(COMPOSE_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_queries_only_declared_metrics() -> None:
    declared = declared_names(metrics_doc.declared_groups())
    for title, expr in dashboard_queries():
        for name in re.findall(r"\b(tandem_[a-z0-9_]+)", expr):
            assert scraped_name_is_declared(name, declared), f"{title}: {name} is not declared"
