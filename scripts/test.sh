#!/usr/bin/env bash
# Every test: formatting, lints, and the whole workspace's tests (debug build).
# Tests that need ../shared/data skip with a message when it is absent.
set -euo pipefail
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the service binaries the end-to-end tests run as separate processes)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
