#!/usr/bin/env bash
# Installs what `make up` and `make test` need on a Debian/Ubuntu machine without Docker:
# uv (from PyPI), the workspace's Python packages (uv.lock), redis-server, Java 17+, Maven
# and Chromium for the page's browser tests (apt, when missing), and the Apache Kafka
# broker jars (Maven Central). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; exit 1; fi; }

apt_packages=()
command -v redis-server >/dev/null || apt_packages+=(redis-server)
command -v java >/dev/null || apt_packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || apt_packages+=(maven)
command -v chromium >/dev/null || apt_packages+=(chromium)  # the page's browser tests
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing ${apt_packages[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
# The Debian package starts a redis-server service on 6379; the stack runs its own.

if command -v uv >/dev/null; then UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then UV=(python3 -m uv)
else
  echo "installing uv from PyPI"
  python3 -m pip install -q uv
  UV=(python3 -m uv)
fi

"${UV[@]}" sync --all-packages --frozen -q
"${UV[@]}" run -q imgsim-devstack fetch-kafka >/dev/null
