#!/usr/bin/env bash
# The embedder's GPU benchmark and GPU tests on a machine that has CUDA PyTorch but no
# network to install from (a cluster's CUDA image, an air-gapped GPU server).
#
#   bash bench/gpu-offline.sh wheels [PYTHON_VERSION]  # here, with PyPI: fills .gpu-wheels/
#   bash bench/gpu-offline.sh run [OUT_DIR]            # there, in a copy of this checkout
#
# `wheels` downloads what the embedder's model code needs beyond such an image (PyTorch,
# torchvision, numpy, Pillow, timm, huggingface_hub, prometheus_client, pytest):
# open_clip, ftfy, wcwidth, regex, pydantic and typing_extensions, at uv.lock's versions, built
# for the target's Python (default 3.12) on x86-64 Linux; ~6 MB.
#
# `run` installs those wheels into a temporary folder ahead of the image's packages
# (nothing of the image is changed), then runs bench/gpu.py (under 5 minutes on one GPU;
# GPU_BENCH_ARGS adds its options) and the `gpu` tests, and writes both outputs to
# OUT_DIR (default: gpu-run/). PYTHON names the interpreter (default: python3). Without
# a CUDA device it says so and runs the benchmark's short CPU smoke run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.gpu-wheels
carried="open-clip-torch|ftfy|wcwidth|regex|pydantic|pydantic-core|annotated-types|typing-inspection|typing-extensions"

case "${1:-}" in
wheels)
    version="${2:-3.12}"
    rm -rf "$wheels" && mkdir -p "$wheels"
    uv export --frozen --no-hashes --no-emit-workspace --package imgsim-embedder \
        | grep -E "^(${carried})==" | cut -d' ' -f1 >"$wheels/requirements.txt"
    uvx --from pip pip download -q --no-deps --only-binary=:all: -d "$wheels" \
        --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -r "$wheels/requirements.txt"
    echo "$(find "$wheels" -name '*.whl' | wc -l) wheels in $wheels/ for Python $version"
    ;;
run)
    out="${2:-gpu-run}"
    python="${PYTHON:-python3}"
    mkdir -p "$out"
    site="$(mktemp -d)"
    trap 'rm -rf "$site"' EXIT
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site:$PWD/libs/core/src:$PWD/services/embedder/src"
    export PYTHONUNBUFFERED=1
    args=()
    if ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        echo "no CUDA device: the benchmark's CPU smoke run only" | tee "$out/gpu-bench.txt"
        args=(--device cpu --seconds 0.5 --batches 2,4 --images 16)
    fi
    # shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of options
    "$python" bench/gpu.py "${args[@]}" ${GPU_BENCH_ARGS:-} 2>&1 | tee -a "$out/gpu-bench.txt"
    # --noconftest: the suite's conftest starts Kafka and Redis, which these tests never use.
    "$python" -m pytest -m gpu --noconftest -p no:cacheprovider -o addopts="-ra" \
        services/embedder/tests/test_embedder_model.py tests/test_gpu_bench.py \
        2>&1 | tee "$out/gpu-tests.txt"
    ;;
*)
    sed -n '2,17p' "$0" | cut -c3-
    exit 2
    ;;
esac
