"""`tandem up` as a user runs it, and a cluster that rides out an etcd outage."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra, free_port, start_etcd, start_nats

from tests.support.processes import ServiceProcess, infra_flags, spawn_mocker_worker


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_tandem_up_serves_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """With the API locked (the key from the environment), as an operator would run it."""
    port = free_port()
    key = "sk-local-test-key"
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.launcher.cli", "up", "--engine", "mocker", "--workers", "2",
             "--workers-per-process", "1",  # two worker processes, however many cores
             "--http-port", str(port), "--http-host", "127.0.0.1", "--speedup-ratio", "50"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TANDEM_API_KEY": key},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Tandem is serving" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none").models.list()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        [model] = [m.id for m in client.models.list()]
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 8

        text = log_path.read_text()
        child_pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", text)]
        assert len(child_pids) == 3  # two workers and a frontend
        infra_urls = re.findall(r"started nats at (\S+) and etcd at (\S+)", text)
        assert infra_urls
        assert "etcd unreachable" not in text  # services start once etcd serves, not before

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        assert not [pid for pid in child_pids if _pid_alive(pid)]
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
            ).models.list()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tandem_up_gives_up_at_once_when_its_http_port_is_taken(infra: LocalInfra) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tandem.launcher.cli", "up", "--engine", "mocker", "--workers", "1",
             "--http-port", str(port), "--http-host", "127.0.0.1",
             "--nats", infra.nats_url, "--etcd", infra.etcd_url, "--namespace", "taken-port"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"frontend cannot start: the HTTP server cannot listen on 127.0.0.1:{port}" in out
    assert "frontend cannot start as configured" in out and "not restarting it" in out
    assert "restarting in" not in out and "Traceback" not in out


@pytest.fixture
def private_infra(tmp_path: Path) -> Iterator[LocalInfra]:
    """nats + etcd of this test's own: it stops etcd, which must disturb no other test."""
    infra = LocalInfra(start_nats(tmp_path), start_etcd(tmp_path), tmp_path, keep_data=True)
    yield infra
    infra.stop()


async def test_etcd_outage_of_30s_loses_no_request(
    private_infra: LocalInfra, log_dir: Path
) -> None:
    common = infra_flags(private_infra, "outage")
    workers = [
        spawn_mocker_worker(private_infra, "outage", log_dir, "--speedup-ratio", "4")
        for _ in range(2)
    ]
    port = free_port()
    frontend = ServiceProcess(
        "tandem.frontend",
        [
            *common,
            "--http-port",
            str(port),
            "--http-host",
            "127.0.0.1",
            "--router-mode",
            "round-robin",
        ],
        log_dir,
    )
    procs = [*workers, frontend]
    try:
        for w in workers:
            w.wait_log("worker ready", timeout=60)
        frontend.wait_http_ok(f"http://127.0.0.1:{port}/health")
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        )

        async def wait_models() -> str:
            while True:
                models = [m.id async for m in client.models.list()]
                if models:
                    return models[0]
                await asyncio.sleep(0.1)

        model = await asyncio.wait_for(wait_models(), 60)
        outage_over = asyncio.Event()
        completed: list[int] = []
        in_outage: list[int] = []

        async def traffic() -> None:
            while not outage_over.is_set():
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello"}],
                    max_tokens=32, stream=True, stream_options={"include_usage": True},
                )  # fmt: skip
                tokens = 0
                async for chunk in stream:
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                completed.append(tokens)
                if private_infra.etcd.proc.poll() is not None:
                    in_outage.append(tokens)

        async def until(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
            async with asyncio.timeout(timeout):
                while not predicate():
                    await asyncio.sleep(0.05)

        streams = [asyncio.create_task(traffic()) for _ in range(4)]
        await until(lambda: len(completed) >= 4)  # traffic flows before the outage
        private_infra.etcd.stop()
        # The outage itself: longer than the 10 s lease TTL, as the contract demands.
        await asyncio.sleep(30)
        assert all(p.is_alive() for p in procs), "a service died while etcd was down"
        await asyncio.to_thread(private_infra.etcd.restart)
        served = len(completed)
        await until(lambda: len(completed) >= served + 4)  # and after it
        outage_over.set()
        await asyncio.wait_for(asyncio.gather(*streams), 60)  # any failed request raises here

        assert in_outage, "no request ran during the outage"
        assert all(t == 32 for t in completed)
        assert all(p.is_alive() for p in procs)
        # Still routable after etcd is back (registrations survived or were rewritten).
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "again"}], max_tokens=4
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 4
    finally:
        for p in procs:
            p.stop()
