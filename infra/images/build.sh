#!/usr/bin/env bash
# Builds the three service images with buildah (no Docker engine needed), then smoke-runs
# each of them (infra/images/smoke.py) unless IMAGES_SMOKE=0.
#
#   IMAGE_BASE=local   (default) base images made here from Debian packages: a debootstrap
#                      root filesystem with python3.11, and the same plus uv from PyPI.
#                      Needs root, debootstrap and buildah (apt-get install buildah debootstrap).
#   IMAGE_BASE=public  the Dockerfile's defaults, pulled from their registries.
#   IMAGE_TAG          tag of the service images (default: dev).
#   IMAGES_WORK        where the root filesystem is made (default: /var/tmp/imgsim-images).
#
# Builds run with --isolation chroot, which works where containers cannot be started
# (no user namespaces, setrlimit refused); the format is docker's, so HEALTHCHECK is kept.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE_BASE=${IMAGE_BASE:-local}
IMAGE_TAG=${IMAGE_TAG:-dev}
IMAGES_WORK=${IMAGES_WORK:-/var/tmp/imgsim-images}
BASE=localhost/imgsim-base:bookworm
BUILDER=localhost/imgsim-base-uv:bookworm
UV_VERSION=$(python3 -m uv --version 2>/dev/null | awk '{print $2}')
UV_VERSION=${UV_VERSION:-0.13.9}
bud=(buildah bud --isolation chroot --format docker --layers)

for tool in buildah; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install $tool)" >&2; exit 1; }
done

build_args=()
if [ "$IMAGE_BASE" = local ]; then
  mkdir -p "$IMAGES_WORK"
  if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "debootstrap is missing" >&2; exit 1; }
    rootfs="$IMAGES_WORK/rootfs"
    if [ ! -x "$rootfs/usr/bin/python3.11" ]; then
      echo "making a Debian bookworm root filesystem in $rootfs (debootstrap, ~1 min)"
      rm -rf "$rootfs"
      debootstrap --variant=minbase --include=python3.11,ca-certificates,tzdata \
        bookworm "$rootfs" http://deb.debian.org/debian >"$IMAGES_WORK/debootstrap.log"
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    fi
    ctx="$IMAGES_WORK/base"
    mkdir -p "$ctx"
    tar -C "$rootfs" --numeric-owner -cf "$ctx/rootfs.tar" .
    "${bud[@]}" -f infra/images/base.Dockerfile -t "$BASE" "$ctx"
    rm -f "$ctx/rootfs.tar"
  fi
  if ! buildah inspect --type image "$BUILDER" >/dev/null 2>&1; then
    ctx="$IMAGES_WORK/builder"
    rm -rf "$ctx" && mkdir -p "$ctx/wheel"
    echo "uv $UV_VERSION from PyPI for the builder base"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
      -d "$ctx/wheel" "uv==$UV_VERSION"
    python3 -m zipfile -e "$ctx"/wheel/uv-*.whl "$ctx/wheel/x"
    install -m 0755 "$ctx"/wheel/x/uv-*.data/scripts/uv "$ctx/uv"
    mkdir -p "$ctx/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ctx/ca-certificates/" 2>/dev/null || true
    "${bud[@]}" -f infra/images/builder.Dockerfile --build-arg BASE_IMAGE="$BASE" -t "$BUILDER" "$ctx"
  fi
  build_args=(--build-arg BUILDER_IMAGE="$BUILDER" --build-arg RUNTIME_IMAGE="$BASE")
elif [ "$IMAGE_BASE" != public ]; then
  echo "IMAGE_BASE must be local or public, not $IMAGE_BASE" >&2; exit 1
fi

for service in gateway indexer embedder; do
  echo "building imgsim-$service:$IMAGE_TAG"
  "${bud[@]}" "${build_args[@]}" --target "$service" --build-arg SERVICE="$service" \
    -t "imgsim-$service:$IMAGE_TAG" .
done
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E "imgsim-(gateway|indexer|embedder|base)"

if [ "${IMAGES_SMOKE:-1}" != 0 ]; then
  python3 -m uv run python infra/images/smoke.py --tag "$IMAGE_TAG"
fi
