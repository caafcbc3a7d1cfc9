#!/usr/bin/env bash
# The main job on one machine, no server needed: installs dependencies, builds, starts a silod on
# config/silod.dev.yaml with the IoT sample plugin, runs the iot-demo client against it, shows a siloctl
# call, and stops the silo cleanly.
# SILO_QUICKSTART_SERVE=1 keeps the silo running in the foreground instead (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
echo "== build"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target silod iot iot-demo siloctl

if [ "${SILO_QUICKSTART_SERVE:-0}" = 1 ]; then
  exec build/bin/silod --config config/silod.dev.yaml
fi

run_dir=$(mktemp -d /tmp/silo-quickstart.XXXXXX)
log="$run_dir/silod.log"
echo "== starting silod on config/silod.dev.yaml (log: $log)"
build/bin/silod --config config/silod.dev.yaml >"$log" 2>&1 &
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "silod ready" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "quickstart: silod exited early (log above)"; exit 1; }
  sleep 0.1
done
grep -q "silod ready" "$log" || { cat "$log"; echo "quickstart: silod not ready after 10 s (log above)"; exit 1; }
grep -E "plugins: loaded|gateway: listening|silod ready" "$log"

echo "== iot-demo: 10 homes x 5 thermostats for 5 s"
demo_rc=0
build/bin/iot-demo --gateway 127.0.0.1:30000 --seconds 5 || demo_rc=$?

echo "== siloctl call iot.Thermostat home-0-t0 SetTarget '{\"celsius\": 21.5}'"
ctl_rc=0
build/bin/siloctl --gateway 127.0.0.1:30000 call iot.Thermostat home-0-t0 SetTarget '{"celsius": 21.5}' || ctl_rc=$?
build/bin/siloctl --gateway 127.0.0.1:30000 grains || ctl_rc=$?

echo "== stopping silod (SIGTERM)"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
trap - EXIT
tail -n 2 "$log"
if [ "$rc" -ne 0 ] || [ "$demo_rc" -ne 0 ] || [ "$ctl_rc" -ne 0 ]; then
  echo "quickstart: FAILED (silod exit $rc, iot-demo exit $demo_rc, siloctl exit $ctl_rc); full log: $log"
  exit 1
fi
echo "quickstart: done. Keep a silo running with: SILO_QUICKSTART_SERVE=1 ./deploy/quickstart.sh"
