#!/usr/bin/env bash
# Runs every benchmark next to its baseline in the same run and prints a Markdown table; the results go to
# bench/results/latest.json (see docs/BENCHMARKS.md).
#   bench/run.sh            full run: each measurement 3 times, min/median/max (about 11 minutes)
#   bench/run.sh --quick    one of each, shorter windows (under 5 minutes on 2 cores)
# Durable writes, cross-silo and failover need PostgreSQL: the PG* variables when set, otherwise the script
# re-runs itself under `pg_virtualenv -t` (a throwaway cluster, apart from any other run's).
# Servers (silod, the raw servers) run on CPU 0 and clients on CPU 1, the same for silo and baseline; the
# in-process benchmarks use both CPUs. Benchmarks are not tests: nothing here fails on a slow result.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

./deploy/install-deps.sh
# Without a PostgreSQL in the environment, run under a throwaway one of our own: the durable-writes,
# cross-silo and failover rows need it, and a fresh clone should print every row.
if [ -z "${PGHOST:-}" ] && [ -z "${SILO_BENCH_IN_PG_VIRTUALENV:-}" ] && command -v pg_virtualenv >/dev/null; then
  export SILO_BENCH_IN_PG_VIRTUALENV=1
  exec pg_virtualenv -t -- "$0" "$@"
fi

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
esac
command_line="bench/run.sh${1:+ $1}"

build=${SILO_BENCH_BUILD_DIR:-build}
echo "== build (Release, $build)" >&2
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSILO_BUILD_BENCH=ON >/dev/null
cmake --build "$build" --target silod bench pingpong bench_runtime bench_grpc >&2

if [ "$quick" = 1 ]; then
  reps=1 warm=0.5 secs=1.5 insilo_calls=20000 activations=200000 lanes=512
else
  reps=3 warm=1 secs=3 insilo_calls=60000 activations=1000000 lanes=512
fi

work=$(mktemp -d /tmp/silo-bench.XXXXXX)
# A copy of what runs: others may rebuild $build while the benchmarks run.
snap=$work/snap
mkdir -p "$snap/bin" "$snap/plugins" "$snap/bench-plugins"
cp "$build"/bin/{silod,bench_runtime,bench_grpc} "$snap/bin/"
cp -a "$build/lib" "$snap/lib"
cp "$build/plugins/bench.so" "$snap/plugins/"
cp "$build/bench-plugins/pingpong.so" "$snap/bench-plugins/"
export LD_LIBRARY_PATH=$snap/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SILO_BENCH_PLUGIN_DIR=$snap/bench-plugins
bin=$snap/bin
raw=$work/raw.tsv
: >"$raw"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # wait_port PORT LOG: waits until something listens on 127.0.0.1:PORT
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; $2 says:" >&2
  tail -n 20 "$2" >&2
  failed=1
  return 1
}
start_on() {  # start_on CPU LOG cmd...: in the background, pinned to CPU
  local cpu=$1 log=$2; shift 2
  taskset -c "$cpu" "$@" >"$log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}
start_server() { start_on 0 "$@"; }
stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
# cluster_config NAME SILO_PORT GATEWAY_PORT: a silo of the benchmark cluster (membership in PostgreSQL).
cluster_config() {
  cat >"$work/$1.yaml" <<YAML
cluster: {id: bench-$$}
silo: {name: $1, listen: 127.0.0.1:$2, threads: 1, shutdown_timeout: 2s}
gateway: {listen: 127.0.0.1:$3}
membership: {provider: postgres}
plugins: {dir: $snap/bench-plugins, load: [pingpong], required: true}
grains:
  types:
    benchpp.Pinger: {placement: prefer_local}
    benchpp.Ponger: {placement: hash}
logging: {level: warn}
YAML
}

failed=0
# measure ROW SIDE cmd...: runs one measurement and records its JSON line (or the failure).
measure() {
  local row=$1 side=$2; shift 2
  local cmd out err=$work/err.txt
  cmd=$(printf '%q ' "$@" | sed "s|$snap|$build|g; s|$root/||g")
  echo "-- $row/$side: $cmd" >&2
  # The result is the last {"name":...} line: a library may log to stdout after it.
  if out=$(timeout 300 "$@" 2>"$err" | grep '^{"name"' | tail -n 1) && [ -n "$out" ]; then
    printf 'result\t%s\t%s\t%s\t%s\n' "$row" "$side" "$cmd" "$out" >>"$raw"
  else
    failed=1
    printf 'failed\t%s\t%s\t%s\t%s\n' "$row" "$side" "$cmd" "$(tail -n 3 "$err" | tr '\t\n' '  ')" >>"$raw"
  fi
}
note() { printf 'note\t%s\t%s\n' "$1" "$2" >>"$raw"; }  # note ROW TEXT: why a row has no numbers

client=(taskset -c 1)

# --- in-silo calls and activations (in-process, 2 worker threads) ---
for _ in $(seq "$reps"); do
  measure insilo silo "$bin/bench_runtime" insilo callers=64 calls=$insilo_calls warmup=2000
  measure insilo baseline "$bin/bench_runtime" asio callers=64 calls=$insilo_calls warmup=2000
done
for _ in $(seq "$reps"); do
  measure activations silo "$bin/bench_runtime" activations count=$activations lanes=$lanes
done

# --- gateway: silod (1 worker thread) and the raw servers on CPU 0, clients on CPU 1 ---
gw_port=$(free_port) silo_port=$(free_port) stream_port=$(free_port) unary_port=$(free_port)
cat >"$work/silod.yaml" <<YAML
cluster: {id: bench}
silo: {name: bench, listen: 127.0.0.1:$silo_port, threads: 1, shutdown_timeout: 2s}
gateway: {listen: 127.0.0.1:$gw_port}
plugins: {dir: $snap/plugins, load: [bench], required: true}
logging: {level: warn}
YAML
start_server "$work/silod.log" "$bin/silod" --config "$work/silod.yaml"
start_server "$work/stream.log" "$bin/bench_grpc" stream-server listen=127.0.0.1:$stream_port
start_server "$work/unary.log" "$bin/bench_grpc" unary-server listen=127.0.0.1:$unary_port threads=1
wait_port "$gw_port" "$work/silod.log" || true
wait_port "$stream_port" "$work/stream.log" || true
wait_port "$unary_port" "$work/unary.log" || true

window=(warmup=$warm seconds=$secs)
for payload in 64 1024; do
  for inflight in 1 64 1024; do
    row=gateway-client-${payload}B-${inflight}
    for _ in $(seq "$reps"); do
      measure "$row" silo "${client[@]}" "$bin/bench_grpc" silo-client target=127.0.0.1:$gw_port \
        payload=$payload inflight=$inflight "${window[@]}"
      measure "$row" baseline "${client[@]}" "$bin/bench_grpc" stream-client target=127.0.0.1:$stream_port \
        payload=$payload inflight=$inflight "${window[@]}"
    done
  done
done
for inflight in 1 64; do
  row=gateway-unary-64B-${inflight}
  for _ in $(seq "$reps"); do
    measure "$row" silo "${client[@]}" "$bin/bench_grpc" unary-client target=127.0.0.1:$gw_port \
      payload=64 inflight=$inflight "${window[@]}"
    measure "$row" baseline "${client[@]}" "$bin/bench_grpc" unary-client target=127.0.0.1:$unary_port \
      payload=64 inflight=$inflight "${window[@]}"
  done
done
stop_servers

# --- cross-silo and failover: cluster membership in PostgreSQL ---
if [ -n "${PGHOST:-}" ]; then
  # Silo a (CPU 0) runs the Pingers, silo b (CPU 1) the Pongers; the baseline's client is on CPU 0 and its
  # server on CPU 1. The client only starts 64 Pinger runs: the calls measured are a -> b.
  a_port=$(free_port) a_gw=$(free_port) b_port=$(free_port) b_gw=$(free_port) stream_port=$(free_port)
  cluster_config a "$a_port" "$a_gw"
  cluster_config b "$b_port" "$b_gw"
  start_on 0 "$work/a.log" "$bin/silod" --config "$work/a.yaml"
  start_on 1 "$work/b.log" "$bin/silod" --config "$work/b.yaml"
  start_on 1 "$work/stream.log" "$bin/bench_grpc" stream-server listen=127.0.0.1:$stream_port
  wait_port "$a_gw" "$work/a.log" || true
  wait_port "$b_gw" "$work/b.log" || true
  wait_port "$stream_port" "$work/stream.log" || true
  for _ in $(seq "$reps"); do
    measure cross-silo silo taskset -c 0 "$bin/bench_grpc" pingpong target=127.0.0.1:$a_gw place_on=b silos=2 \
      inflight=64 calls=$((insilo_calls / 10)) warmup_calls=200
    measure cross-silo baseline taskset -c 0 "$bin/bench_grpc" stream-client target=127.0.0.1:$stream_port \
      payload=8 inflight=64 "${window[@]}"
  done
  stop_servers

  # Failover: 3 silos with the default membership settings; c is killed with SIGKILL and restarted.
  a_port=$(free_port) a_gw=$(free_port) b_port=$(free_port) b_gw=$(free_port) c_port=$(free_port) c_gw=$(free_port)
  cluster_config a "$a_port" "$a_gw"
  cluster_config b "$b_port" "$b_gw"
  cluster_config c "$c_port" "$c_gw"
  start_on 0 "$work/a.log" "$bin/silod" --config "$work/a.yaml"
  start_on 1 "$work/b.log" "$bin/silod" --config "$work/b.yaml"
  wait_port "$a_gw" "$work/a.log" || true
  wait_port "$b_gw" "$work/b.log" || true
  fo_reps=$([ "$quick" = 1 ] && echo 1 || echo 5)
  for _ in $(seq "$fo_reps"); do
    start_on 1 "$work/c.log" "$bin/silod" --config "$work/c.yaml"
    c_pid=$last_pid
    wait_port "$c_gw" "$work/c.log" || true
    measure failover silo "$bin/bench_grpc" failover target=127.0.0.1:$a_gw victim=c victim_pid=$c_pid silos=3 \
      grains=200 limit=60
    kill -9 "$c_pid" 2>/dev/null || true
    wait "$c_pid" 2>/dev/null || true
  done
  stop_servers
else
  note cross-silo "skipped: needs PostgreSQL: run under pg_virtualenv"
  note failover "skipped: needs PostgreSQL: run under pg_virtualenv"
fi

# --- durable writes: PostgreSQL from the PG* environment ---
if [ -n "${PGHOST:-}" ]; then
  for writers in 1 64 1024; do
    row=durable-$writers
    for _ in $(seq "$reps"); do
      measure "$row" silo "$bin/bench_runtime" durable-silo writers=$writers "${window[@]}"
      measure "$row" baseline "$bin/bench_runtime" pg-batched writers=$writers "${window[@]}"
      measure "$row" baseline2 "$bin/bench_runtime" pg-unbatched writers=$writers "${window[@]}"
    done
  done
else
  for writers in 1 64 1024; do note "durable-$writers" "skipped: needs PostgreSQL: run under pg_virtualenv"; done
fi

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p bench/results
cp "$raw" bench/results/latest.raw.tsv  # every measurement as measured, for a report re-run
python3 bench/report.py --raw "$raw" --json bench/results/latest.json --command "$command_line" \
  --commit "$commit" --quick "$quick" --reps "$reps"
if [ "$failed" != 0 ]; then
  echo "bench/run.sh: some measurements failed (see the table)" >&2
  exit 1
fi
