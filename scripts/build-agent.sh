#!/usr/bin/env bash
# Builds the static warren-agent that is injected into every workspace.
# musl when the target can be installed, else a static glibc build.
# Prints the path of the binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
tgt="${CARGO_TARGET_DIR:-target}"
out="$tgt/agent-static/warren-agent"
mkdir -p "$(dirname "$out")"
if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
   || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
  cargo build -q --profile agent --target x86_64-unknown-linux-musl -p warren-agent
  cp "$tgt/x86_64-unknown-linux-musl/agent/warren-agent" "$out.tmp"
else
  echo "build-agent: musl target unavailable, building static glibc" >&2
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --profile agent \
    --target x86_64-unknown-linux-gnu -p warren-agent
  cp "$tgt/x86_64-unknown-linux-gnu/agent/warren-agent" "$out.tmp"
fi
mv "$out.tmp" "$out"
echo "$out"
