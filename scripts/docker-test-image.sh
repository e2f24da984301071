#!/usr/bin/env bash
# Builds the small image the Docker tests use (no registry is reachable
# here): the host's static busybox, root and `user` (uid 1000). Idempotent.
set -euo pipefail
img="${1:-warren-test-busybox}"
# Tests run in parallel processes: one builds, the others wait.
exec 9>"/tmp/warren-docker-test-image.lock"
flock 9
docker image inspect "$img" >/dev/null 2>&1 && exit 0
bb=$(command -v busybox || true)
[ -n "$bb" ] && ! ldd "$bb" >/dev/null 2>&1 || { echo "docker-test-image: needs a static busybox (apt-get install busybox-static)" >&2; exit 1; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/bin" "$t/etc" "$t/tmp" "$t/root" "$t/home/user"
chmod 1777 "$t/tmp"
cp "$bb" "$t/bin/busybox"
for a in $("$bb" --list); do [ "$a" = busybox ] || ln -s busybox "$t/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > "$t/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$t/etc/group"
chown 1000:1000 "$t/home/user"
tar -C "$t" -c . | docker import -c 'ENV PATH=/bin' - "$img" >/dev/null
echo "built $img"
