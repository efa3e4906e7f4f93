#!/usr/bin/env bash
# WebSocket notification latency in embedded mode (job state recorded → subscriber receives it);
# prints the figures and records them in BENCHMARKS.md. JOBS studies (default 100).
set -euo pipefail
# shellcheck source=env.sh source-path=SCRIPTDIR disable=SC1091
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
cargo build --release --locked -p iris-dev
"$CARGO_TARGET_DIR/release/iris-dev" bench notify-latency --jobs "${JOBS:-100}" --record BENCHMARKS.md
