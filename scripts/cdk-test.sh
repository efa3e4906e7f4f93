#!/usr/bin/env bash
# Tests the CDK app (cdk/) and synthesises it, offline: no AWS account, credentials or network.
#   1. npm ci, only when cdk/node_modules is missing or cdk/package-lock.json changed since;
#   2. tsc (a clean compile into cdk/dist);
#   3. node --test on the compiled tests (aws-cdk-lib/assertions);
#   4. cdk synth --quiet into cdk/cdk.out, with every AWS credential source and the network cut off,
#      then a check that no context lookup happened (cdk.context.json would hold its result).
# Needs Node.js 20+ and npm. Docker is not needed: images are built by `cdk deploy`, not by synth.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/cdk"

command -v node >/dev/null && command -v npm >/dev/null || { echo "error: node and npm are required (Node.js 20+)" >&2; exit 2; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "error: Node.js 20 or newer is required (found $(node --version))" >&2
    exit 2
fi
export CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.iris-package-lock.sha256
if [ -d node_modules ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$lock_hash" ]; then
    echo "== npm ci: skipped (node_modules matches package-lock.json)"
else
    echo "== npm ci (cdk/node_modules missing or package-lock.json changed)"
    npm ci --no-audit --no-fund
    echo "$lock_hash" >"$stamp"
fi

echo "== tsc (clean compile into cdk/dist)"
rm -rf dist
npx --no-install tsc

echo "== node --test dist/test/*.test.js"
node --test dist/test/*.test.js

echo "== cdk synth --quiet (offline: no credentials, no network) into cdk/cdk.out"
rm -rf cdk.context.json cdk.out
# An unreachable proxy makes any network call fail instead of silently succeeding, and the empty
# configuration leaves the SDK no credentials to find.
env -u AWS_PROFILE -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_REGION -u AWS_DEFAULT_REGION \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
    HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy= \
    npx --no-install cdk synth --quiet --no-notices --output cdk.out
if [ -e cdk.context.json ]; then
    echo "error: the synth made context lookups (cdk.context.json was written); the app must not" >&2
    exit 1
fi
template=cdk.out/IrisOculus.template.json
[ -s "$template" ] || { echo "error: $template was not written" >&2; exit 1; }
echo "cdk synth: $template ($(wc -c <"$template") bytes), $(ls -d cdk.out/asset.* | wc -l) staged assets"
