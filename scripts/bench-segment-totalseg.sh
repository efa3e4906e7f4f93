#!/usr/bin/env bash
# Segmentation against what users would run instead: the TotalSegmentator CLI and nnU-Net's own
# predictor (nnUNetPredictor, which the CLI calls), each a whole process on this machine, the same
# weights, the same input, the same threads.
#
# Weights: TotalSegmentator's `total` task with random weights in TotalSegmentator's own folder
# layout (scripts/make-totalsegmentator-weights.sh OUT full: its real network, 6 stages, 32→320
# features, 128³ patches), so its CLI runs offline; iris runs the same networks after
# `iris model import totalsegmentator`. Input: the shared CT upsampled to 512×512×300.
#
#   1. TotalSegmentator CLI (`TotalSegmentator -i CT -o OUT --ml -d cpu`) against `iris segment CT
#      --model total/task.json`: end to end, resampling to 1.5 mm and back included.
#   2. nnUNetPredictor (bench/segment/totalseg_bench.py predict: the five parts in one process, set
#      up as TotalSegmentator sets it up, merged with TotalSegmentator's class maps) against
#      `iris segment` on the same CT already at 1.5 mm (resampled once by TotalSegmentator's own
#      code): the network sees equal input on both sides, so their labels are compared.
#   3. the 3 mm fast model: `TotalSegmentator --fast` against `iris segment --fast`.
# Wall time and peak memory of each process tree (workers included, sampled every 100 ms): the
# summed proportional set size (shared pages split among the processes sharing them), and the
# largest single process's resident set (what GNU time reports).
# Prints a Markdown section and records it in BENCHMARKS.md between <!-- segment-totalseg:start -->
# and <!-- segment-totalseg:end -->. About 40 minutes on 2 cores.
#
# Environment:
#   BENCH_THREADS   threads for every side (default: the number of cores; TotalSegmentator's CLI
#                   always takes them all on a CPU)
#   BENCH_RECORD    file to record into (default BENCHMARKS.md; "-" records nowhere)
#   BENCH_CACHE     where the weights, imported models and CTs are kept (default ~/.cache/iris-bench)
#   BENCH_SIZE    full (default: TotalSegmentator's networks) or small (a quick check of the script)
#   BENCH_SKIP      space-separated runs to skip: ts iris predictor predictor32 iris15 fast (their results
#                   already in BENCH_WORK are reported)
#   BENCH_WORK      where the runs' outputs and figures are kept (default: a new folder in /tmp)
set -euo pipefail
# shellcheck source=env.sh source-path=SCRIPTDIR disable=SC1091
source "$(dirname "$0")/env.sh"
require_cargo
cd "$IRIS_ROOT"

say() { echo "bench-segment-totalseg: $*" >&2; }

THREADS="${BENCH_THREADS:-$(nproc)}"
RECORD="${BENCH_RECORD:-$IRIS_ROOT/BENCHMARKS.md}"
CACHE="${BENCH_CACHE:-$HOME/.cache/iris-bench}"
SKIP=" ${BENCH_SKIP:-} "
SHARED_CT="$IRIS_ROOT/../shared/data/totalseg/example_ct_sm.nii.gz"
[[ -f "$SHARED_CT" ]] || { say "error: $SHARED_CT is absent (the ../shared kit must be beside the repo)"; exit 2; }

bash scripts/totalseg-env.sh install
PY="$(bash scripts/totalseg-env.sh python)"
BIN="$(dirname "$PY")"
HELPER="$IRIS_ROOT/bench/segment/totalseg_bench.py"
use_onnx_env
export IRIS_NNUNET_PYTHON="$PY"

say "building the release iris"
cargo build --release --locked --bin iris >&2
IRIS="$CARGO_TARGET_DIR/release/iris"
COMMIT="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- || COMMIT="$COMMIT+uncommitted changes"

mkdir -p "$CACHE"
SIZE="${BENCH_SIZE:-full}"
WEIGHTS="$CACHE/totalseg-weights-$SIZE-v1"
MODELS="$CACHE/totalseg-models-$SIZE-v1"
CT="$CACHE/shared-ct-512x512x300-v1.nii.gz"
CT15="$CACHE/shared-ct-512x512x300-v1-ts1.5mm.nii.gz"
if [[ ! -f "$WEIGHTS/.complete" ]]; then
    say "making TotalSegmentator-shaped random weights ($SIZE) in $WEIGHTS"
    rm -rf "$WEIGHTS"
    bash scripts/make-totalsegmentator-weights.sh "$WEIGHTS" "$SIZE" >&2
    touch "$WEIGHTS/.complete"
