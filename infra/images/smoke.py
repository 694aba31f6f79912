"""Smoke run of the built images: each entrypoint inside its image, the pipeline through them.

Starts Kafka and Redis on free 127.0.0.1 ports (``imgsim_devstack``, as the tests do),
then runs the indexer, the embedder (random weights) and the gateway from their images
(``buildah run --isolation chroot`` with the host's network, so they reach the local
broker), and for each one waits until it reports ready (workers: ``/healthz`` alive; the
gateway: ``/api/v1/ready``) and runs the image's own HEALTHCHECK command inside it. Then
it indexes one JPEG through the gateway with ``?wait=true`` and searches with the same
image, which must come back first. Everything it started is stopped by PID at the end,
also on failure. Exit status 0 means every image passed.

    uv run python infra/images/smoke.py --tag dev
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from imgsim_devstack.processes import KafkaBroker, RedisServer, free_port

READY_TIMEOUT_S = 180.0


@dataclass
class Container:
    """One image run with ``buildah run`` in a working container of its own."""

    image: str
    env: dict[str, str]
    log: Path
    name: str = ""
    process: subprocess.Popen[bytes] | None = None
    _log_file: io.BufferedWriter | None = field(default=None, repr=False)

    def start(self, command: list[str]) -> None:
        self.name = buildah("from", "--pull-never", self.image)
        argv = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for key, value in self.env.items():
            argv += ["--env", f"{key}={value}"]
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(  # its own process group: stopped as a whole
            [*argv, self.name, "--", *command],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def exec(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """Run another command in the same container (its filesystem, the host network)."""
        argv = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for key, value in self.env.items():
            argv += ["--env", f"{key}={value}"]
        return subprocess.run(
            [*argv, self.name, "--", *command], capture_output=True, text=True, timeout=60
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
        if self.name:
            buildah("rm", self.name)
            self.name = ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def buildah(*args: str) -> str:
    return subprocess.run(
        ["buildah", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def healthcheck(image: str) -> list[str]:
    """The image's HEALTHCHECK command (``CMD`` form) as an argv."""
    info = json.loads(buildah("inspect", "--type", "image", image))
    test = info["Docker"]["config"]["Healthcheck"]["Test"]
    if not test or test[0] != "CMD":
        raise SystemExit(f"{image}: no HEALTHCHECK in exec form ({test})")
    return list(test[1:])


def http(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_ready(container: Container, url: str, ready: set[str]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if not container.alive():
            raise SystemExit(f"{container.image} exited:\n{container.log_tail()}")
        try:
            code, body = http(url)
            if code == 200 and body.get("status") in ready:
                return time.monotonic() - started
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(
        f"{container.image} not ready in {READY_TIMEOUT_S:.0f} s:\n{container.log_tail()}"
    )


def jpeg(seed: int) -> str:
    image = Image.effect_mandelbrot((320, 240), (-2.0 + seed / 10, -1.2, 1.0, 1.2), 100)
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return base64.b64encode(out.getvalue()).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="dev")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgsim-smoke-"))
    kafka = KafkaBroker("kafka", work / "kafka.log", data_dir=work / "kafka", port=free_port())
    redis = RedisServer("redis", work / "redis.log", data_dir=work / "redis", port=free_port())
    containers: list[Container] = []
    try:
        kafka.start()
        redis.start()
        shared = {
            "KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
            "KAFKA__TOPIC_PREFIX": "smoke.",
            "KAFKA__PARTITIONS": "2",
        }
        ports = {"indexer": free_port(), "embedder": free_port(), "gateway": free_port()}
        env = {
            "indexer": {
                "INDEXER_MODEL__WEIGHTS": "random",
                "INDEXER_REDIS__URL": redis.url,
                "INDEXER_METRICS_PORT": str(ports["indexer"]),
            },
            "embedder": {
                "EMBEDDER_MODEL__WEIGHTS": "random",
                "EMBEDDER_METRICS_PORT": str(ports["embedder"]),
            },
            "gateway": {
                "GATEWAY_REDIS__URL": redis.url,
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(ports["gateway"]),
            },
        }
        for service in ("indexer", "embedder", "gateway"):
            prefix = service.upper()
            container = Container(
                f"localhost/imgsim-{service}:{args.tag}",
                {**{f"{prefix}_{k}": v for k, v in shared.items()}, **env[service]},
                work / f"{service}.log",
            )
            containers.append(container)
            info = json.loads(buildah("inspect", "--type", "image", container.image))
            entrypoint = info["Docker"]["config"]["Entrypoint"]
            container.start(entrypoint)
            port = ports[service]
            if service == "gateway":
                url, ready = f"http://127.0.0.1:{port}/api/v1/ready", {"ready"}
            else:
                url, ready = f"http://127.0.0.1:{port}/healthz", {"alive"}
            took = wait_ready(container, url, ready)
            check = container.exec(healthcheck(container.image))
            if check.returncode != 0:
                raise SystemExit(f"{container.image}: HEALTHCHECK failed:\n{check.stderr}")
            print(
                f"{container.image}: {' '.join(entrypoint)} ready in {took:.1f} s, healthcheck ok"
            )

        gateway = f"http://127.0.0.1:{ports['gateway']}/api/v1"
        code, body = http(
            f"{gateway}/index?wait=true", {"image_data": jpeg(1), "image_id": "smoke/1.jpg"}
        )
        if code != 202:
            raise SystemExit(f"index answered {code}: {body}")
        code, body = http(f"{gateway}/search", {"image_data": jpeg(1), "top_k": 1})
        results = body.get("results") if code == 200 else None
        if (
            not isinstance(results, list)
            or not results
            or results[0].get("image_id") != "smoke/1.jpg"
        ):
            raise SystemExit(f"search answered {code}: {body}")
        print(
            f"indexed smoke/1.jpg through the images and found it first ({results[0]['score']:.3f})"
        )
        return 0
    finally:
        for container in reversed(containers):
            container.stop()
        redis.stop()
        kafka.stop()


if __name__ == "__main__":
    sys.exit(main())
