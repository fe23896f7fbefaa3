"""No single request takes the frontend down or stalls it: long stop strings, huge prompts,
and the moments before a model's workers have registered (a real frontend process)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from tandem.frontend.stop_strings import MAX_STOP_CHARS
from tandem.launcher.local_infra import LocalInfra, free_port

from tests.e2e.openai_cluster import MODEL, Cluster, post
from tests.support.processes import ServiceProcess

HEALTH_WITHIN_SECONDS = 0.5
# What the requests below may add to the frontend's peak memory (a 10 MB prompt's body,
# its decoded text and the chunks in flight); every prefix of a 48 kB stop string was
# 1.2 GB, tokenizing a 10 MB prompt whole about 1 GB.
PEAK_GROWTH_BYTES = 300 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(infra, tmp_path_factory.mktemp("request-cost-logs"))
    try:
        c.start_workers(1)  # the mocker: a 131,072-token context
        c.start_frontend("--router-mode", "round-robin")
        yield c
    finally:
        c.stop()


class HealthProbe:
    """Polls /health from a thread while requests run; records the slowest answer."""

    def __init__(self, url: str) -> None:
        self._url = f"{url}/health"
        self._stop = threading.Event()
        self.slowest = 0.0
        self.polls = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()  # one more poll after the requests ended
            started = time.monotonic()
            with urllib.request.urlopen(self._url, timeout=30) as resp:
                assert resp.status == 200
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.polls += 1
            if stopping:
                return
            self._stop.wait(0.02)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def completion(cluster: Cluster, **body: Any) -> tuple[int, dict[str, Any]]:
    return post(f"{cluster.url}/v1/completions", {"model": MODEL, **body}, timeout=120)


def test_long_stop_strings_and_huge_prompts_cost_their_size(cluster: Cluster) -> None:
    assert cluster.frontend is not None
    pid = cluster.frontend.pid
    peak_before = peak_rss_bytes(pid)
    prose = "The quick brown fox jumps over the lazy dog. "
    huge = (prose * (10_000_000 // len(prose) + 1))[:10_000_000]
    with HealthProbe(cluster.url) as probe:
        # Over the cap: refused at once, naming the field.
        status, body = completion(cluster, prompt="hi", max_tokens=4, stop="x" * 100_000)
        assert status == 400 and body["error"]["param"] == "stop", body
        assert str(MAX_STOP_CHARS) in body["error"]["message"]
        # Under it: served, the automaton linear in the stop string's length.
        stops = ["ab" * 12_000, "\x00" * 24_000]  # 48 kB in all
        status, body = completion(cluster, prompt="hi", max_tokens=32, stop=stops)
        assert status == 200 and body["usage"]["completion_tokens"] == 32, body
        # 10 MB of prose passes the prompt's lower bound (131,072 x 81 bytes) and is
        # refused once its first ~600 kB have shown it is over the context.
        started = time.monotonic()
        status, body = completion(cluster, prompt=huge, max_tokens=4)
        refused_in = time.monotonic() - started
        assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
        assert body["error"]["param"] == "prompt"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": huge}]}
        status, body = post(f"{cluster.url}/v1/chat/completions", chat, timeout=120)
        assert status == 400 and body["error"]["param"] == "messages", body
    assert probe.slowest < HEALTH_WITHIN_SECONDS, (probe.polls, probe.slowest)
    assert refused_in < 10.0  # it took 9 s to tokenize it all, on the event loop
    assert peak_rss_bytes(pid) - peak_before < PEAK_GROWTH_BYTES
    # Still serving.
    status, body = completion(cluster, prompt="hi", max_tokens=4)
    assert status == 200, body


def post_with_headers(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], Message]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), exc.headers


def test_a_named_model_without_workers_yet_is_503_with_retry_after(
    infra: LocalInfra, log_dir: Path
) -> None:
    c = Cluster(infra, log_dir)
    try:
        c.start_frontend("--model-name", "later-model", wait_workers=0)
        url = f"{c.url}/v1/completions"
        status, body, headers = post_with_headers(url, {"model": "later-model", "prompt": "hi"})
        assert status == 503 and headers["Retry-After"] == "1", body
        assert body["error"]["type"] == "service_unavailable_error"
        status, body, _ = post_with_headers(url, {"model": "typo", "prompt": "hi"})
        assert status == 404 and body["error"]["code"] == "model_not_found", body
    finally:
        c.stop()


def test_right_after_a_start_requests_are_503_until_served_never_404(
    infra: LocalInfra, log_dir: Path
) -> None:
    c = Cluster(infra, log_dir)
    try:
        c.start_workers(1)
        c.port = free_port()
        flags = ["--http-host", "127.0.0.1", "--http-port", str(c.port), *c.common_flags()]
        c.frontend = ServiceProcess("tandem.frontend", flags, log_dir)
        # From the first moment the port answers: the model's tokenizer is still loading.
        seen: list[tuple[int, str | None]] = []
        deadline = time.monotonic() + 60
        while not seen or seen[-1][0] != 200:
            assert time.monotonic() < deadline and c.frontend.is_alive(), seen[-5:]
            try:
                status, _, headers = post_with_headers(
                    f"{c.url}/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1}
                )
            except urllib.error.URLError:
                time.sleep(0.005)  # not listening yet: poll again
                continue
            seen.append((status, headers.get("Retry-After")))
        assert all(s == (503, "1") for s in seen[:-1]), seen
    finally:
        c.stop()
