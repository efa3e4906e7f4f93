#!/usr/bin/env bash
# A TotalSegmentator weights folder for its `total` task, laid out as TotalSegmentator lays it out
# (Dataset291…295, 297 with their trainers, old-style plans, dataset.json naming TotalSegmentator's
# classes) but with random weights, made by nnU-Net's own code: what `iris model import
# totalsegmentator` reads, for tests, benchmarks and trying the importer without the real weights.
#
#   scripts/make-totalsegmentator-weights.sh OUT [small|full]
#
# small (default): small networks (3 stages, 8→32 features, 32³ patches), quick on a CPU.
# full: TotalSegmentator's own network (6 stages, 32→320 features, 128³ patches), ~120 MB a model.
# Installs nnU-Net's venv if needed (scripts/nnunet-env.sh).
set -euo pipefail
out="${1:?usage: $0 OUT [small|full]}"
size="${2:-small}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/nnunet-env.sh" install
python="$(bash "$root/scripts/nnunet-env.sh" python)"
"$python" "$root/adapters/nnunet/python/nnunet_fixture.py" totalsegmentator "$out" \
    --template "$root/services/segment/tasks/totalsegmentator/task.json" --size "$size"
