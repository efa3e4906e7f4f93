#!/usr/bin/env bash
# TotalSegmentator's CLI, for benchmarking iris against it (scripts/bench-segment-totalseg.sh):
# TotalSegmentator 2.18.0 from PyPI installed into nnU-Net's venv (scripts/nnunet-env.sh), every
# package already there held at its version (so the parity tests' torch and nnunetv2 stay as they
# are). Only the benchmark needs it; no test and no service does.
#
#   scripts/totalseg-env.sh install   install it (idempotent)
#   scripts/totalseg-env.sh python    print the venv's python
#
# All messages go to stderr.
set -euo pipefail

TOTALSEG_VERSION=2.18.0
root="$(cd "$(dirname "$0")/.." && pwd)"
log() { echo "totalseg-env.sh: $*" >&2; }

install() {
    bash "$root/scripts/nnunet-env.sh" install
    local py
    py="$(bash "$root/scripts/nnunet-env.sh" python)"
    local have
    have="$("$py" -c 'import importlib.metadata as m; print(m.version("TotalSegmentator"))' 2>/dev/null || true)"
    if [[ "$have" == "$TOTALSEG_VERSION" ]]; then
        log "TotalSegmentator $TOTALSEG_VERSION already installed"
        return
    fi
    local constraints
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' RETURN
    "$py" -m pip freeze --disable-pip-version-check | grep -v '^-e ' >"$constraints"
    log "installing TotalSegmentator $TOTALSEG_VERSION (the venv's packages held at their versions)"
    "$py" -m pip install --quiet --disable-pip-version-check --no-cache-dir -c "$constraints" \
        "TotalSegmentator==$TOTALSEG_VERSION" >&2
    log "installed TotalSegmentator $("$py" -c 'import importlib.metadata as m; print(m.version("TotalSegmentator"))')"
}

case "${1:-}" in
install) install ;;
python) bash "$root/scripts/nnunet-env.sh" python ;;
*)
    sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac
