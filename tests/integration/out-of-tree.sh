#!/usr/bin/env bash
# Installs silo into a temporary prefix, builds examples/hello-plugin against the installed SDK (as a plugin
# author would, out of tree), runs it in the installed silod and calls it with the installed siloctl.
# Usage: out-of-tree.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
work=$(mktemp -d /tmp/silo-oot.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/examples/hello-plugin" -B "$work/plugin" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/plugin" >/dev/null
test -f "$work/plugin/plugins/hello.so" || { echo "out-of-tree: hello.so was not built"; exit 1; }

# A loopback address of this script's own (127.64.0.0 + its pid, as tests/integration/process.cpp does), so
# no test running in parallel binds there, and two distinct free ports on it (both held while they are read).
host="127.$((64 + ($$ >> 16 & 63))).$(($$ >> 8 & 255)).$(($$ & 255))"
read -r silo_port gateway_port < <(python3 -c 'import socket, sys
s = [socket.socket() for _ in range(2)]
for x in s: x.bind((sys.argv[1], 0))
print(*(x.getsockname()[1] for x in s))' "$host")
cat >"$work/silod.yaml" <<YAML
silo: { listen: "$host:$silo_port" }
gateway: { listen: "$host:$gateway_port" }
plugins: { dir: "$work/plugin/plugins", load: [hello], required: true }
YAML
"$work/prefix/bin/silod" --config "$work/silod.yaml" >"$work/silod.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "silod ready" "$work/silod.log" && break; sleep 0.1; done
grep -q "silod ready" "$work/silod.log" || { cat "$work/silod.log"; echo "out-of-tree: silod not ready"; exit 1; }
out=$("$work/prefix/bin/siloctl" --gateway "$host:$gateway_port" call hello.Greeter world Greet '{"name": "silo"}')
echo "$out"
grep -q '"text": "hello silo from world"' <<<"$out" || { echo "out-of-tree: unexpected answer"; exit 1; }
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || { cat "$work/silod.log"; echo "out-of-tree: silod exited $rc"; exit 1; }
echo "out-of-tree plugin: ok"
