# The builder stage's base: the local Debian base plus uv (from its PyPI wheel, pinned by
# build.sh), standing in for ghcr.io/astral-sh/uv:python3.11-bookworm-slim.
ARG BASE_IMAGE=localhost/imgsim-base:bookworm
FROM ${BASE_IMAGE}
COPY uv /usr/local/bin/uv
# The build machine's own CA certificates (build.sh copies /usr/local/share/ca-certificates),
# for networks that reach PyPI through a TLS-inspecting proxy; builder stage only, never
# in the service images. uv reads SSL_CERT_FILE.
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null && uv --version
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
