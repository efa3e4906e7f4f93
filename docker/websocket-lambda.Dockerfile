# syntax=docker/dockerfile:1
#
# The notify service's WebSocket Lambda: iris-websocket-lambda (the $connect authorizer and the
# WebSocket routes, one binary), as the `bootstrap` executable of a provided.al2023 custom-runtime
# function. Not an image to run: the last stage holds only /bootstrap, and BuildKit exports it to a
# directory that the CDK app deploys (-c notifyLambdaCodePath=DIR). The build context is the
# repository root:
#
#   docker buildx build --platform linux/arm64 -f docker/websocket-lambda.Dockerfile \
#       --output type=local,dest=target/lambda/iris-websocket-lambda .
#
# scripts/build-websocket-lambda.sh runs exactly that (see docs/deploy.md).
#
# Built on Amazon Linux 2023, the OS of the provided.al2023 runtime, rather than on rust:*-bookworm:
# the binary links glibc dynamically, and one linked against bookworm's glibc 2.36 may need symbols
# that the runtime's glibc 2.34 lacks (the function would then fail at its first invocation with
# "GLIBC_2.3x not found"). Built against the runtime's own glibc, it cannot. (A static musl binary
# would avoid the question too, but needs a musl C toolchain for the C in aws-lc-sys and ring, and
# musl's allocator is slow for the AWS SDK.) The compiler is built for the target
# platform, natively: for linux/arm64 on an x86_64 machine, buildx runs this stage under QEMU
# emulation (much slower; an arm64 machine builds it natively).

FROM public.ecr.aws/amazonlinux/amazonlinux:2023 AS builder
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# gcc: the C parts of aws-lc-sys and ring; cmake and make: aws-lc-sys's fallback builder.
# Not version-pinned: the base image is pinned by tag (Amazon Linux 2023 keeps glibc 2.34 for its
# whole life), and its repository drops superseded versions, so exact pins would break the build.
# hadolint ignore=DL3041
RUN dnf install -y gcc cmake make \
    && dnf clean all \
    && rm -rf /var/cache/dnf
# Rust 1.95 as in service.Dockerfile's rust:1.95-bookworm, installed by rustup-init 1.28.2, which
# is checked against its sha256 (https://static.rust-lang.org/rustup/archive/1.28.2/<triple>/rustup-init.sha256).
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
RUN case "${TARGETARCH}" in \
        amd64) triple=x86_64-unknown-linux-gnu; sha256=20a06e644b0d9bd2fbdbfd52d42540bdde820ea7df86e92e533c073da0cdd43c ;; \
        arm64) triple=aarch64-unknown-linux-gnu; sha256=e3853c5a252fca15252d07cb23a1bdd9377a8c6f3efa01531109281ae47f841c ;; \
        *) echo "TARGETARCH must be amd64 or arm64 (got '${TARGETARCH}'): Lambda runs x86_64 and arm64 only" >&2; exit 1 ;; \
    esac \
    && curl --proto '=https' --tlsv1.2 -sSfo /tmp/rustup-init \
        "https://static.rust-lang.org/rustup/archive/1.28.2/${triple}/rustup-init" \
    && echo "${sha256}  /tmp/rustup-init" | sha256sum -c - \
    && chmod 0755 /tmp/rustup-init \
    && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain 1.95 \
    && rm /tmp/rustup-init \
    && rustc --version
WORKDIR /src
# Only what cargo needs; docker/websocket-lambda.Dockerfile.dockerignore keeps everything else out.
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY adapters adapters
COPY services services
COPY lambda lambda
COPY dev dev
COPY src src
COPY tests tests
# The registry cache is shared with the service images (same CARGO_HOME); the target directory is
# this image's own, one per architecture (its objects link against Amazon Linux's glibc). The binary
# is copied out of the cache mount in the same step, because a cache mount is not part of the stage.
RUN --mount=type=cache,id=iris-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=iris-lambda-cargo-target-${TARGETARCH},target=/src/target,sharing=locked \
    cargo build --release --locked -p iris-websocket-lambda \
    && install -D -m 0755 target/release/iris-websocket-lambda /out/bootstrap

# Only the executable: `--output type=local,dest=DIR` writes DIR/bootstrap.
FROM scratch
COPY --from=builder /out/bootstrap /bootstrap
