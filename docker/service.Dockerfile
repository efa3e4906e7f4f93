# syntax=docker/dockerfile:1
#
# Image of one CPU queue worker: ingest, mesh or notify. (Segment has its own image with the CUDA
# runtime and ONNX Runtime: segment-gpu.Dockerfile.) The build context is the repository root:
#
#   docker build -f docker/service.Dockerfile --build-arg SERVICE=ingest -t iris-ingest .
#
# The CDK app builds the same images at deploy time (see docker/README.md).

FROM rust:1.95-bookworm AS builder
ARG SERVICE
# CMake builds CharLS, the JPEG-LS codec the ingest service's DICOM reader links statically.
# Not version-pinned: the base image is pinned by tag (see the runtime stage's note).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what cargo needs; docker/service.Dockerfile.dockerignore keeps everything else out.
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY adapters adapters
COPY services services
COPY lambda lambda
COPY dev dev
COPY src src
COPY tests tests
# The registry and target directories are BuildKit cache mounts, so rebuilding after a source
# change recompiles only the workspace crates. The binary is copied out of the cache mount in the
# same step, because a cache mount is not part of the image.
RUN --mount=type=cache,id=iris-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=iris-cargo-target,target=/src/target,sharing=locked \
    case "${SERVICE}" in \
        ingest|mesh|notify) ;; \
        *) echo "SERVICE must be ingest, mesh or notify (got '${SERVICE}'); segment: segment-gpu.Dockerfile" >&2; exit 1 ;; \
    esac \
    && cargo build --release --locked -p iris --bin "iris-${SERVICE}" \
    && install -D -m 0755 "target/release/iris-${SERVICE}" "/out/iris-${SERVICE}"

FROM debian:bookworm-slim
ARG SERVICE
# ca-certificates: TLS to the AWS endpoints. Versions are not pinned: bookworm-slim is pinned by
# tag, and Debian removes superseded package versions from its mirrors (security updates), so an
# exact pin would break the build without making it more reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/iris --create-home \
        --shell /usr/sbin/nologin iris
COPY --from=builder /out/iris-${SERVICE} /usr/local/bin/
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/iris-healthcheck
# A fixed entry point name for every service (an exec-form ENTRYPOINT cannot expand $SERVICE);
# the binary keeps its own name, which is what the health check looks for as PID 1.
RUN ln -s "iris-${SERVICE}" /usr/local/bin/iris-worker
ENV IRIS_SERVICE=${SERVICE} \
    IRIS_LOG_FORMAT=json \
    RUST_LOG=info
# The embedded backend's default data directory (./.iris) lands in the iris user's home.
WORKDIR /var/lib/iris
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/iris-healthcheck"]
# The worker is PID 1 and handles SIGTERM itself: it stops receiving, finishes in-flight messages
# and exits (unfinished ones reappear on the queue after the visibility timeout).
ENTRYPOINT ["/usr/local/bin/iris-worker"]
