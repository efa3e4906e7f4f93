#!/usr/bin/env bash
# Mesh speed and memory against VTK, measured in one run; prints a Markdown section and records it in
# BENCHMARKS.md between <!-- mesh:start --> and <!-- mesh:end -->.
#
#   input: ../shared/data/totalseg/example_seg.nii.gz (TotalSegmentator's label map, 122×101×30, 41 labels)
#          upsampled by nearest neighbour to 512×512×300 uint8 (same world extent), made once into the
#          cache with a stats JSON naming and colouring its labels (from total_labels.json)
#   iris:  iris mesh labels.nii.gz --out DIR --stats stats.json --reduction-percent 75
#          → scene.glb, model.obj, model.mtl, manifest.json
#   VTK:   nibabel read → vtkSurfaceNets3D (every label present, smoothing with VTK's defaults, triangles)
#          → vtkQuadricDecimation (target reduction 0.75) → vtkGLTFWriter (.glb) and vtkOBJWriter
#
# Each tool runs as its own process, interleaved: iris BENCH_REPS times (default 3), VTK BENCH_VTK_REPS
# times (default 1: its decimation alone takes about a minute): median wall time, largest peak RSS.
# Triangle counts and GLB/OBJ sizes come from each tool's output. Checked in the same run: iris meshed
# every label, both GLBs are well-formed binary glTF, and both OBJs span the same world box (RAS mm).
# Needs python3 with venv and the Rust toolchain (unless IRIS_BIN); VTK goes into the peers' venv.
#
# Environment:
#   IRIS_PEERS_VENV   venv for the peers (default ~/.cache/iris-peers-venv, shared with bench-ingest.sh)
#   IRIS_BENCH_CACHE  where the generated input is kept (default ~/.cache/iris-bench)
#   BENCH_REPS        iris runs (default 3)
#   BENCH_VTK_REPS    VTK runs (default 1)
#   BENCH_RECORD      file to record into (default BENCHMARKS.md at the repo root; "-" records nowhere)
#   BENCH_SEG         the label map to upsample (default ../shared/data/totalseg/example_seg.nii.gz)
#   IRIS_BIN          use this iris binary instead of building the release one (for trying the script)
#   BENCH_TIMER=python  time with the Python getrusage wrapper even where GNU time is installed
#   VTK_SMP_IMPLEMENTATION_TYPE  VTK's SMP backend (default here STDThread: every core)
set -euo pipefail
# Plain shellcheck does not follow sources (SC1091); shellcheck -x follows env.sh.
# shellcheck source=env.sh source-path=SCRIPTDIR disable=SC1091
source "$(dirname "$0")/env.sh"
cd "$IRIS_ROOT"

say() { echo "bench-mesh: $*" >&2; }

