# Sourced by the other scripts: one place for the build settings every script shares.
# The cargo target directory lives outside the clone so repeated runs (and CI) build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/iris-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
IRIS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export IRIS_ROOT

# Fails with a clear message when the Rust toolchain is missing (it is the one thing not installed here).
require_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install Rust (https://rustup.rs) and run this again." >&2
        exit 2
    fi
    ensure_cmake
}

# The project's ONNX venv (scripts/onnx-env.sh: ONNX Runtime 1.31.1 from PyPI, onnx, numpy, nibabel),
# installed if needed (idempotent); sets ONNX_PY to its python and exports ORT_DYLIB_PATH, its
# ONNX Runtime library.
use_onnx_env() {
    bash "$IRIS_ROOT/scripts/onnx-env.sh" install
    # shellcheck disable=SC2034 # read by the script that sources this file
    ONNX_PY="$(bash "$IRIS_ROOT/scripts/onnx-env.sh" python)"
    ORT_DYLIB_PATH="$(bash "$IRIS_ROOT/scripts/onnx-env.sh" lib)"
    export ORT_DYLIB_PATH
}

# CMake builds CharLS (the JPEG-LS codec the DICOM reader links). Where none is installed, a pinned
# one comes from PyPI into a virtualenv of its own (idempotent); its bin/ goes on PATH.
CMAKE_VERSION=4.4.4
ensure_cmake() {
    if command -v cmake >/dev/null 2>&1; then
        return
    fi
    local venv="${IRIS_CMAKE_VENV:-$HOME/.cache/iris-cmake-venv}"
    if [[ ! -x "$venv/bin/cmake" ]]; then
        echo "env.sh: installing cmake $CMAKE_VERSION from PyPI into $venv (it builds the JPEG-LS codec)" >&2
        python3 -m venv "$venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "cmake==$CMAKE_VERSION" >&2
    fi
    export PATH="$venv/bin:$PATH"
}

# ensure_peers_venv VENV WHAT PIN...: a Python venv at VENV holding the pinned PINs (name==version)
# of a benchmark's peers, created and filled if needed (idempotent: nothing is installed when every
# pin is already satisfied). WHAT says what the peers are for, in the error when python3 is
# missing. Sets PY to the venv's python.
ensure_peers_venv() {
    local venv="$1" what="$2"
    shift 2
    if ! command -v python3 >/dev/null 2>&1; then
        echo "error: python3 not found; it is needed for $what." >&2
        exit 2
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "creating the peers' venv at $venv" >&2
        if ! python3 -m venv "$venv"; then
            echo "error: 'python3 -m venv' failed; install the venv module (Debian/Ubuntu: apt-get install python3-venv)." >&2
            exit 2
        fi
    fi
    PY="$venv/bin/python"
    if "$PY" - "$@" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
    then
        echo "peers already installed in $venv" >&2
    else
        echo "installing the peers into $venv: $*" >&2
        "$PY" -m pip install --quiet --disable-pip-version-check "$@"
    fi
}
