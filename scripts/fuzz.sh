#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer) of the parsers that read untrusted input (issue #9, item 4).
# Run by hand, not in CI: it needs the nightly toolchain and takes FUZZ_SECONDS per target.
#
#   bash scripts/fuzz.sh                      every target, FUZZ_SECONDS (600) each, one after another
#   bash scripts/fuzz.sh nifti s3_event       only these targets
#   bash scripts/fuzz.sh cmin [TARGET...]     minimise the committed corpora (no fuzzing)
#
# Targets (fuzz/fuzz_targets/): nifti (NIfTI reader), dicom_file (one .dcm upload: the DICOM series
# assembler), dicom_zip (a .zip upload: zip extractor + series assembler), s3_event (S3 event
# notification parser), websocket_message (WebSocket client message parser).
#
# Each run: installs cargo-fuzz if missing, builds the targets (release with debug assertions),
# seeds the corpora when empty (scripts/fuzz-seed.sh: committed seeds in fuzz/corpus/<target>,
# seeds from the real files of ../shared/data in the ignored fuzz/seeds/<target>), fuzzes each
# target with -max_total_time=FUZZ_SECONDS, prints runs executed, corpus size and PASS/CRASH, and
# writes fuzz/last-run.md (one row per target; the rows of targets not run are kept) and its table
# into RELIABILITY.md. Exits 1 when any target crashed (a panic, an abort, a timeout of one
# input, or memory past the RSS limit); the input is under fuzz/artifacts/<target>/ (not
# committed): reproduce it with `cargo +nightly fuzz run -O --fuzz-dir fuzz TARGET FILE`, then
# keep it under fuzz/regressions/<target>/ with a test beside the fix.
#
# cmin: entries larger than FUZZ_COMMIT_MAX_BYTES are first moved out of the committed corpus to
# fuzz/seeds/<target>/ (they keep the committed corpus small), then `cargo fuzz cmin` keeps the
# smallest set of entries with the same coverage, then scripts/fuzz_keep_real_data_out.py moves
# out every entry that holds 32 consecutive bytes of a real file of ../shared/data (mutations of
# the real seeds: those files are not to be copied into the repository).
#
# Sanitizer: AddressSanitizer (FUZZ_SANITIZER=address, cargo-fuzz's default): the code under test is
# safe Rust, but its decoders (openjp2, zlib-rs, libdeflate, CharLS) are not. FUZZ_SANITIZER=none
# builds without it (faster; libFuzzer still catches panics, aborts, timeouts and memory).
#
# Environment:
#   FUZZ_SECONDS          seconds per target (default 600)
#   FUZZ_SANITIZER        address (default) or none
#   FUZZ_RSS_LIMIT_MB     libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_TIMEOUT          libFuzzer -timeout, seconds for one input (default 20)
#   FUZZ_COMMIT_MAX_BYTES largest entry cmin leaves in the committed corpus (default 32768)
#   IRIS_FUZZ_TARGET_DIR  cargo target directory (default ~/.cache/iris-fuzz-target)
#   RAYON_NUM_THREADS     threads of the decoders' rayon pool (default 1: one core for fuzzing)
set -euo pipefail
# shellcheck source=env.sh source-path=SCRIPTDIR disable=SC1091
source "$(dirname "$0")/env.sh"
ensure_cmake # CMake builds CharLS, the JPEG-LS codec of the DICOM reader.
export CARGO_TARGET_DIR="${IRIS_FUZZ_TARGET_DIR:-$HOME/.cache/iris-fuzz-target}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"
cd "$IRIS_ROOT"

ALL_TARGETS=(nifti dicom_file dicom_zip s3_event websocket_message)
REAL_DATA="${IRIS_FUZZ_DATA:-$IRIS_ROOT/../shared/data/totalseg}"
SECONDS_EACH="${FUZZ_SECONDS:-600}"
SANITIZER="${FUZZ_SANITIZER:-address}"
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
TIMEOUT="${FUZZ_TIMEOUT:-20}"
COMMIT_MAX_BYTES="${FUZZ_COMMIT_MAX_BYTES:-32768}"
LOG_DIR="$CARGO_TARGET_DIR/fuzz-logs"
SUMMARY="fuzz/last-run.md"
COMMAND="FUZZ_SECONDS=$SECONDS_EACH FUZZ_SANITIZER=$SANITIZER bash scripts/fuzz.sh${*:+ $*}"

say() { echo "fuzz: $*" >&2; }

# The largest input libFuzzer makes for a target: room for the seeds (real DICOM slices are
# ~150 KiB, the real CT .nii.gz 472 KiB) and past the parsers' own size caps.
max_len() {
    case "$1" in
        nifti | dicom_file | dicom_zip) echo 1048576 ;;
        s3_event) echo 65536 ;;
        websocket_message) echo 8192 ;;
    esac
}

mode=fuzz
if [[ "${1:-}" == cmin ]]; then
    mode=cmin
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${ALL_TARGETS[@]}")
fi
for target in "${targets[@]}"; do
    if [[ ! " ${ALL_TARGETS[*]} " == *" $target "* ]]; then
        echo "error: unknown fuzz target '$target' (targets: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done
case "$SANITIZER" in
    address | none) ;;
    *)
        echo "error: FUZZ_SANITIZER must be address or none, not '$SANITIZER'" >&2
        exit 2
        ;;
esac

if ! command -v rustup >/dev/null 2>&1 || ! rustup run nightly cargo --version >/dev/null 2>&1; then
    echo "error: the nightly toolchain is needed (cargo-fuzz builds with -Z flags): rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

