#!/usr/bin/env bash
# The long reliability runs of RELIABILITY.md, on the embedded backends and on a local moto server:
# chaos (20 studies, 50 SIGKILLs), duplicate and late delivery, the bad-input corpus, and a load of
# 200 studies. Each prints its report and records it in RELIABILITY.md; the script exits non-zero
# if any promise broke. Release build. Usage: bash scripts/reliability.sh [SUITE ...]
# (SUITE: chaos duplicates bad-inputs load; default all). CI runs the short versions (cargo test).
set -euo pipefail
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
cargo build --release --locked --workspace --bins
IRIS_DEV="$CARGO_TARGET_DIR/release/iris-dev"
bash scripts/moto.sh install
IRIS_MOTO_URL="$(bash scripts/moto.sh start)"
export IRIS_MOTO_URL
trap 'bash scripts/moto.sh stop "$IRIS_MOTO_URL" || true' EXIT

suites=("$@")
if [ ${#suites[@]} -eq 0 ]; then
    suites=(chaos duplicates bad-inputs load)
fi
failed=0
for suite in "${suites[@]}"; do
    case "$suite" in
        chaos) arguments=(chaos --studies 20 --kills 50 --seed "${CHAOS_SEED:-1}") ;;
        duplicates) arguments=(duplicates --studies 20) ;;
        bad-inputs) arguments=(bad-inputs) ;;
        load) arguments=(load --studies "${LOAD_STUDIES:-200}") ;;
        *) echo "unknown suite $suite (chaos duplicates bad-inputs load)" >&2; exit 2 ;;
    esac
    for backend in embedded moto; do
        echo "== $suite on $backend"
        if ! RUST_LOG=error "$IRIS_DEV" reliability "${arguments[@]}" --on "$backend" --record RELIABILITY.md; then
            echo "!! $suite on $backend broke a promise" >&2
            failed=1
        fi
    done
done
exit "$failed"
