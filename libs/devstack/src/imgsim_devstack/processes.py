"""Start, wait for and stop the processes of the local stack, each tracked by its PID.

Each process appends to its log file (``.stack/logs/<name>.log``), so the log of a run
that crashed is still there after the next start; everything that judges *this* run —
the ready line, the tail shown when a process exits early — reads only the lines written
since its start (:meth:`_Process.log_of_this_run`), never a previous run's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[4]
KAFKA_POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
KAFKA_LOG4J = REPO_ROOT / "infra" / "kafka" / "log4j2.properties"
CLUSTER_ID = "aW1nc2ltLWxvY2FsLWtyYQ"  # any 16 bytes, base64url: one local cluster
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgsim"


class StackError(RuntimeError):
    """A process of the local stack could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def kafka_jars(cache: Path = DEFAULT_CACHE) -> Path:
    """The broker's jars, fetched from Maven Central with ``mvn`` on first use."""
    target = cache / "kafka-libs"
    marker = target / ".complete"
    if marker.exists():
        return target
    if shutil.which("mvn") is None:
        raise StackError("mvn is not on PATH; install Maven (and Java 17+) to run Kafka locally")
    log.info("fetching the Kafka broker jars from Maven Central into %s", target)
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mvn", "-q", "-B", "-f", str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={target}", "-DincludeScope=runtime",
        ],
        check=True,
    )  # fmt: skip
    marker.touch()
    return target


@dataclass
class _Process:
    """A child process with its log file; stopped by PID, SIGTERM then SIGKILL."""

    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _log_start: int = field(default=0, repr=False)  # where this run's lines begin

    def _spawn(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()  # the previous run's handle
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # Ctrl-C in a terminal reaches the stack, not each child
        )
        log.info("started %s (pid %d), log: %s", self.name, self.proc.pid, self.log_path)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self) -> None:
        if not self.alive():
            tail = self.log_tail()
            raise StackError(f"{self.name} exited early; last log lines:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of this run's log."""
        return "\n".join(self.log_of_this_run().splitlines()[-lines:])

    def log_of_this_run(self) -> str:
        """The log since the last start: a restarted process's old lines do not count."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log_file:
            log_file.seek(self._log_start)
            return log_file.read().decode(errors="replace")
        return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (the fault tests): the process and what it
        started (the gateway's worker processes, an index build), as a container's end
        would. Each was started in a session of its own, whose group id is its PID."""
        if self.proc is not None and self.proc.poll() is None:
            self._kill_group()
            log.info("killed %s (pid %d)", self.name, self.proc.pid)
        self._close_log()

    def _kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.proc.pid)
            self._kill_group()  # it, if it ignored SIGTERM, and anything it left behind
            log.info("stopped %s (pid %d)", self.name, self.proc.pid)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class KafkaBroker(_Process):
    """A single-node Apache Kafka broker in KRaft mode on 127.0.0.1."""

    data_dir: Path = Path("data/kafka")
    port: int = 9092
    controller_port: int = 0
    heap: str = "768m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        if port_open(self.port):
            raise StackError(f"port {self.port} is taken; is another Kafka running?")
        jars = kafka_jars()
        self.controller_port = self.controller_port or free_port()
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={logs.resolve()}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "message.max.bytes=16842752",
                    "auto.create.topics.enable=false",
                    "delete.topic.enable=true",
                    "log.cleaner.enable=true",
                ]
            )
            + "\n"
        )
        java = [
            "java",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            # C1 only: C2 kept compiling for minutes after a start (its thread was the
            # broker's largest user of CPU at idle, 35-50 ms a second). Measured on the
            # 2-core dev machine with the whole stack: the broker's CPU an image indexed
            # 4.7-5.1 → 2.6-3.2 ms, a search at c=8 4.6 → 3.6 ms; idle 74 → 48 ms a
            # second; search latency and the stack's rates unchanged.
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            "-cp",
            f"{jars}/*",
        ]
        if not (logs / "meta.properties").exists():
            subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                 "-t", CLUSTER_ID, "-c", str(config)],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        self._spawn([*java, "kafka.Kafka", str(config)])
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if port_open(self.port) and "Kafka Server started" in self.log_of_this_run():
                return
            time.sleep(0.2)
        raise StackError(f"Kafka did not start within {timeout_s:.0f} s:\n{self.log_tail()}")


@dataclass
class RedisServer(_Process):
    """``redis-server`` on 127.0.0.1 without persistence (a cache, rebuilt on demand)."""

    data_dir: Path = Path("data/redis")
    port: int = 6379

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        if port_open(self.port):
            raise StackError(f"port {self.port} is taken; is another Redis running?")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.data_dir.resolve()),
             "--protected-mode", "yes"]
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"redis-server did not start:\n{self.log_tail()}")
            time.sleep(0.05)


@dataclass
class ServiceProcess(_Process):
    """One imgsim service run as ``python -m <module>`` with its settings in ``env``."""

    module: str = ""
    env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None
    ready_marker: str | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        self.spawn()
        self.wait_ready(timeout_s)

    def spawn(self) -> None:
        """Start the process and return at once (:meth:`wait_ready` waits for it)."""
        import sys

        self._spawn([sys.executable, "-m", self.module], env={**os.environ, **self.env})

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if self._ready():
                return
            time.sleep(0.2)
        raise StackError(f"{self.name} was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self.health_url is not None:
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False
        if self.ready_marker is not None:
            return self.ready_marker in self.log_of_this_run()
        return True
