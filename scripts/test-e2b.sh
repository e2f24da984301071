#!/usr/bin/env bash
# Runs the real E2B SDKs (from PyPI and npm) against a real warren server on
# the local provider. Installs the SDKs into .venv-e2b-<version> and
# tests/e2b/js/node_modules the first time (idempotent).
# Usage: scripts/test-e2b.sh [path to the warren binary] (default target/debug/warren)
set -euo pipefail
cd "$(dirname "$0")/.."
warren=${1:-target/debug/warren}
versions=(2.63.0 2.20.0)
js_version=2.51.0

if ! python3 -m venv --help >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
for v in "${versions[@]}"; do
  venv=.venv-e2b-$v
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('e2b') == '$v'" 2>/dev/null; then
    echo "installing e2b==$v into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "e2b==$v"
  fi
done

key="e2b_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
data=$(mktemp -d /var/tmp/warren-e2b.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$data/serve.log
WARREN_ADMIN_KEY=$key WARREN_E2B_DOMAIN=e2b.local "$warren" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 100); do grep -q "warren ready on" "$log" && break; sleep 0.1; done
grep -q "warren ready on" "$log" || { cat "$log"; echo "warren did not start" >&2; exit 1; }

export E2B_API_URL=http://127.0.0.1:$port E2B_SANDBOX_URL=http://127.0.0.1:$port E2B_API_KEY=$key
status=0
for v in "${versions[@]}"; do
  echo "== e2b (Python) $v"
  ".venv-e2b-$v/bin/python" tests/e2b/test_sdk.py || status=1
done

if command -v npm >/dev/null 2>&1; then
  echo "== e2b (JavaScript) $js_version"
  if [ ! -d tests/e2b/js/node_modules/e2b ] || ! grep -q "\"version\": \"$js_version\"" tests/e2b/js/node_modules/e2b/package.json; then
    (cd tests/e2b/js && npm install --no-audit --no-fund --silent "e2b@$js_version")
  fi
  node tests/e2b/js/smoke.mjs || status=1
else
  echo "npm not found: skipping the JavaScript SDK smoke test" >&2
  status=1
fi
exit $status
