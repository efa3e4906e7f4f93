#!/usr/bin/env bash
# Segmentation memory on long scans: 118 classes at 1.5 mm with 128³ patches on 512×512 CTs of 300
# and 800 slices, to show the sliding window's memory does not grow with the scan's length
# (docs/segmentation.md, "Memory bound"). The window runs a 118-output 1x1x1 convolution
# (`make_models.py pointwise`), so what is measured is the window's own memory and ONNX Runtime's
# output buffer, not a network's activations; BENCH_UNET=1 also runs the benchmark U-Net on the
# 800-slice CT (about 190 tiles: half an hour on 2 cores). Each run is its own process under GNU
# time (wall, peak RSS). Prints a Markdown section and records it in BENCHMARKS.md between
# <!-- segment-memory:start --> and <!-- segment-memory:end -->.
#
# Environment:
#   BENCH_UNET        1: also run the benchmark U-Net on the 800-slice CT (default 0)
#   BENCH_THREADS     ONNX Runtime intra-op threads (default: the number of cores)
#   BENCH_RECORD      file to record into (default BENCHMARKS.md; "-" records nowhere)
#   IRIS_BENCH_CACHE  where the generated CTs are kept (default ~/.cache/iris-bench)
#   IRIS_MODELS_CACHE where the generated models are kept (default ~/.cache/iris-models)
set -euo pipefail
# shellcheck source=env.sh source-path=SCRIPTDIR disable=SC1091
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"

say() { echo "bench-segment-memory: $*" >&2; }

UNET="${BENCH_UNET:-0}"
THREADS="${BENCH_THREADS:-$(nproc)}"
RECORD="${BENCH_RECORD:-$IRIS_ROOT/BENCHMARKS.md}"
CACHE="${IRIS_BENCH_CACHE:-$HOME/.cache/iris-bench}"
MODELS="${IRIS_MODELS_CACHE:-$HOME/.cache/iris-models}"

use_onnx_env
PY="$ONNX_PY"
POINTWISE="$MODELS/pointwise-118-1.5mm"
if [[ ! -f "$POINTWISE/card.json" ]]; then
    say "generating the pointwise model into $POINTWISE"
    "$PY" scripts/models/make_models.py pointwise --out "$POINTWISE" >&2
fi
U_NET="$MODELS/unet-1.5mm"
if [[ "$UNET" == 1 && ! -f "$U_NET/card.json" ]]; then
    say "generating the benchmark U-Net into $U_NET"
    "$PY" scripts/models/make_models.py unet --out "$U_NET" --spacing 1.5 1.5 1.5 >&2
fi

say "building the release iris and segment_bench"
cargo build --release --locked --bin iris >&2
cargo build --release --locked -p iris-onnxruntime --example segment_bench >&2
IRIS="$CARGO_TARGET_DIR/release/iris"
SEGMENT="$CARGO_TARGET_DIR/release/examples/segment_bench"

# The inputs: the ingest benchmark's CT-like phantom (0.8 × 0.8 × 1.5 mm, stored LPS), made
# once per length and put in canonical orientation by iris ingest, as the pipeline does.
mkdir -p "$CACHE"
canonical() {
    local slices="$1" raw="$CACHE/ct-512x512x$1-i16-lps-v1.nii.gz" out="$CACHE/ct-512x512x$1-canonical-v1"
    if [[ ! -s "$raw" ]]; then
        say "making the 512×512×$slices test volume (once) → $raw"
        "$PY" scripts/bench_ingest_peers.py make-input "$raw.tmp.nii.gz" "$slices" >&2
        mv "$raw.tmp.nii.gz" "$raw"
    fi
    if [[ ! -s "$out/volume.nii.gz" ]]; then
        rm -rf "$out"
        "$IRIS" ingest "$raw" --out "$out" >&2
    fi
    echo "$out/volume.nii.gz"
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.tsv"
run() {
    local name="$1" volume="$2" model="$3"
    say "$name"
    /usr/bin/time -f "%e %M" -o "$WORK/$name.time" "$SEGMENT" --volume "$volume" --model "$model" \
        --out "$WORK/$name.nii.gz" --threads "$THREADS" --device cpu >"$WORK/$name.json"
    printf '%s\t%s\t%s\t%s\n' "$name" "$model" "$(cat "$WORK/$name.time")" "$(tail -n 1 "$WORK/$name.json")" >>"$RESULTS"
    say "$name: $(cat "$WORK/$name.time") (wall s, peak KiB)"
}
CT300="$(canonical 300)"
CT800="$(canonical 800)"
run "300 slices, pointwise" "$CT300" "$POINTWISE"
run "800 slices, pointwise" "$CT800" "$POINTWISE"
if [[ "$UNET" == 1 ]]; then
    run "800 slices, U-Net" "$CT800" "$U_NET"
fi

"$PY" - "$RESULTS" "$RECORD" "$THREADS" "$(git rev-parse --short HEAD)" <<'PYTHON'
import datetime, json, math, os, re, sys
results, record, threads, commit = sys.argv[1:5]
rows = []
for line in open(results):
    name, model, times, report = line.rstrip("\n").split("\t")
    wall, kib = times.split()
    report = json.loads(report)
    card = json.load(open(os.path.join(model, "card.json")))
    classes = len(card["labels"]) + 1
    pz, py, px = card["patch_size"]
    z, y, x = report["model_grids_zyx"][0]
    padded = [max(z, pz), max(y, py), max(x, px)]
    window = classes * pz * padded[1] * padded[2] * 4
    whole = classes * padded[0] * padded[1] * padded[2] * 4
    dims = report["canonical_dims_xyz"]
    rows.append(
        f"| {name} | {'×'.join(map(str, dims))} | {z}×{y}×{x} | {report['tiles']} | "
        f"{window / 2**20:.0f} MiB | {whole / 2**20:.0f} MiB | {int(kib) / 1024:.0f} MiB | {float(wall):.1f} s |"
    )
lines = [
    f"Measured by `scripts/bench-segment-memory.sh` on {datetime.date.today()} ({os.cpu_count()} cores, load average "
    f"{os.getloadavg()[0]:.2f} at the end): iris at `{commit}`, the release `segment_bench` example on ONNX Runtime "
    f"1.31.1's CPU execution provider with {threads} intra-op threads, each run its own process (GNU time). "
    "Inputs: the ingest benchmark's CT-like phantom (0.8 × 0.8 × 1.5 mm) with 300 and 800 slices, made canonical "
    "by `iris ingest`. Models: 118 outputs at 1.5 mm, 128³ patches, tile step 0.5; `pointwise` is one 1×1×1 "
    "convolution (the window's own memory), `U-Net` the benchmark U-Net.",
    "",
    "| run | canonical CT (x×y×z) | model grid (z×y×x) | tiles | Z-window accumulator (C × p_z × Y × X floats) "
    "| whole-volume accumulator (C × Z × Y × X floats) | peak RSS | wall |",
    "|---|---|---|---|---|---|---|---|",
    *rows,
]
section = "\n".join(lines)
print(section)
if record != "-":
    text = open(record).read()
    block = f"<!-- segment-memory:start -->\n{section}\n<!-- segment-memory:end -->"
    if "<!-- segment-memory:start -->" in text:
        text = re.sub(r"<!-- segment-memory:start -->.*?<!-- segment-memory:end -->", lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Segment: memory on long scans (CPU)\n\n" + block + "\n"
    open(record, "w").write(text)
PYTHON
