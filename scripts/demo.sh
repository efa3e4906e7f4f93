#!/usr/bin/env bash
# The main job on a fresh machine: build `iris` (release) and run the whole pipeline on a
# synthetic CT phantom. Outputs land in ./iris-out/demo/. Idempotent: run it again at will.
set -euo pipefail
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
cargo build --release --locked --bin iris
IRIS="$CARGO_TARGET_DIR/release/iris"
"$IRIS" demo --out iris-out/demo "$@"
echo
echo "The iris binary is $IRIS (try: $IRIS --help)."
