"""``make up``'s stack: it serves the API, and SIGTERM stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imgsim_devstack.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes once its parent has exited.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in found.read_text().split()] if found.exists() else []


def health_served(port: int) -> float:
    """The gateway's count of answered health checks, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    labels = 'method="GET",route="/api/v1/health",status="200"'
    found = re.search(rf"imgsim_gateway_requests_total\{{{labels}\}} (\S+)", metrics)
    return float(found.group(1)) if found else 0.0


def health(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as r:
        return int(r.status)


def test_up_serves_and_sigterm_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "imgsim_devstack", "up", "--data-dir", str(tmp_path / "data"),
             "--port", str(port), "--kafka-port", str(free_port()),
             "--redis-port", str(free_port()), "--weights", "random"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while f"http://127.0.0.1:{port}" not in log_path.read_text():
            assert up.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as r:
            assert r.status == 200
        pids = [int(p) for p in re.findall(r"started \w+ \(pid (\d+)\)", log_path.read_text())]
        assert len(pids) == 5  # kafka, redis, indexer, embedder, gateway
        assert all(pid_alive(pid) for pid in pids)
        # The gateway runs two worker processes; /metrics counts the requests of both.
        spawned = children(pids[-1])  # the workers, and multiprocessing's resource tracker
        workers = [c for c in spawned if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, spawned
        before = health_served(port)
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda _: health(port), range(40))) == [200] * 40
        assert health_served(port) - before == 40
        pids += spawned
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(90)
    assert up.returncode == 0, log_path.read_text()
    assert not [pid for pid in pids if pid_alive(pid)]
    assert "stopped" in log_path.read_text()