REPS="${BENCH_REPS:-3}"
VTK_REPS="${BENCH_VTK_REPS:-1}"
RECORD="${BENCH_RECORD:-$IRIS_ROOT/BENCHMARKS.md}"
VENV="${IRIS_PEERS_VENV:-$HOME/.cache/iris-peers-venv}"
CACHE="${IRIS_BENCH_CACHE:-$HOME/.cache/iris-bench}"
SEG="${BENCH_SEG:-$IRIS_ROOT/../shared/data/totalseg/example_seg.nii.gz}"
LABEL_TABLE="$(dirname "$SEG")/total_labels.json"
PEERS="$IRIS_ROOT/scripts/bench_mesh_peers.py"
REDUCTION_PERCENT=75
PINS=(
    numpy==2.4.6
    nibabel==5.4.2
    vtk==9.7.2
)
for pair in "BENCH_REPS=$REPS" "BENCH_VTK_REPS=$VTK_REPS"; do
    if ! [[ "${pair#*=}" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: ${pair%%=*} must be a positive integer, not '${pair#*=}'" >&2
        exit 2
    fi
done
if [[ ! -s "$SEG" ]] || [[ ! -s "$LABEL_TABLE" ]]; then
    echo "error: the benchmark's input is missing: it needs $SEG and $LABEL_TABLE" >&2
    echo "       (the shared TotalSegmentator test data, ../shared/data/totalseg/ beside the repository)." >&2
    exit 2
fi
SEG="$(cd "$(dirname "$SEG")" && pwd)/$(basename "$SEG")"
LABEL_TABLE="$(dirname "$SEG")/total_labels.json"

# --- peers: a venv with pinned versions (env.sh: ensure_peers_venv; sets PY) ---
ensure_peers_venv "$VENV" "the peer (VTK) and to make the input" "${PINS[@]}"

# --- iris: the release build ---
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ "$COMMIT" != unknown ]] && [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
    COMMIT="$COMMIT-dirty"
fi
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
    IRIS_DESC="iris (release build, $(rustc --version 2>/dev/null || echo 'rustc unknown'))"
fi

# --- input: made once, kept in the cache ---
mkdir -p "$CACHE"
INPUT="$CACHE/mesh-labels-512x512x300.nii.gz"
STATS="$CACHE/mesh-stats.json"
if [[ ! -s "$INPUT" ]] || [[ ! -s "$STATS" ]]; then
    say "making the 512×512×300 label map (once) from $SEG → $INPUT"
    "$PY" "$PEERS" make-input "$SEG" "$LABEL_TABLE" "$INPUT.tmp.nii.gz" "$STATS.tmp" >&2
    mv "$STATS.tmp" "$STATS"
    mv "$INPUT.tmp.nii.gz" "$INPUT"
else
    say "reusing the label map $INPUT"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench-mesh.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs" "$WORK/details"

# --- timing: GNU time for peak RSS when present, else a small Python wrapper around getrusage ---
TIMER=python-rusage
if [[ "${BENCH_TIMER:-}" != python ]] && [[ -x /usr/bin/time ]] && /usr/bin/time -f "%e %M" -o "$WORK/probe" true 2>/dev/null \
    && [[ "$(tail -n 1 "$WORK/probe")" =~ ^[0-9.]+\ [0-9]+$ ]]; then
    TIMER=gnu-time
fi
say "timing with $TIMER; runs: iris $REPS, VTK $VTK_REPS"
LOAD_START="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown)"
if awk -v l="$LOAD_START" -v n="$(nproc)" 'BEGIN { exit !(l + 0 > n / 2) }'; then
    say "WARNING: load average $LOAD_START on $(nproc) cores before starting; other work will skew the timings"
fi

now() { if [[ -n "${EPOCHREALTIME:-}" ]]; then echo "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi; }

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
FAILED=0
# measure TOOL REP OUT_DIR CMD...: one run into OUT_DIR (emptied first); appends
# "tool rep wall_s peak_rss_kib ok|failed own_s details.json" to RESULTS.
measure() {
    local tool=$1 rep=$2 out=$3
    shift 3
    local log="$WORK/logs/$tool-$rep.log" tf="$WORK/time.out" details="$WORK/details/$tool-$rep.json"
    local wall rss status=ok
    rm -rf "$tf" "$out"
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
    # iris prints its own timing ("meshed N labels (T triangles) in 1.234 s → DIR").
    local own=""
    if [[ $tool == iris ]]; then
        own="$(sed -n 's/.* in \([0-9.]*\) s → .*/\1/p' "$log" | tail -n 1)"
        if [[ $status == ok ]] && ! "$PY" "$PEERS" iris-details "$out" "$details" >>"$log" 2>&1; then
            status=failed
        fi
    else
        # The VTK peer wrote its JSON line (triangles, stage seconds, file sizes) with --details.
        [[ -s "$details" ]] || status=failed
    fi
    if [[ $status == failed ]]; then
        FAILED=1
        say "  $tool run $rep FAILED; its output:"
        tail -n 20 "$log" | sed 's/^/    | /' >&2
    else
        say "  $tool run $rep: ${wall} s, $((rss / 1024)) MiB peak RSS${own:+ (own timer ${own} s)}"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$rep" "$wall" "${rss:-0}" "$status" "$own" "$details" >>"$RESULTS"
}

cat "$INPUT" "$STATS" >/dev/null # page cache warm for both tools alike
OUT="$WORK/out"
mkdir -p "$OUT"
ROUNDS=$((REPS > VTK_REPS ? REPS : VTK_REPS))
for rep in $(seq 1 "$ROUNDS"); do
    say "run $rep/$ROUNDS"
    if ((rep <= REPS)); then
        measure iris "$rep" "$OUT/iris" \
            "$IRIS" mesh "$INPUT" --out "$OUT/iris" --stats "$STATS" --reduction-percent "$REDUCTION_PERCENT"
    fi
    if ((rep <= VTK_REPS)); then
        measure vtk "$rep" "$OUT/vtk" "$PY" "$PEERS" vtk "$INPUT" "$OUT/vtk" \
            --reduction-percent "$REDUCTION_PERCENT" --details "$WORK/details/vtk-$rep.json"
    fi
done

# --- checks on the last outputs ---
CHECKS=()
check() { # check DESCRIPTION CMD...
    local what=$1
    shift
    if "$@" >&2; then
        say "check passed: $what"
        CHECKS+=("$what")
    else
        say "check FAILED: $what"
        CHECKS+=("$what: FAILED")
        FAILED=1
    fi
}
say "checking the outputs"
if [[ -s "$OUT/iris/manifest.json" ]]; then
    check "iris meshed every label of the input" \
        "$PY" "$PEERS" check-labels "$OUT/iris/manifest.json" "$STATS"
fi
for tool in iris vtk; do
    if [[ -s "$OUT/$tool/scene.glb" ]]; then
        check "$tool's \`scene.glb\` is binary glTF 2.0 with one JSON and one BIN chunk" \
            "$PY" "$PEERS" check-glb "$OUT/$tool/scene.glb"
    fi
done
if [[ -s "$OUT/iris/model.obj" ]] && [[ -s "$OUT/vtk/model.obj" ]]; then
    check "iris's and VTK's OBJ vertices span the same world box (RAS mm, within 2 voxels)" \
        "$PY" "$PEERS" check-bounds "$INPUT" "$OUT/iris/model.obj" "$OUT/vtk/model.obj"
fi

# --- report ---
COMMAND="bash scripts/bench-mesh.sh"
[[ -n "${BENCH_VTK_REPS:-}" ]] && COMMAND="BENCH_VTK_REPS=$BENCH_VTK_REPS $COMMAND"
[[ -n "${BENCH_REPS:-}" ]] && COMMAND="BENCH_REPS=$BENCH_REPS $COMMAND"
[[ -n "${IRIS_BIN:-}" ]] && COMMAND="IRIS_BIN=$IRIS_BIN $COMMAND"
VERSIONS="$("$PY" "$PEERS" versions)"
CPU="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
MEM="$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)"
META="$WORK/meta.json"
(
    export VERSIONS CPU MEM LOAD_START COMMAND COMMIT IRIS_DESC TIMER REPS VTK_REPS INPUT STATS REDUCTION_PERCENT
    NPROC="$(nproc)"
    DATE="$(date -u +%Y-%m-%d)"
    CHECKS_TEXT="$(printf '%s\n' "${CHECKS[@]}")"
    SOURCE_REL="shared/data/totalseg/$(basename "$SEG")"
    export NPROC DATE CHECKS_TEXT SOURCE_REL
    "$PY" - "$META" <<'EOF'
import json, math, os, sys
import nibabel as nib
e = os.environ
versions = dict(line.split(" ", 1) for line in e["VERSIONS"].splitlines() if line.strip())
img = nib.load(e["INPUT"])
with open(e["STATS"]) as f:
    stats = json.load(f)
spacing = [math.sqrt(sum(img.affine[r][c] ** 2 for r in range(3))) for c in range(3)]
pct = e["REDUCTION_PERCENT"]
peers = "python peers.py"
commands = [
    f"iris: `iris mesh labels.nii.gz --out DIR --stats stats.json --reduction-percent {pct}` (writes `scene.glb`, "
    "`model.obj`, `model.mtl`, `manifest.json`; triangles are the sum over `manifest.json`'s labels)",
    f"VTK: `{peers} vtk labels.nii.gz DIR --reduction-percent {pct}` — `nib.load`, `vtkImageData` (spacing and origin "
    "from the diagonal affine), `vtkSurfaceNets3D` with every label present, `SmoothingOn` (VTK's default "
    "smoothing settings), `SetOutputMeshTypeToTriangles`; `vtkQuadricDecimation` with "
    f"`SetTargetReduction({int(pct) / 100:g})` on the whole multi-label surface; `vtkGLTFWriter` to `scene.glb` (positions "
    "and indices, no normals, one uncoloured mesh) and `vtkOBJWriter` to `model.obj`",
    f"input: `{peers} make-input example_seg.nii.gz total_labels.json labels.nii.gz stats.json` — index "
    "mapping src = floor((dst + 0.5) · n_src / n_dst), affine scaled so voxel centres and the world extent match",
]
meta = {
    "date": e["DATE"], "nproc": e["NPROC"], "cpu": e["CPU"] or "unknown CPU", "mem": e["MEM"] or "unknown memory",
    "command": e["COMMAND"], "commit": e["COMMIT"], "iris": e["IRIS_DESC"], "timer": e["TIMER"],
    "load": e["LOAD_START"], "reps": int(e["REPS"]), "vtk_reps": int(e["VTK_REPS"]), "versions": versions,
    "reduction_percent": int(pct),
    "input": {
        "name": os.path.basename(e["INPUT"]), "source": e["SOURCE_REL"], "dims": list(img.shape[:3]),
        "spacing": spacing, "labels": len(stats["labels"]), "bytes": os.path.getsize(e["INPUT"]),
    },
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
