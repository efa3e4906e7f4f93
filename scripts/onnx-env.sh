#!/usr/bin/env bash
# Python venv with ONNX Runtime, onnx, numpy and nibabel, for the segmentation reference
# (bench/segment/reference.py), the model generator (scripts/models/make_models.py) and the
# segment service's ONNX Runtime shared library in tests.
#
#   scripts/onnx-env.sh install   create the venv and install the pinned packages (idempotent)
#   scripts/onnx-env.sh lib       print the absolute path of the venv's libonnxruntime.so.1.31.1:
#                                   ORT_DYLIB_PATH=$(scripts/onnx-env.sh lib)
#   scripts/onnx-env.sh python    print the venv's python: PY=$(scripts/onnx-env.sh python)
#
# IRIS_ONNX_VENV (default ~/.cache/iris-onnx-venv) holds the venv. All messages go to stderr.
set -euo pipefail

ORT_VERSION=1.31.1
ONNX_VERSION=1.23.2
NUMPY_VERSION=2.4.6
NIBABEL_VERSION=5.4.2
VENV="${IRIS_ONNX_VENV:-$HOME/.cache/iris-onnx-venv}"
PY="$VENV/bin/python"

log() { echo "onnx-env.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }

# "onnxruntime=1.31.1 onnx=... numpy=... nibabel=..." as installed, or nothing.
installed_versions() {
    "$PY" - 2>/dev/null <<'EOF' || true
import importlib.metadata as m
print(" ".join(f"{p}={m.version(p)}" for p in ("onnxruntime", "onnx", "numpy", "nibabel")))
EOF
}

wanted_versions() {
    echo "onnxruntime=$ORT_VERSION onnx=$ONNX_VERSION numpy=$NUMPY_VERSION nibabel=$NIBABEL_VERSION"
}

# Absolute path of the shared library inside the venv, or nothing.
lib_path() {
    "$PY" - "$ORT_VERSION" 2>/dev/null <<'EOF' || true
import os, sys, onnxruntime
p = os.path.join(os.path.dirname(os.path.abspath(onnxruntime.__file__)), "capi", f"libonnxruntime.so.{sys.argv[1]}")
if os.path.isfile(p):
    print(p)
EOF
}

install() {
    if [[ -x "$PY" && "$(installed_versions)" == "$(wanted_versions)" && -n "$(lib_path)" ]]; then
        log "$(wanted_versions) already installed in $VENV"
        return
    fi
    if [[ ! -x "$PY" ]]; then
        log "creating virtualenv $VENV"
        python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    log "installing $(wanted_versions) into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" "numpy==$NUMPY_VERSION" "nibabel==$NIBABEL_VERSION" >&2
    [[ "$(installed_versions)" == "$(wanted_versions)" ]] ||
        die "installed versions '$(installed_versions)' differ from '$(wanted_versions)'"
    [[ -n "$(lib_path)" ]] || die "libonnxruntime.so.$ORT_VERSION not found in the installed onnxruntime"
    log "installed $(installed_versions)"
}

lib() {
    [[ -x "$PY" ]] || die "no venv at $VENV (run: scripts/onnx-env.sh install)"
    local p
    p="$(lib_path)"
    [[ -n "$p" ]] || die "libonnxruntime.so.$ORT_VERSION not found in $VENV (run: scripts/onnx-env.sh install)"
    echo "$p"
}

python() {
    [[ -x "$PY" ]] || die "no venv at $VENV (run: scripts/onnx-env.sh install)"
    echo "$PY"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) [[ $# -eq 0 ]] || usage; install ;;
    lib) [[ $# -eq 0 ]] || usage; lib ;;
    python) [[ $# -eq 0 ]] || usage; python ;;
    *) usage ;;
esac
