#!/usr/bin/env bash
# Installs what `make up` and `make test` need on a Debian/Ubuntu machine without Docker:
# uv (from PyPI), the workspace's Python packages (uv.lock), redis-server, Java 17+, Maven,
# Chromium for the page's browser tests and wrk for `make bench` (apt, when missing),
# promtool (out of Debian's prometheus package), kustomize where kubectl is missing (Go
# module proxy), and the Apache Kafka broker jars (Maven Central). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; exit 1; fi; }

apt_packages=()
command -v redis-server >/dev/null || apt_packages+=(redis-server)
command -v java >/dev/null || apt_packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || apt_packages+=(maven)
command -v chromium >/dev/null || apt_packages+=(chromium)  # the page's browser tests
command -v wrk >/dev/null || apt_packages+=(wrk)  # make bench: cached search and accept rates
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing ${apt_packages[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
# The Debian package starts a redis-server service on 6379; the stack runs its own.

# promtool checks the Prometheus config and runs the alert rules' unit tests. It is taken
# out of Debian's prometheus package rather than installed with it, which would also set
# up and start a Prometheus server on :9090.
if ! command -v promtool >/dev/null; then
  echo "installing promtool (from Debian's prometheus package) into /usr/local/bin"
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq prometheus 2>/dev/null ||
    { as_root apt-get update -qq && apt-get download -qq prometheus; })
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  as_root install -m 0755 "$work/x/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$work"
fi

# The manifest tests render infra/k8s with kustomize: `kubectl kustomize`, or else a
# kustomize binary, built here from the Go module proxy (Debian's kubectl, package
# kubernetes-client 1.20, bundles kustomize 2: too old for `labels` and `components`).
# v5.5.0 is the kustomize of kubectl 1.32, and renders the same.
if ! kubectl kustomize infra/k8s/qdrant-server-scaled >/dev/null 2>&1 &&
  ! kustomize build infra/k8s/qdrant-server-scaled >/dev/null 2>&1; then
  go_cmd=$(command -v go || echo /usr/local/go/bin/go)
  if [ -x "$go_cmd" ]; then
    echo "installing kustomize v5.5.0 (go install) into /usr/local/bin"
    as_root env GOBIN=/usr/local/bin "$go_cmd" install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
  else
    echo "neither kubectl nor kustomize (nor Go to build it): the manifest tests will fail" >&2
  fi
fi

if command -v uv >/dev/null; then UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then UV=(python3 -m uv)
else
  echo "installing uv from PyPI"
  python3 -m pip install -q uv
  UV=(python3 -m uv)
fi

"${UV[@]}" sync --all-packages --frozen -q
"${UV[@]}" run -q imgsim-devstack fetch-kafka >/dev/null
