#!/usr/bin/env bash
# Stage hand-off latency on the AWS backends against a local moto server (S3 notifications to SQS,
# SQS long polling, DynamoDB, EventBridge); prints the figures and records them in BENCHMARKS.md.
set -euo pipefail
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
cargo build --release --locked --bin iris -p iris-dev
IRIS="$CARGO_TARGET_DIR/release/iris"
bash scripts/moto.sh install
MOTO_URL="$(bash scripts/moto.sh start)"
trap 'bash scripts/moto.sh stop "$MOTO_URL" || true' EXIT
export AWS_ENDPOINT_URL="$MOTO_URL" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
prefix="bench$(date +%s)"
export IRIS_BACKEND=aws IRIS_BUCKET="$prefix-data" IRIS_QUEUE_PREFIX="$prefix-" IRIS_JOBS_TABLE="$prefix-jobs" \
    IRIS_CONNECTIONS_TABLE="$prefix-connections" IRIS_EVENT_BUS="$prefix-bus"
"$IRIS" aws bootstrap >/dev/null
"$CARGO_TARGET_DIR/release/iris-dev" bench handoff --jobs "${JOBS:-50}" --record BENCHMARKS.md
