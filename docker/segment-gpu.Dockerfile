# syntax=docker/dockerfile:1
#
# Image of the segment worker for NVIDIA GPUs (ECS on g5/g4dn): iris-segment on the CUDA 12
# runtime with cuDNN 9, plus ONNX Runtime's shared libraries (CUDA execution provider) taken from
# the PyPI onnxruntime-gpu wheel. ORT_DYLIB_PATH points at them for the `ort` crate's
# load-dynamic mode; ONNX models from the object store then run on the CUDA execution provider
# (the classical model, used when no model is configured, runs on the CPU). The build context is
# the repository root:
#
#   docker build -f docker/segment-gpu.Dockerfile -t iris-segment-gpu .
#
# CUDA and ONNX Runtime must agree: onnxruntime-gpu wheels up to 1.26 on PyPI link CUDA 12
# (libcudart.so.12); from 1.27 they link CUDA 13, which needs a CUDA 13 base image and an NVIDIA
# driver >= 580 on the host. The ONNX Runtime version must also provide the C API version the
# segment service's `ort` crate is built for. The ldd check below fails the build on a mismatch.
# The CUDA path was proven with 1.31.1 (CUDA 13) on an H100 (BENCHMARKS.md); this image keeps the
# CUDA 12 build for hosts whose driver predates 580.

FROM rust:1.95-bookworm AS builder
# CMake builds CharLS, the JPEG-LS codec of the DICOM reader: the service binaries are one package
# (the root `iris`), so building iris-segment builds the other services' libraries too.
# Not version-pinned: the base image is pinned by tag (see service.Dockerfile).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what cargo needs; docker/segment-gpu.Dockerfile.dockerignore keeps everything else out.
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY adapters adapters
COPY services services
COPY lambda lambda
COPY dev dev
COPY src src
COPY tests tests
RUN --mount=type=cache,id=iris-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=iris-cargo-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p iris --bin iris-segment \
    && install -D -m 0755 target/release/iris-segment /out/iris-segment

# ONNX Runtime's libraries from the wheel, checked against its sha256 (pip --require-hashes).
# Only the runtime, the shared provider bridge and the CUDA provider are kept: the TensorRT
# provider would need TensorRT, and the Python bindings are not used.
FROM python:3.11-slim-bookworm AS onnxruntime
ARG ONNXRUNTIME_VERSION=1.26.0
ARG ONNXRUNTIME_WHEEL_SHA256=4fa231294c2643911d2a7d16469c4808b0bdcdc4b5f4063d3a53744ce25b683a
WORKDIR /tmp/onnxruntime
RUN printf 'onnxruntime-gpu==%s --hash=sha256:%s\n' "${ONNXRUNTIME_VERSION}" "${ONNXRUNTIME_WHEEL_SHA256}" > requirements.txt \
    && pip download --no-cache-dir --no-deps --require-hashes --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
        --dest wheel -r requirements.txt \
    && python -m zipfile -e wheel/onnxruntime_gpu-*.whl unpacked \
    && install -d /opt/onnxruntime/lib \
    && install -m 0644 \
        "unpacked/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION}" \
        unpacked/onnxruntime/capi/libonnxruntime_providers_shared.so \
        unpacked/onnxruntime/capi/libonnxruntime_providers_cuda.so \
        /opt/onnxruntime/lib/ \
    && ln -s "libonnxruntime.so.${ONNXRUNTIME_VERSION}" /opt/onnxruntime/lib/libonnxruntime.so \
    && rm -rf /tmp/onnxruntime

# Ubuntu 24.04 rather than 22.04: the binary is built on Debian bookworm (glibc 2.36), and a newer
# glibc at run time is always compatible, while 22.04's 2.35 would work only as long as no
# dependency happens to use a 2.36 symbol.
FROM nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# ca-certificates: TLS to the AWS endpoints. Not version-pinned: the base image is pinned by tag,
# and Ubuntu removes superseded versions from its mirrors, so an exact pin would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/iris --create-home \
        --shell /usr/sbin/nologin iris
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY --from=builder /out/iris-segment /usr/local/bin/
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/iris-healthcheck
RUN ln -s iris-segment /usr/local/bin/iris-worker
# Fail the build now rather than the first job later: every library (and glibc symbol version)
# that the binary and ONNX Runtime's CUDA provider link must resolve in this image. The one
# exception is libcuda.so.1, the driver library, which the NVIDIA container runtime mounts from
# the host when the container starts.
RUN missing="$(ldd /usr/local/bin/iris-segment /opt/onnxruntime/lib/libonnxruntime.so \
        /opt/onnxruntime/lib/libonnxruntime_providers_cuda.so 2>&1 \
        | grep 'not found' | grep -v 'libcuda\.so\.1' || true)" \
    && if [ -n "${missing}" ]; then echo "unresolved libraries: ${missing}" >&2; exit 1; fi
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so \
    IRIS_SERVICE=segment \
    IRIS_LOG_FORMAT=json \
    RUST_LOG=info
WORKDIR /var/lib/iris
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/iris-healthcheck"]
ENTRYPOINT ["/usr/local/bin/iris-worker"]
