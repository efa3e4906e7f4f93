#!/usr/bin/env bash
# Builds the notify service's WebSocket Lambda (iris-websocket-lambda: the $connect authorizer and
# the WebSocket routes) for the provided.al2023 runtime, with docker/websocket-lambda.Dockerfile,
# into target/lambda/iris-websocket-lambda/bootstrap: the directory to deploy with
#   cd cdk && npx cdk deploy -c notifyLambdaCodePath=../target/lambda/iris-websocket-lambda ...
#
#   scripts/build-websocket-lambda.sh [arm64|x86_64]
#
# The architecture defaults to arm64, as the CDK app's notifyLambdaArchitecture; for x86_64, deploy
# with -c notifyLambdaArchitecture=x86_64 too. Needs Docker with BuildKit and buildx (Docker 23+).
# The build runs natively for the target architecture: arm64 on an x86_64 machine runs under QEMU
# emulation (binfmt; Docker Desktop has it, on Linux `docker run --privileged --rm
# tonistiigi/binfmt --install arm64` installs it) and is much slower than on an arm64 machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE=docker/websocket-lambda.Dockerfile
OUTPUT=target/lambda/iris-websocket-lambda

usage() {
    echo "usage: $0 [arm64|x86_64]   (default arm64)" >&2
    exit 2
}

[ "$#" -le 1 ] || usage
architecture="${1:-arm64}"
case "$architecture" in
    arm64 | aarch64) architecture=arm64 platform=linux/arm64 ;;
    x86_64 | amd64) architecture=x86_64 platform=linux/amd64 ;;
    -h | --help) usage ;;
    *)
        echo "error: unknown architecture '$architecture' (arm64 or x86_64, as the Lambda's)" >&2
        usage
        ;;
esac

if ! command -v docker >/dev/null; then
    echo "error: docker is required to build the Lambda (Docker 23+ with BuildKit and buildx)" >&2
    exit 2
fi
if ! docker buildx version >/dev/null 2>&1; then
    echo "error: docker buildx is required (Docker 23+, or the docker-buildx plugin)" >&2
    exit 2
fi

cd "$ROOT"
# A fresh directory, so it holds only this build's bootstrap (CDK zips the whole directory).
rm -rf "$OUTPUT"
echo "== docker buildx build --platform $platform -f $DOCKERFILE --output type=local,dest=$OUTPUT ."
docker buildx build --platform "$platform" -f "$DOCKERFILE" --output "type=local,dest=$OUTPUT" .

if [ ! -x "$OUTPUT/bootstrap" ]; then
    echo "error: the build did not produce $OUTPUT/bootstrap" >&2
    exit 1
fi
echo "built $ROOT/$OUTPUT/bootstrap ($architecture, $(wc -c <"$OUTPUT/bootstrap") bytes)"
flags="-c notifyLambdaCodePath=../$OUTPUT"
[ "$architecture" = arm64 ] || flags="$flags -c notifyLambdaArchitecture=$architecture"
echo "deploy it with (from cdk/; the path is relative to cdk/):"
echo "  npx cdk deploy $flags -c tokenPublicKey=\"\$(iris token public-key)\" ..."
echo "notifyLambdaCodePath: $ROOT/$OUTPUT"
