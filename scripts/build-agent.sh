#!/usr/bin/env bash
# Builds the static warren-agent that is injected into every workspace, and
# beside it the static warren-probe the isolation probe suite uploads.
# musl when the target can be installed, else a static glibc build.
# Prints the path of the agent on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
tgt="${CARGO_TARGET_DIR:-target}"
out="$tgt/agent-static/warren-agent"
mkdir -p "$(dirname "$out")"
if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
   || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
  cargo build -q --profile agent --target x86_64-unknown-linux-musl -p warren-agent -p warren-probe
  bin="$tgt/x86_64-unknown-linux-musl/agent"
else
  echo "build-agent: musl target unavailable, building static glibc" >&2
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile agent \
    --target x86_64-unknown-linux-gnu -p warren-agent -p warren-probe
  bin="$tgt/x86_64-unknown-linux-gnu/agent"
fi
cp "$bin/warren-probe" "$out-probe.tmp" && mv "$out-probe.tmp" "$(dirname "$out")/warren-probe"
cp "$bin/warren-agent" "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
