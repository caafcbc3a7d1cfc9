#!/usr/bin/env bash
# The main job on one machine, no server needed: installs dependencies, builds, starts a silod on
# config/silod.dev.yaml with the IoT sample plugin, waits until it is ready, and stops it cleanly.
# Set SILO_QUICKSTART_SERVE=1 to keep the silo running in the foreground (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
echo "== build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target silod iot

if [ "${SILO_QUICKSTART_SERVE:-0}" = 1 ]; then
  exec build/bin/silod --config config/silod.dev.yaml
fi

run_dir=$(mktemp -d /tmp/silo-quickstart.XXXXXX)
log="$run_dir/silod.log"
echo "== starting silod (log: $log)"
build/bin/silod --config config/silod.dev.yaml >"$log" 2>&1 &
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "silod ready" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "quickstart: silod exited early (log above)"; exit 1; }
  sleep 0.1
done
grep -q "silod ready" "$log" || { cat "$log"; echo "quickstart: silod not ready after 10 s"; exit 1; }
cat "$log"
echo "== stopping silod"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
trap - EXIT
tail -n 3 "$log"
echo "quickstart: done (silod exit code $rc)"
exit "$rc"
