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
}
