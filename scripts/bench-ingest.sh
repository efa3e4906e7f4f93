#!/usr/bin/env bash
# Ingest speed and memory against the peers, measured in one run; prints a Markdown section and records
# it in BENCHMARKS.md between <!-- ingest:start --> and <!-- ingest:end -->.
#
#   NIfTI: a 512×512×300 int16 .nii.gz stored LPS → canonical RAS .nii.gz
#          iris ingest | nibabel (load + as_closest_canonical + save)
#          | SimpleITK (ReadImage + DICOMOrient + WriteImage with compression)
#   DICOM: the shared series (../shared/data/totalseg/example_ct_dicom, zipped for iris) → NIfTI
#          iris ingest | dicom2nifti (pylibjpeg-openjpeg decoding) | SimpleITK's GDCM series reader
#          and the same for a 300-slice series made of the shared series' slices (how memory scales)
#
# Each tool runs as its own process BENCH_REPS times (default 3, interleaved): median wall time, largest
# peak RSS. Outputs are checked against nibabel's / dicom2nifti's (same grid and voxels once both are RAS).
# Needs python3 with venv and the Rust toolchain; the peers go into a venv of their own.
#
# Environment:
#   IRIS_PEERS_VENV   venv for the peers (default ~/.cache/iris-peers-venv)
#   IRIS_BENCH_CACHE  where the generated input is kept (default ~/.cache/iris-bench)
#   BENCH_REPS        runs per tool (default 3)
#   BENCH_RECORD      file to record into (default BENCHMARKS.md at the repo root; "-" records nowhere)
#   BENCH_DICOM_SERIES  DICOM series folder (default ../shared/data/totalseg/example_ct_dicom)
#   IRIS_BIN          use this iris binary instead of building the release one (for trying the script)
#   BENCH_TIMER=python  time with the Python getrusage wrapper even where GNU time is installed
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$IRIS_ROOT"

say() { echo "bench-ingest: $*" >&2; }

REPS="${BENCH_REPS:-3}"
RECORD="${BENCH_RECORD:-$IRIS_ROOT/BENCHMARKS.md}"
VENV="${IRIS_PEERS_VENV:-$HOME/.cache/iris-peers-venv}"
CACHE="${IRIS_BENCH_CACHE:-$HOME/.cache/iris-bench}"
SERIES="${BENCH_DICOM_SERIES:-$IRIS_ROOT/../shared/data/totalseg/example_ct_dicom}"
PEERS="$IRIS_ROOT/scripts/bench_ingest_peers.py"
PINS=(
    numpy==2.4.6
    nibabel==5.4.2
    SimpleITK==2.5.7
    pydicom==3.0.2
    pylibjpeg==2.1.0
    pylibjpeg-openjpeg==2.6.0
    dicom2nifti==2.6.2
)
if ! [[ "$REPS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: BENCH_REPS must be a positive integer, not '$REPS'" >&2
    exit 2
fi

# --- peers: a venv with pinned versions (env.sh: ensure_peers_venv; sets PY) ---
ensure_peers_venv "$VENV" "the peers (nibabel, SimpleITK, dicom2nifti)" "${PINS[@]}"

# --- iris: the release build ---
if [[ -n "${IRIS_BIN:-}" ]]; then
    IRIS="$IRIS_BIN"
    [[ -x "$IRIS" ]] || { echo "error: IRIS_BIN=$IRIS is not an executable" >&2; exit 2; }
    say "using IRIS_BIN=$IRIS (not building)"
    IRIS_DESC="iris binary \`$IRIS\` (given by IRIS_BIN; modified $(date -u -r "$IRIS" '+%Y-%m-%d %H:%M UTC'))"
else
    require_cargo
    say "building the release iris (cargo build --release --locked --bin iris)"
    cargo build --release --locked --bin iris
    IRIS="$CARGO_TARGET_DIR/release/iris"
    IRIS_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ "$IRIS_REV" != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then
        IRIS_REV="$IRIS_REV+uncommitted changes"
    fi
    IRIS_DESC="iris at \`$IRIS_REV\` (release build, $(rustc --version 2>/dev/null || echo 'rustc unknown'))"
fi

# --- inputs ---
mkdir -p "$CACHE"
INPUT="$CACHE/ct-512x512x300-i16-lps-v1.nii.gz"
if [[ ! -s "$INPUT" ]]; then
    say "making the 512×512×300 int16 test volume (once) → $INPUT"
    "$PY" "$PEERS" make-input "$INPUT.tmp.nii.gz"
    mv "$INPUT.tmp.nii.gz" "$INPUT"
else
    say "reusing the test volume $INPUT"
fi
NIFTI_RAW=$((512 * 512 * 300 * 2))

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-ingest.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs"

HAVE_DICOM=0
DICOM_RAW=""
DICOM300_RAW=""
if [[ -d "$SERIES" ]] && [[ -n "$(ls -A "$SERIES")" ]]; then
    HAVE_DICOM=1
    SERIES="$(cd "$SERIES" && pwd)"
    say "zipping the DICOM series $SERIES for iris"
    "$PY" "$PEERS" make-zip "$SERIES" "$WORK/series.zip"
    # Raw volume: rows × columns × slices × 2 bytes (int16), read from the series itself.
    DICOM_RAW="$("$PY" - "$SERIES" <<'EOF'
import os, sys, pydicom
d = sys.argv[1]
files = [os.path.join(d, n) for n in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, n))]
first = pydicom.dcmread(files[0], stop_before_pixels=True)
print(int(first.Rows) * int(first.Columns) * len(files) * 2)
EOF
)"
    LONG="$CACHE/long-series-300-v1"
    if [[ ! -s "$LONG/IM00300.dcm" ]]; then
        say "making a 300-slice series from the shared one's slices (once) → $LONG"
        rm -rf "$LONG" "$LONG.tmp"
        "$PY" "$PEERS" make-long-series "$SERIES" "$LONG.tmp" 300
        mv "$LONG.tmp" "$LONG"
    fi
    "$PY" "$PEERS" make-zip "$LONG" "$WORK/long-series.zip"
    DICOM300_RAW=$((DICOM_RAW * 300 / $(find "$SERIES" -maxdepth 1 -type f | wc -l)))
