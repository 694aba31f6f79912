# syntax=docker/dockerfile:1
# The imgsim service images, one target each, built from the repository root (the uv
# workspace):
#   docker build --target gateway  --build-arg SERVICE=gateway  -t imgsim-gateway .
#   docker build --target indexer  --build-arg SERVICE=indexer  -t imgsim-indexer .
#   docker build --target embedder --build-arg SERVICE=embedder -t imgsim-embedder .
# (compose.yaml and `make images` pass both.) The builder and the runtime user are the
# same for all three, so they are written once; a target holds only what its service
# adds: its volume, its ports, its health check, its entrypoint. Each target checks that
# the venv it got holds its own entrypoint, so a --target without the matching SERVICE
# fails the build instead of shipping another service's venv.
# Multistage uv build as in astral-sh/uv-docker-example (multistage.Dockerfile).
#
# Base images are build arguments: the defaults are the public uv and python images; `make
# images` passes locally built Debian bases instead (infra/images), for machines that
# cannot pull from a registry. The venv's interpreter path must be the same in both.
#
# The embedder, CPU and GPU: the torch wheel comes from uv.lock. The PyPI Linux x86_64
# torch wheel bundles its CUDA libraries, so the same image runs on CUDA when the
# container gets a GPU (NVIDIA Container Toolkit; compose profile "gpu",
# EMBEDDER_MODEL__DEVICE=cuda) and on CPU otherwise. To base it on an NVIDIA image instead
# (e.g. for its driver-compat libraries), pass --build-arg RUNTIME_IMAGE=<a CUDA runtime
# image with Python 3.11 at /usr/local/bin/python3.11>. Measured (make images): 6.11 GB,
# of which the CUDA-only nvidia/ libraries are 3.06 GB and triton 1.0 GB; a CPU-only
# image, ~4 GB smaller, needs torch from the PyTorch CPU index in uv.lock.
ARG BUILDER_IMAGE=ghcr.io/astral-sh/uv:python3.11-bookworm-slim
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm

FROM ${BUILDER_IMAGE} AS builder
# gateway | indexer | embedder: the workspace member whose venv this builder makes.
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "pass --build-arg SERVICE=gateway|indexer|embedder" >&2; exit 1; }

# Compile bytecode, copy from the cache instead of linking (the cache is a mount),
# and use the image's interpreter, never a downloaded one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0

WORKDIR /app

# Third-party dependencies only, from the lockfile: this layer is rebuilt only when the
# lockfile or one of these pyproject.toml files changes (torch is most of the embedder).
# With --frozen uv needs just the root and the members this package depends on
# (imgsim-core); checked with `uv sync --dry-run --offline`. The manifests are copied,
# not bind-mounted, because ARG expansion in a mount's source differs between builders.
COPY pyproject.toml uv.lock /app/
COPY libs/core/pyproject.toml /app/libs/core/
COPY services/${SERVICE}/pyproject.toml /app/services/${SERVICE}/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package "imgsim-${SERVICE}"

# Then the workspace packages themselves, installed non-editable so that the virtual
# environment alone is copied into the runtime image.
COPY libs/core /app/libs/core
COPY services/${SERVICE} /app/services/${SERVICE}
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "imgsim-${SERVICE}"


# Runtime: the same Python as the builder (the venv's interpreter path must match).
FROM ${RUNTIME_IMAGE} AS runtime

RUN groupadd --system --gid 999 imgsim \
 && useradd --system --gid 999 --uid 999 --no-create-home --home-dir /app imgsim

COPY --from=builder --chown=imgsim:imgsim /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1

WORKDIR /app


# ----------------------------------------------------------------------------- gateway
# FastAPI; no torch.
FROM runtime AS gateway
RUN test -x /app/.venv/bin/imgsim-gateway

ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000

USER imgsim
EXPOSE 8000

# Liveness; readiness (Kafka, Redis, vector store) is GET /api/v1/ready.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"GATEWAY_PORT\", \"8000\")}/api/v1/health', timeout=2)"]

ENTRYPOINT ["imgsim-gateway"]


# ----------------------------------------------------------------------------- indexer
# FastStream; Qdrant Edge embedded, or a Qdrant server by URL.
FROM runtime AS indexer
RUN test -x /app/.venv/bin/imgsim-indexer \
 && mkdir -p /data \
 && chown imgsim:imgsim /data

# The embedded Qdrant Edge store lives on the /data volume (unused when
# INDEXER_QDRANT__URL names a Qdrant server). Metrics on :9102/metrics.
ENV INDEXER_QDRANT__PATH=/data/qdrant-edge \
    INDEXER_METRICS_PORT=9102 \
    INDEXER_METRICS_HOST=0.0.0.0

VOLUME ["/data"]
USER imgsim
EXPOSE 9102

# Liveness: the consumer loop runs and no handler hangs (imgsim_core.liveness).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"INDEXER_METRICS_PORT\"]}/healthz', timeout=2)"]

ENTRYPOINT ["imgsim-indexer"]


# ----------------------------------------------------------------------------- embedder
# FastStream + open_clip CLIP ViT-B/32 on torch (GPU) or OpenVINO (CPU).
FROM runtime AS embedder
RUN test -x /app/.venv/bin/imgsim-embedder \
 && mkdir -p /models \
 && chown imgsim:imgsim /models

# Pretrained weights are downloaded once into the /models volume (Hugging Face cache),
# and on a CPU converted once for OpenVINO into /models/openvino (and, with
# EMBEDDER_MODEL__QUANTIZATION=int8, quantized once there; mount your calibration images
# and point EMBEDDER_MODEL__CALIBRATION_DIR at them). Metrics on :9101/metrics.
ENV HF_HOME=/models \
    EMBEDDER_MODEL__CACHE_DIR=/models/openvino \
    EMBEDDER_METRICS_PORT=9101 \
    EMBEDDER_METRICS_HOST=0.0.0.0

VOLUME ["/models"]
USER imgsim
EXPOSE 9101

# Liveness: the consumer loop runs and no handler hangs (imgsim_core.liveness).
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"EMBEDDER_METRICS_PORT\"]}/healthz', timeout=2)"]

ENTRYPOINT ["imgsim-embedder"]
