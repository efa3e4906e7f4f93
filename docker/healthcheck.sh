#!/bin/sh
# Health check of an IRIS queue worker, which has no HTTP port to probe.
#
# Healthy means:
#  1. PID 1 is this image's worker binary (iris-$IRIS_SERVICE), not something left in its place;
#  2. with the AWS backend, the worker holds at least one ESTABLISHED TCP connection to a port-443
#     endpoint. A live worker always does: it long-polls SQS for up to 20 s per call, back to back,
#     sends visibility heartbeats while it works, and the SDK keeps idle connections pooled for
#     longer than one poll. A worker that is wedged, or has lost its network path to AWS, has none;
#  3. with the embedded backend (local runs), its SQLite file exists in IRIS_DATA_DIR.
#
# Docker runs it from the image's HEALTHCHECK; the CDK app declares the same command as the ECS
# container health check. POSIX sh and mawk only: both base images have them.
set -eu

# Docker reserves exit code 2, so every failure below exits 1.
service="${IRIS_SERVICE:-}"
if [ -z "$service" ]; then
    echo "unhealthy: IRIS_SERVICE is not set in this image" >&2
    exit 1
fi
exe="$(readlink /proc/1/exe 2>/dev/null || true)"
case "$exe" in
    */iris-"$service") ;;
    *)
        echo "unhealthy: PID 1 is '${exe:-unknown}', expected iris-$service" >&2
        exit 1
        ;;
esac

case "${IRIS_BACKEND:-embedded}" in
    aws)
        # /proc/net/tcp{,6}: field 3 is the remote address:port in hex (443 = 01BB), field 4 the
        # state (01 = ESTABLISHED). tcp6 is absent where IPv6 is disabled, so only readable files.
        tables=""
        for table in /proc/net/tcp /proc/net/tcp6; do
            if [ -r "$table" ]; then tables="$tables $table"; fi
        done
        # shellcheck disable=SC2086 # $tables is a list of paths without spaces, split on purpose
        if [ -n "$tables" ] && awk 'FNR > 1 && $4 == "01" && $3 ~ /:01BB$/ { found = 1 } END { exit !found }' $tables; then
            exit 0
        fi
        echo "unhealthy: iris-$service has no established HTTPS connection to AWS" >&2
        exit 1
        ;;
    *)
        database="${IRIS_DATA_DIR:-.iris}/iris.sqlite3"
        if [ -f "$database" ]; then
            exit 0
        fi
        echo "unhealthy: $database does not exist" >&2
        exit 1
        ;;
esac