FUZZ_FLAGS=(-O --sanitizer "$SANITIZER" --fuzz-dir fuzz)
LIBFUZZER_FLAGS=(-rss_limit_mb="$RSS_LIMIT_MB" -timeout="$TIMEOUT")

say "building the fuzz targets (sanitizer: $SANITIZER, target dir: $CARGO_TARGET_DIR)"
cargo +nightly fuzz build "${FUZZ_FLAGS[@]}"
bash scripts/fuzz-seed.sh
mkdir -p "$LOG_DIR"

entries() { find "$1" -maxdepth 1 -type f | wc -l; }

if [[ "$mode" == cmin ]]; then
    for target in "${targets[@]}"; do
        corpus="fuzz/corpus/$target"
        moved=0
        while IFS= read -r -d '' file; do
            mv "$file" "fuzz/seeds/$target/found-$(basename "$file")"
            moved=$((moved + 1))
        done < <(find "$corpus" -maxdepth 1 -type f -size "+${COMMIT_MAX_BYTES}c" -print0)
        before=$(entries "$corpus")
        say "$target: cmin of $before entries ($moved over $COMMIT_MAX_BYTES bytes moved to fuzz/seeds/$target)"
        cargo +nightly fuzz cmin "${FUZZ_FLAGS[@]}" "$target" "$corpus" -- \
            "${LIBFUZZER_FLAGS[@]}" -max_len="$(max_len "$target")" >"$LOG_DIR/$target.cmin.log" 2>&1 || {
            tail -n 30 "$LOG_DIR/$target.cmin.log" >&2
            echo "error: cmin of $target failed (log: $LOG_DIR/$target.cmin.log)" >&2
            exit 1
        }
        python3 scripts/fuzz_keep_real_data_out.py "$REAL_DATA" "$corpus" "fuzz/seeds/$target" \
            services/ingest/tests/fixtures "$corpus"/seed-*
        echo "$target: $before -> $(entries "$corpus") entries, $(du -sk "$corpus" | cut -f1) KiB"
    done
    exit 0
fi

revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain -- services shared fuzz/src fuzz/fuzz_targets 2>/dev/null)" ]]; then
    revision="$revision+changes"
fi
rows=()
crashed=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    log="$LOG_DIR/$target.log"
    mkdir -p "$corpus" "$artifacts"
    started="$LOG_DIR/$target.started"
    touch "$started"
    say "$target: fuzzing for $SECONDS_EACH s (corpus $(entries "$corpus") entries + $(entries "fuzz/seeds/$target") seeds; log: $log)"
    status=0
    cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" "${LIBFUZZER_FLAGS[@]}" -max_len="$(max_len "$target")" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    ran=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    corpus_entries=$(entries "$corpus")
    new_artifacts=$(find "$artifacts" -type f -newer "$started" | sort | tr '\n' ' ')
    if [[ $status -eq 0 && -z "$new_artifacts" ]]; then
        result=PASS
    else
        result=CRASH
        crashed+=("$target")
        tail -n 40 "$log" >&2
        say "$target: exit status $status; inputs: ${new_artifacts:-none written}"
    fi
    echo "$target: ${ran:-?} s, ${execs:-?} runs executed, corpus $corpus_entries entries: $result"
    rows+=("| $target | $(date -u +%Y-%m-%dT%H:%M:%SZ) | $revision | $SANITIZER | ${ran:-?} of $SECONDS_EACH | ${execs:-?} | $corpus_entries | $result |")
done

# One row per target: the rows of the targets run now replace theirs, the others are kept.
previous_rows=()
if [[ -f "$SUMMARY" ]]; then
    mapfile -t previous_rows < <(grep '^| [a-z0-9_]* | 20' "$SUMMARY" || true)
fi
{
    echo "# Last fuzzing run of each target"
    echo
    echo "Written by \`scripts/fuzz.sh\` (the last run: \`$COMMAND\`). Toolchain: $(rustup run nightly rustc --version), $(cargo fuzz --version)."
    echo "libFuzzer flags: ${LIBFUZZER_FLAGS[*]} -max_total_time=SECONDS; RAYON_NUM_THREADS=$RAYON_NUM_THREADS. A"
    echo "revision ending in +changes had uncommitted changes to the code under test."
    echo
    echo "| target | finished (UTC) | git revision | sanitizer | seconds | runs executed | corpus entries | result |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for target in "${ALL_TARGETS[@]}"; do
        row=""
        for candidate in "${rows[@]}"; do
            [[ "$candidate" == "| $target |"* ]] && row="$candidate"
        done
        if [[ -z "$row" ]]; then
            for candidate in "${previous_rows[@]}"; do
                [[ "$candidate" == "| $target |"* ]] && row="$candidate"
            done
        fi
        [[ -n "$row" ]] && echo "$row"
    done
} >"$SUMMARY"
# RELIABILITY.md shows the same table, between its fuzz markers.
python3 - "$SUMMARY" RELIABILITY.md <<'PY'
import sys
summary, target = sys.argv[1], sys.argv[2]
table = "\n".join(line for line in open(summary).read().splitlines() if line.startswith("|"))
text = open(target).read()
start, end = "<!-- fuzz:start -->", "<!-- fuzz:end -->"
before, after = text.index(start) + len(start), text.index(end)
open(target, "w").write(text[:before] + "\n" + table + "\n" + text[after:])
PY
say "summary in $SUMMARY and RELIABILITY.md"

if [[ ${#crashed[@]} -gt 0 ]]; then
    echo "CRASH: ${crashed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "PASS: ${targets[*]}"