fi
if [[ ! -f "$MODELS/.complete" ]]; then
    say "importing them with iris model import totalsegmentator into $MODELS"
    rm -rf "$MODELS"
    "$IRIS" model import totalsegmentator "$WEIGHTS" --out "$MODELS" >&2
    touch "$MODELS/.complete"
fi
TASK="$MODELS/total/task.json"
[[ -f "$TASK" ]] || { say "error: no $TASK after the import"; exit 1; }
[[ -s "$CT" ]] || "$PY" "$HELPER" make-ct "$SHARED_CT" "$CT" >&2
[[ -s "$CT15" ]] || "$PY" "$HELPER" resample "$CT" "$CT15" >&2

# Results stay in BENCH_WORK (default: a fresh folder), so runs can be redone one at a time.
WORK="${BENCH_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/bench-totalseg.XXXXXX")}"
mkdir -p "$WORK"
say "results in $WORK"
# TotalSegmentator offline: weights from the folder above, no usage statistics sent.
mkdir -p "$WORK/totalseg-home"
echo '{"totalseg_id": "iris-bench", "send_usage_stats": false, "prediction_counter": 0}' >"$WORK/totalseg-home/config.json"
export TOTALSEG_HOME_DIR="$WORK/totalseg-home" TOTALSEG_WEIGHTS_PATH="$WEIGHTS"
export IRIS_ORT_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"

measure() {
    local name="$1"
    shift
    say "$name: $*"
    "$PY" "$HELPER" measure "$WORK/$name.json" -- "$@" >"$WORK/$name.log" 2>&1 || {
        tail -30 "$WORK/$name.log" >&2
        say "error: $name failed"
        exit 1
    }
    say "$name: $(cat "$WORK/$name.json")"
}
skipped() { [[ "$SKIP" == *" $1 "* ]]; }

skipped ts || measure ts "$BIN/TotalSegmentator" -i "$CT" -o "$WORK/ts.nii.gz" --ml -d cpu
skipped iris || measure iris "$IRIS" segment "$CT" --out "$WORK/iris" --model "$TASK" --device cpu
skipped predictor || measure predictor "$PY" "$HELPER" predict "$WEIGHTS" "$CT15" "$WORK/predictor.nii.gz" --threads "$THREADS"
skipped predictor32 || measure predictor32 "$PY" "$HELPER" predict "$WEIGHTS" "$CT15" "$WORK/predictor32.nii.gz" \
    --threads "$THREADS" --float32-accumulation
skipped iris15 || measure iris15 "$IRIS" segment "$CT15" --out "$WORK/iris15" --model "$TASK" --device cpu
if ! skipped fast; then
    measure ts_fast "$BIN/TotalSegmentator" -i "$CT" -o "$WORK/ts_fast.nii.gz" --ml -d cpu --fast
    measure iris_fast "$IRIS" segment "$CT" --out "$WORK/iris_fast" --model "$TASK" --device cpu --fast
fi
compare() {
    if [[ -f "$1" && -f "$2" ]]; then "$PY" "$HELPER" compare "$1" "$2"; else echo null; fi
}
compare "$WORK/iris15/labels.nii.gz" "$WORK/predictor.nii.gz" >"$WORK/agree15.json"
compare "$WORK/iris15/labels.nii.gz" "$WORK/predictor32.nii.gz" >"$WORK/agree15_32.json"
compare "$WORK/predictor.nii.gz" "$WORK/predictor32.nii.gz" >"$WORK/agree_nnunet_16_32.json"
compare "$WORK/iris/labels.nii.gz" "$WORK/ts.nii.gz" >"$WORK/agree_ts.json"
compare "$WORK/iris_fast/labels.nii.gz" "$WORK/ts_fast.nii.gz" >"$WORK/agree_fast.json"

"$PY" - "$WORK" "$RECORD" "$CT" "$CT15" "$THREADS" "$COMMIT" "$(rustc --version)" <<'PYTHON'
import datetime, importlib.metadata as m, json, os, re, sys
import nibabel as nib
work, record, ct, ct15, threads, commit, rustc = sys.argv[1:8]
def run(name):
    path = f"{work}/{name}.json"
    return json.load(open(path)) if os.path.exists(path) else None
def agree(name):
    return json.loads(open(f"{work}/{name}.json").read())
