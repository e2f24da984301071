#!/usr/bin/env bash
# One command for a local multi-replica warren: a Redis (AOF on) and N
# `warren serve` replicas sharing it, each on its own port and data dir.
# Any replica serves any workspace; Ctrl-C stops them all (workspaces of the
# local provider keep running and are adopted at the next start).
#
#   scripts/replicas.sh [N=3] [provider=local|docker|process]
#
# Needs: cargo, redis-server (apt-get install redis-server), root for the
# local provider, a running dockerd for docker.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-3}"
provider="${2:-local}"
base="${WARREN_REPLICAS_DIR:-/var/lib/warren-replicas}"
redis_port="${WARREN_REDIS_PORT:-6380}"
first_port="${WARREN_FIRST_PORT:-7474}"
command -v redis-server >/dev/null || { echo "replicas: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
echo "==> building"
cargo build --release -q
[ "$provider" = docker ] && scripts/build-agent.sh >/dev/null
mkdir -p "$base/redis"
pids=()
cleanup() { echo; echo "==> stopping"; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$base/redis" --appendonly yes --appendfsync everysec --save "" \
  >"$base/redis/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break; sleep 0.1; done
export WARREN_REDIS_URL="redis://127.0.0.1:$redis_port/"
if [ -z "${WARREN_ADMIN_KEY:-}" ]; then
  [ -f "$base/admin.key" ] || echo "e2b_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$base/admin.key"
  WARREN_ADMIN_KEY=$(cat "$base/admin.key")
fi
export WARREN_ADMIN_KEY
for i in $(seq 1 "$n"); do
  port=$((first_port + i - 1))
  mkdir -p "$base/$i"
  printf 'provider = "%s"\nnode_id = "replica-%s"\nlisten = "127.0.0.1:%s"\ndata_dir = "%s"\n' \
    "$provider" "$i" "$port" "$base/$i" > "$base/$i/warren.toml"
  target/release/warren serve --config "$base/$i/warren.toml" >"$base/$i/warren.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$n"); do
  log="$base/$i/warren.log"
  for _ in $(seq 1 100); do grep -q "warren ready on" "$log" 2>/dev/null && break; sleep 0.1; done
  grep -q "warren ready on" "$log" || { echo "replica $i did not start:" >&2; cat "$log" >&2; exit 1; }
  echo "replica-$i: $(grep -o 'http://[0-9.:]*' "$log" | head -1)   (log $log)"
done
echo "redis: $WARREN_REDIS_URL (AOF in $base/redis)"
echo "admin key: $WARREN_ADMIN_KEY"
echo "try: WARREN_URL=http://127.0.0.1:$first_port WARREN_API_KEY=\$key target/release/warren create"
echo "Ctrl-C stops everything."
wait
