# syntax=docker/dockerfile:1
#
# Meshward images (deploy/k8s/README.md, "Images"):
#
#   docker build -t meshward/meshward:dev .                           # default target: `meshward`
#   docker build --target demo-agent -t meshward/demo-agent:dev .     # the Python demo agent
#
# Base images are pinned by tag. Production builds should pin them by digest
# too (`FROM image:tag@sha256:...`); the digests could not be resolved where
# this file was written (no registry access), so none are recorded here.

# --- build: the release binary (fat LTO, see [profile.release]) -------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cargo registry and the target directory are BuildKit caches, so a
# rebuild reuses downloaded crates and compiled dependencies. A cache mount is
# not part of the image: the binary is copied out to a real path afterwards.
# protoc comes from the protoc-bin-vendored crate; the TLS stack is rustls, so
# no system libraries beyond glibc are needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/cache/target,sharing=locked \
    CARGO_TARGET_DIR=/cache/target cargo build --release --locked --bin meshward \
    && install -D -m 0755 /cache/target/release/meshward /src/target/release/meshward

# --- meshward: control plane, dataplane and demo skills in one binary -------
# distroless/cc: glibc and libgcc, which the binary links against; no shell.
FROM gcr.io/distroless/cc-debian12:nonroot AS meshward
COPY --from=build /src/target/release/meshward /usr/local/bin/meshward
# 65532 is distroless' `nonroot`; numeric so that runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/meshward"]

# --- demo-agent: the Python SDK and the example agents ----------------------
# Not a service: it idles, and the README runs an example in it with
# `kubectl exec ... -- python /app/examples/customer_support.py`. It runs as
# 65532, the same numeric user as the meshward image and the manifests.
FROM python:3.11-slim-bookworm AS demo-agent
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
# The examples need only the SDK's base install (httpx); the grpc and mcp
# extras are for other agents. The SDK's dependency range is in its
# pyproject.toml; pip resolves it at build time.
# A read-write bind mount: pip builds the package in its source tree, and
# the source never becomes an image layer.
RUN --mount=type=bind,source=sdk/python,target=/tmp/sdk,rw \
    pip install --no-cache-dir /tmp/sdk
COPY examples /app/examples
USER 65532:65532
CMD ["sleep", "infinity"]