def cell(r, key, fmt):
    return fmt.format(r[key]) if r else "not run"
def memory(r):
    return f"{r['peak_mib']:.0f} MiB ({r['largest_process_mib']:.0f})" if r else "not run"
def ratio(a, b, key):
    return f"{a[key] / b[key]:.2f}×" if a and b else "–"
ts, iris, pred, iris15, ts_fast, iris_fast = map(run, ["ts", "iris", "predictor", "iris15", "ts_fast", "iris_fast"])
a15, ats, afast = agree("agree15"), agree("agree_ts"), agree("agree_fast")
a15_32, a_nn = agree("agree15_32"), agree("agree_nnunet_16_32")
shape = nib.load(ct).shape
zooms = ", ".join(f"{z:.3f}" for z in nib.load(ct).header.get_zooms()[:3])
shape15 = "×".join(map(str, nib.load(ct15).shape))
rows = [
    ("1. end to end, 512×512×300 CT", "TotalSegmentator CLI", ts, iris),
    (f"2. on the 1.5 mm CT ({shape15})", "nnUNetPredictor", pred, iris15),
    ("3. `--fast` (3 mm), 512×512×300 CT", "TotalSegmentator CLI `--fast`", ts_fast, iris_fast),
]
lines = [
    f"Measured by `scripts/bench-segment-totalseg.sh` on {datetime.date.today()} ({os.cpu_count()} cores, "
    f"load average {os.getloadavg()[0]:.2f} at the end): iris at `{commit}` (release, {rustc}, ONNX Runtime 1.31.1 CPU), "
    f"TotalSegmentator {m.version('TotalSegmentator')}, nnunetv2 {m.version('nnunetv2')}, torch {m.version('torch')}, "
    f"{threads} threads on every side, each run once as its own process. Weights: TotalSegmentator's `total` task "
    f"(five 1.5 mm parts, 3 mm fast model) with random weights in its own folder layout "
    f"(`scripts/make-totalsegmentator-weights.sh OUT full`), imported by `iris model import totalsegmentator`. "
    f"Input: `example_ct_sm.nii.gz` upsampled to {'×'.join(map(str, shape))} ({zooms} mm). "
    f"Peak memory: the whole process tree's summed proportional set size (PSS: pages shared between "
    f"forked workers counted once), sampled every 100 ms; in brackets the largest single process's "
    f"peak resident set, what GNU time reports.",
    "",
    "| run | peer | peer wall | iris wall | peer / iris | peer peak | iris peak | iris / peer memory |",
    "|---|---|--:|--:|--:|--:|--:|--:|",
]
for title, peer_name, peer, ours in rows:
    lines.append(
        f"| {title} | {peer_name} | {cell(peer, 'wall_s', '{:.1f} s')} | {cell(ours, 'wall_s', '{:.1f} s')} | "
        f"{ratio(peer, ours, 'wall_s')} | {memory(peer)} | {memory(ours)} | "
        f"{ratio(ours, peer, 'peak_mib')} |")
def agreement(a):
    return f"{a['equal_percent']:.3f} % of {a['voxels']} voxels" if a else "not compared"
lines += [
    "",
    f"Labels. The network sees the same array on both sides in every run: in run 2 both are given the CT "
    f"at 1.5 mm, and in runs 1 and 3 iris resamples as TotalSegmentator does (the card's `resampling: "
    f"totalsegmentator`, integer for integer). Iris against nnUNetPredictor as it is (float16 sums): "
    f"{agreement(a15)}; against the same predictor with its two sums in float32 (run 2's input, labels "
    f"only, `predictor32`): {agreement(a15_32)}; nnU-Net's own float16 run against its float32 run: "
    f"{agreement(a_nn)}. End to end against the CLI (run 1): {agreement(ats)}; `--fast` (run 3): "
    f"{agreement(afast)}. Random weights put many voxels near a tie between classes, where rounding "
    f"decides; trained weights have far fewer.",
]
section = "\n".join(lines)
print(section)
if record != "-":
    text = open(record).read()
    block = f"<!-- segment-totalseg:start -->\n{section}\n<!-- segment-totalseg:end -->"
    if "<!-- segment-totalseg:start -->" in text:
        text = re.sub(r"<!-- segment-totalseg:start -->.*?<!-- segment-totalseg:end -->", lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Segment: iris against the TotalSegmentator CLI and nnUNetPredictor (CPU)\n\n" + block + "\n"
    open(record, "w").write(text)
PYTHON
