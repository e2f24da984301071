#!/usr/bin/env bash
# Makes sure a Docker engine runs with userns-remap and gVisor's runsc
# registered as the `runsc` runtime. Idempotent.
set -euo pipefail
conf=/etc/docker/daemon.json
mkdir -p /etc/docker
# userns-remap: a container's root is an unprivileged host uid (the
# engine's `dockremap` range), never the host's root; warren's Docker
# backend refuses an engine without it (or rootless) unless told otherwise.
# runsc is registered as the `runsc` runtime (its own network stack cannot
# start on every host, so it uses the container's network namespace).
changed=$(python3 - "$conf" "$(command -v runsc || true)" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
d = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
before = json.dumps(d, sort_keys=True)
d["userns-remap"] = "default"
if runsc:
    d.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=host"]}
if json.dumps(d, sort_keys=True) != before:
    json.dump(d, open(path, "w"), indent=2)
    print("yes")
PY
)
[ -n "$changed" ] && echo "docker-up: wrote $conf (userns-remap, runtimes)"
start() {
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl restart docker
  else
    setsid dockerd >/var/log/warren-dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
}
remapped() { docker info --format '{{json .SecurityOptions}}' 2>/dev/null | grep -q 'name=userns'; }
if docker info >/dev/null 2>&1 && ! remapped; then
  # userns-remap only takes effect on a fresh start of the engine.
  echo "docker-up: restarting the engine for userns-remap"
  if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl stop docker docker.socket 2>/dev/null || true
  else
    pkill -x dockerd || true
    for _ in $(seq 1 60); do pgrep -x dockerd >/dev/null || break; sleep 0.5; done
  fi
fi
if docker info >/dev/null 2>&1; then
  # Pick up a changed runtime list without stopping containers.
  pkill -HUP -x dockerd 2>/dev/null || true
  sleep 1
else
  start
fi
docker info >/dev/null 2>&1 || { echo "docker-up: the Docker engine did not start (see /var/log/warren-dockerd.log)" >&2; exit 1; }
docker info --format '{{json .Runtimes}}' | grep -q runsc && echo "docker-up: engine ready (runc, runsc)" || echo "docker-up: engine ready (runc)"
remapped || { echo "docker-up: the engine runs without userns-remap" >&2; exit 1; }
