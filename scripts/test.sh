#!/usr/bin/env bash
# Every test: formatting, lints, and the whole workspace's tests (debug build), the AWS adapters'
# against a moto server this script installs (pinned, in a virtualenv) and starts on a free port,
# the ONNX Runtime tests against the pinned PyPI wheel (installed in a venv, with the Python
# reference of the sliding window), the nnU-Net importer's tests against nnU-Net's own code
# (nnunetv2 and torch from PyPI, in their own venv), the CDK app's tests with an offline `cdk synth`, and the
# Dockerfiles' lint.
# A bare `cargo test --workspace` skips what needs moto, ONNX Runtime, nnU-Net or the binaries (with
# a message); here IRIS_TEST_STRICT=1 makes each of those a failure instead, so nothing is skipped
# silently. Tests that need ../shared/data skip with a message when it is absent.
set -euo pipefail
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binaries the reliability suites run as separate processes)"
cargo build --workspace --bins --locked
echo "== moto server (the AWS wire protocols, offline) for the AWS adapters' tests"
bash scripts/moto.sh install
IRIS_MOTO_URL="$(bash scripts/moto.sh start)"
export IRIS_MOTO_URL
trap 'bash scripts/moto.sh stop "$IRIS_MOTO_URL" || true' EXIT
echo "== ONNX Runtime 1.31.1 (the PyPI wheel's shared library) and the Python reference's venv"
use_onnx_env
IRIS_ONNX_PYTHON="$ONNX_PY"
# Tests fail, rather than skip, when moto, ONNX Runtime or the binaries are missing.
export IRIS_ONNX_PYTHON IRIS_TEST_STRICT=1
echo "== nnU-Net v2 and PyTorch (pinned, in their own venv) for the model importer and nnU-Net's predictor"
bash scripts/nnunet-env.sh install
IRIS_NNUNET_PYTHON="$(bash scripts/nnunet-env.sh python)"
export IRIS_NNUNET_PYTHON
echo "== cargo test"
cargo test --workspace --locked
echo "== CDK app: tests and an offline cdk synth"
bash scripts/cdk-test.sh
echo "== Dockerfiles: lint"
bash scripts/lint-docker.sh
