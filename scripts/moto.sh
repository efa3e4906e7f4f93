#!/usr/bin/env bash
# Local moto (AWS mock) servers for testing the AWS adapters, with no AWS account and no root.
#
#   scripts/moto.sh install          create the venv and install pinned moto[server] (idempotent)
#   scripts/moto.sh start [PORT]     start a server (free loopback port by default); prints its URL only:
#                                      MOTO=$(scripts/moto.sh start)
#   scripts/moto.sh stop [PORT|URL]  stop that server, or every server this script started (idempotent)
#   scripts/moto.sh reset URL        wipe the server's state (POST URL/moto-api/reset)
#
# IRIS_MOTO_VENV (default ~/.cache/iris-moto-venv) holds the venv; IRIS_MOTO_DIR (default
# ~/.cache/iris-moto) holds moto-PORT.log and moto-PORT.pid. All messages go to stderr.
set -euo pipefail

MOTO_VERSION=5.2.5
VENV="${IRIS_MOTO_VENV:-$HOME/.cache/iris-moto-venv}"
DIR="${IRIS_MOTO_DIR:-$HOME/.cache/iris-moto}"
PY="$VENV/bin/python"

log() { echo "moto.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }

installed_version() { "$PY" -c 'import moto; print(moto.__version__)' 2>/dev/null || true; }

install() {
    if [[ -x "$VENV/bin/moto_server" && "$(installed_version)" == "$MOTO_VERSION" ]]; then
        log "moto $MOTO_VERSION already installed in $VENV"
        return
    fi
    if [[ ! -x "$PY" ]]; then
        log "creating virtualenv $VENV"
        python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    log "installing moto[server]==$MOTO_VERSION into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
    log "installed moto $(installed_version)"
}

# "8080", "http://127.0.0.1:8080" or "http://127.0.0.1:8080/" -> 8080
port_of() {
    local p="${1%/}"
    p="${p##*:}"
    [[ "$p" =~ ^[0-9]+$ ]] || die "not a port or URL: $1"
    echo "$p"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# True once anything answers HTTP on the port (any status code counts).
answers() {
    "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
except urllib.error.HTTPError:
    pass
EOF
}

start() {
    install
    local port="${1:-$(free_port)}"
    port="$(port_of "$port")"
    mkdir -p "$DIR"
    local logf="$DIR/moto-$port.log" pidf="$DIR/moto-$port.pid"
    if [[ -f "$pidf" ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        die "a server started by this script already runs on port $port (pid $(cat "$pidf"))"
    fi
    answers "$port" && die "something else already answers on port $port"
    # Runs in $DIR (moto writes files such as moto_recording to its working directory), in its own
    # session so it outlives this script and the caller's Ctrl-C.
    (cd "$DIR" && exec setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logf" 2>&1 </dev/null) &
    local pid=$!
    echo "$pid" >"$pidf"
    log "started moto_server pid $pid on port $port (log $logf)"
    local i
    for ((i = 0; i < 300; i++)); do
        if answers "$port"; then
            echo "http://127.0.0.1:$port"
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidf"
            tail -n 20 "$logf" >&2 || true
            die "moto_server exited before answering on port $port"
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$pidf"
    tail -n 20 "$logf" >&2 || true
    die "moto_server did not answer on http://127.0.0.1:$port within 30 s"
}

stop_pidfile() {
    local pidf="$1" pid i
    pid="$(cat "$pidf" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        log "stopped moto_server pid $pid ($(basename "$pidf" .pid))"
    fi
    rm -f "$pidf"
}

stop() {
    if [[ $# -gt 0 ]]; then
        stop_pidfile "$DIR/moto-$(port_of "$1").pid"
        return
    fi
    local pidf
    for pidf in "$DIR"/moto-*.pid; do
        [[ -e "$pidf" ]] && stop_pidfile "$pidf"
    done
    return 0
}

reset() {
    [[ $# -eq 1 ]] || usage
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="POST"), timeout=10)' \
        "${1%/}/moto-api/reset" || die "reset of $1 failed"
    log "reset $1"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) [[ $# -eq 0 ]] || usage; install ;;
    start) [[ $# -le 1 ]] || usage; start "$@" ;;
    stop) [[ $# -le 1 ]] || usage; stop "$@" ;;
    reset) reset "$@" ;;
    *) usage ;;
esac
