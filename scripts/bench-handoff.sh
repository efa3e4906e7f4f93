#!/usr/bin/env bash
# Stage hand-off latency in embedded mode; prints the figures and records them in BENCHMARKS.md.
set -euo pipefail
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
cargo build --release --locked -p iris-dev
"$CARGO_TARGET_DIR/release/iris-dev" bench handoff --jobs "${JOBS:-60}" --record BENCHMARKS.md