else
    say "NOTE: no DICOM series at $SERIES; skipping the DICOM part (set BENCH_DICOM_SERIES to point at one)"
fi

# --- timing: GNU time for peak RSS when present, else a small Python wrapper around getrusage ---
TIMER=python-rusage
if [[ "${BENCH_TIMER:-}" != python ]] && [[ -x /usr/bin/time ]] && /usr/bin/time -f "%e %M" -o "$WORK/probe" true 2>/dev/null \
    && [[ "$(tail -n 1 "$WORK/probe")" =~ ^[0-9.]+\ [0-9]+$ ]]; then
    TIMER=gnu-time
fi
say "timing with $TIMER; runs per tool: $REPS"
LOAD_START="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown)"
if awk -v l="$LOAD_START" -v n="$(nproc)" 'BEGIN { exit !(l + 0 > n / 2) }'; then
    say "WARNING: load average $LOAD_START on $(nproc) cores before starting; other work will skew the timings"
fi

now() { if [[ -n "${EPOCHREALTIME:-}" ]]; then echo "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi; }

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
FAILED=0
# measure JOB TOOL REP CMD...: one run; appends "job tool rep wall_s peak_rss_kib ok|failed own_s" to RESULTS.
measure() {
    local job=$1 tool=$2 rep=$3
    shift 3
    local log="$WORK/logs/$job-$tool-$rep.log" tf="$WORK/time.out" wall rss status=ok
    rm -f "$tf"
    if [[ $TIMER == gnu-time ]]; then
        local t0 t1
        t0="$(now)"
        /usr/bin/time -f "%e %M" -o "$tf" "$@" >"$log" 2>&1 || status=failed
        t1="$(now)"
        # %e has 10 ms resolution; the shell clock around it is finer (GNU time adds ~1 ms).
        wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
        rss="$(tail -n 1 "$tf" | awk '{ print $2 }')"
    else
        "$PY" "$PEERS" measure "$tf" -- "$@" >"$log" 2>&1 || status=failed
        read -r wall rss <"$tf"
    fi
    # iris prints its own timing ("... in 1.234 s → DIR"): from before reading the input to after writing.
    local own=""
    if [[ $tool == iris ]]; then
        own="$(sed -n 's/.* in \([0-9.]*\) s → .*/\1/p' "$log" | tail -n 1)"
    fi
    if [[ $status == failed ]]; then
        FAILED=1
        say "  $job/$tool run $rep FAILED; its output:"
        tail -n 20 "$log" | sed 's/^/    | /' >&2
    else
        say "  $job/$tool run $rep: ${wall} s, $((rss / 1024)) MiB peak RSS${own:+ (own timer ${own} s)}"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$job" "$tool" "$rep" "$wall" "${rss:-0}" "$status" "$own" >>"$RESULTS"
}

cat "$INPUT" >/dev/null # page cache warm for every tool alike
OUT="$WORK/out"
mkdir -p "$OUT"
for rep in $(seq 1 "$REPS"); do
    say "NIfTI run $rep/$REPS"
    rm -rf "$OUT/iris-nifti"
    measure nifti iris "$rep" "$IRIS" ingest "$INPUT" --out "$OUT/iris-nifti"
    measure nifti nibabel "$rep" "$PY" "$PEERS" nibabel "$INPUT" "$OUT/nibabel.nii.gz"
    measure nifti simpleitk-nifti "$rep" "$PY" "$PEERS" simpleitk-nifti "$INPUT" "$OUT/simpleitk-nifti.nii.gz"
done
if [[ $HAVE_DICOM == 1 ]]; then
    for rep in $(seq 1 "$REPS"); do
        say "DICOM run $rep/$REPS"
        rm -rf "$OUT/iris-dicom"
        measure dicom iris "$rep" "$IRIS" ingest "$WORK/series.zip" --out "$OUT/iris-dicom"
        measure dicom dicom2nifti "$rep" "$PY" "$PEERS" dicom2nifti "$SERIES" "$OUT/dicom2nifti.nii.gz"
        measure dicom simpleitk-dicom "$rep" "$PY" "$PEERS" simpleitk-dicom "$SERIES" "$OUT/simpleitk-dicom.nii.gz"
        rm -rf "$OUT/iris-dicom300"
        measure dicom300 iris "$rep" "$IRIS" ingest "$WORK/long-series.zip" --out "$OUT/iris-dicom300"
        measure dicom300 dicom2nifti "$rep" "$PY" "$PEERS" dicom2nifti "$LONG" "$OUT/dicom2nifti-300.nii.gz"
        measure dicom300 simpleitk-dicom "$rep" "$PY" "$PEERS" simpleitk-dicom "$LONG" "$OUT/simpleitk-dicom-300.nii.gz"
    done
fi

# --- correctness: same grid and voxels as the reference peer, both brought to RAS ---
CHECKS=()
check() { # check DESCRIPTION REF OUT...
    local what=$1
    shift
    local missing=0 f
    for f in "$@"; do [[ -s "$f" ]] || missing=1; done
    if [[ $missing == 1 ]]; then
        say "check skipped (an output is missing): $what"
        CHECKS+=("$what: NOT checked, an output is missing")
        FAILED=1
    elif "$PY" "$PEERS" compare "$@" >&2; then
        say "check passed: $what"
        CHECKS+=("$what: same shape, affine and voxel values")
    else
        say "check FAILED: $what"
        CHECKS+=("$what: MISMATCH")
        FAILED=1
    fi
}
say "checking the outputs"
check "iris and SimpleITK vs nibabel on the NIfTI" \
    "$OUT/nibabel.nii.gz" "$OUT/iris-nifti/volume.nii.gz" "$OUT/simpleitk-nifti.nii.gz"
if [[ $HAVE_DICOM == 1 ]]; then
    check "iris and SimpleITK vs dicom2nifti on the DICOM series" \
        "$OUT/dicom2nifti.nii.gz" "$OUT/iris-dicom/volume.nii.gz" "$OUT/simpleitk-dicom.nii.gz"
    check "iris and SimpleITK vs dicom2nifti on the 300-slice series" \
        "$OUT/dicom2nifti-300.nii.gz" "$OUT/iris-dicom300/volume.nii.gz" "$OUT/simpleitk-dicom-300.nii.gz"
fi

# --- report ---
COMMAND="scripts/bench-ingest.sh"
[[ -n "${BENCH_REPS:-}" ]] && COMMAND="BENCH_REPS=$BENCH_REPS $COMMAND"
[[ -n "${IRIS_BIN:-}" ]] && COMMAND="IRIS_BIN=$IRIS_BIN $COMMAND"
VERSIONS="$("$PY" "$PEERS" versions)"
CPU="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
MEM="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)"
META="$WORK/meta.json"
(
    export VERSIONS CPU MEM LOAD_START COMMAND IRIS_DESC TIMER REPS NIFTI_RAW DICOM_RAW DICOM300_RAW HAVE_DICOM SERIES
    NPROC="$(nproc)"
    DATE="$(date -u +%Y-%m-%d)"
    CHECKS_TEXT="$(printf '%s\n' "${CHECKS[@]}")"
    export NPROC DATE CHECKS_TEXT
    "$PY" - "$META" <<'EOF'
import json, os, sys
e = os.environ
versions = dict(line.split(" ", 1) for line in e["VERSIONS"].splitlines() if line.strip())
raw = {"nifti": int(e["NIFTI_RAW"])}
skipped = {}
if e["HAVE_DICOM"] == "1":
    raw["dicom"] = int(e["DICOM_RAW"])
    raw["dicom300"] = int(e["DICOM300_RAW"])
else:
    skipped["dicom"] = f"no series at {e['SERIES']}"
    skipped["dicom300"] = skipped["dicom"]
peers = "python scripts/bench_ingest_peers.py"
commands = [
    "iris, NIfTI: `iris ingest ct.nii.gz --out DIR` (writes `DIR/volume.nii.gz` and `DIR/ingest.json`)",
    f"nibabel: `{peers} nibabel ct.nii.gz out.nii.gz` — `nib.load`, `nib.as_closest_canonical`, `nib.save`",
    f"SimpleITK, NIfTI: `{peers} simpleitk-nifti ct.nii.gz out.nii.gz` — `ReadImage`, `DICOMOrient(img, \"RAS\")`, "
    "`WriteImage(..., useCompression=True)`",
    "iris, DICOM: `iris ingest series.zip --out DIR` (the series' files zipped flat, deflate)",
    f"dicom2nifti: `{peers} dicom2nifti SERIES_DIR out.nii.gz` — `dicom_series_to_nifti(..., reorient_nifti=True)`, "
    "JPEG 2000 decoded by pylibjpeg-openjpeg (pydicom's other decoders removed)",
    f"SimpleITK, DICOM: `{peers} simpleitk-dicom SERIES_DIR out.nii.gz` — `ImageSeriesReader` with "
    "`GetGDCMSeriesFileNames`, `DICOMOrient(img, \"RAS\")`, `WriteImage(..., useCompression=True)`",
    "the 300-slice series is made by `scripts/bench_ingest_peers.py make-long-series SERIES_DIR OUT 300`: the "
    "shared series' 20 JPEG 2000 slices cycled along the slice normal at its own spacing (pixel data untouched); "
    "iris reads it zipped, the peers from its folder",
    "input: `ct.nii.gz` is made by `scripts/bench_ingest_peers.py make-input` (deterministic CT-like phantom, "
    "0.8×0.8×1.5 mm, LPS affine, nibabel's default gzip level); SERIES_DIR is `shared/data/totalseg/example_ct_dicom`",
]
meta = {
    "date": e["DATE"], "nproc": e["NPROC"], "cpu": e["CPU"] or "unknown CPU", "mem": e["MEM"] or "unknown memory",
    "command": e["COMMAND"], "iris": e["IRIS_DESC"], "timer": e["TIMER"], "load": e["LOAD_START"],
    "reps": int(e["REPS"]), "versions": versions, "raw_bytes": raw, "skipped": skipped,
    "checks": [c for c in e["CHECKS_TEXT"].splitlines() if c], "commands": commands,
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f)
EOF
)
SECTION="$WORK/section.md"
"$PY" "$PEERS" report "$RESULTS" "$META" >"$SECTION" || FAILED=1
echo
cat "$SECTION"
echo

if [[ $FAILED == 1 ]]; then
    say "a run or a check failed (see above); NOT recording"
    exit 1
fi
if [[ "$RECORD" == "-" ]]; then
    say "BENCH_RECORD=-: not recording"
else
    "$PY" "$PEERS" record "$RECORD" "$SECTION"
    say "recorded in $RECORD"
fi
