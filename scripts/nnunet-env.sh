#!/usr/bin/env bash
# Python venv with nnU-Net v2 and PyTorch, for importing nnU-Net and TotalSegmentator models
# (`iris model import`: the ONNX export runs nnU-Net's own code), for the fixtures that build
# nnU-Net trained-model folders, and for nnU-Net's own predictor in the parity tests. Only the
# importer needs it: no service ever runs Python. About 6.5 GB (PyPI's torch wheel brings CUDA).
#
#   scripts/nnunet-env.sh install   create the venv and install the pinned packages (idempotent)
#   scripts/nnunet-env.sh python    print the venv's python: IRIS_NNUNET_PYTHON=$(scripts/nnunet-env.sh python)
#
# IRIS_NNUNET_VENV (default ~/.cache/iris-nnunet-venv) holds the venv. All messages go to stderr.
set -euo pipefail

TORCH_VERSION=2.15.0
NNUNET_VERSION=2.8.1
ONNX_VERSION=1.23.2
ONNXSCRIPT_VERSION=0.7.2
ORT_VERSION=1.31.1
VENV="${IRIS_NNUNET_VENV:-$HOME/.cache/iris-nnunet-venv}"
PY="$VENV/bin/python"

log() { echo "nnunet-env.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }

installed_versions() {
    "$PY" - 2>/dev/null <<'PYTHON' || true
import importlib.metadata as m
packages = ("torch", "nnunetv2", "onnx", "onnxscript", "onnxruntime")
print(" ".join(f"{p}={m.version(p).split('+')[0]}" for p in packages))
PYTHON
}

wanted_versions() {
    echo "torch=$TORCH_VERSION nnunetv2=$NNUNET_VERSION onnx=$ONNX_VERSION onnxscript=$ONNXSCRIPT_VERSION onnxruntime=$ORT_VERSION"
}

install() {
    if [[ -x "$PY" && "$(installed_versions)" == "$(wanted_versions)" ]]; then
        log "$(wanted_versions) already installed in $VENV"
        return
    fi
    if [[ ! -x "$PY" ]]; then
        log "creating virtualenv $VENV"
        python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    log "installing $(wanted_versions) into $VENV (several GB; a few minutes)"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        "torch==$TORCH_VERSION" "nnunetv2==$NNUNET_VERSION" "onnx==$ONNX_VERSION" \
        "onnxscript==$ONNXSCRIPT_VERSION" "onnxruntime==$ORT_VERSION" >&2
    [[ "$(installed_versions)" == "$(wanted_versions)" ]] ||
        die "installed versions '$(installed_versions)' differ from '$(wanted_versions)'"
    log "installed $(installed_versions)"
}

python() {
    [[ -x "$PY" ]] || die "no venv at $VENV (run: scripts/nnunet-env.sh install)"
    echo "$PY"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) install ;;
    python) python ;;
    *) usage ;;
esac
