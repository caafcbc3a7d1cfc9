#!/usr/bin/env bash
# A silo cluster on this machine, for development and demos: N silods sharing a PostgreSQL membership table.
#
#   deploy/cluster-local.sh start N   start N silods (silo ports 11111+i, gateways 30000+i, cluster id "local")
#   deploy/cluster-local.sh stop      stop them (SIGTERM, then wait) and the PostgreSQL this script started
#   deploy/cluster-local.sh status    siloctl status of the running cluster, or say that nothing runs
#
# PostgreSQL: the PG* environment (PGHOST, PGPORT, PGUSER, ...) when it is set and the server answers;
# otherwise a throwaway server of its own (initdb into the run directory, reachable only through a Unix
# socket there, so no TCP port can collide), removed again by `stop`.
# Everything lives in one run directory: $SILO_RUN_DIR, default /tmp/silo-cluster (configs, logs, pid
# files). The build is not run here: build/bin/silod, build/bin/siloctl and the iot and bench plugins must
# exist.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run_dir=${SILO_RUN_DIR:-/tmp/silo-cluster}
silod=$root/build/bin/silod
siloctl=$root/build/bin/siloctl
plugins=$root/build/plugins
pg_dir=$run_dir/postgres
pg_port=5432 # only names the socket file: the throwaway server listens on no TCP port
cluster_id=local

say() { echo "cluster-local: $*"; }
die() {
  echo "cluster-local: $*" >&2
  exit 1
}

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

# ---- processes -------------------------------------------------------------------------------------------

# True if the pid file names a live silod (a pid file left by a crash may name an unrelated process now).
silod_alive() {
  local pid_file=$1 pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$silod"
}

silo_dirs() {
  local d
  for d in "$run_dir"/silo-*; do
    [ -d "$d" ] && echo "$d"
  done | sort -t- -k2 -n
}

running_silos() {
  local d
  for d in $(silo_dirs); do
    silod_alive "$d/silod.pid" && echo "$d"
  done
  return 0
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---- PostgreSQL ----------------------------------------------------------------------------------------

pg_bin() {
  local dir
  for dir in $(printf "%s\n" /usr/lib/postgresql/*/bin | sort -t/ -k5 -V -r); do
    [ -x "$dir/$1" ] && {
      echo "$dir/$1"
      return
    }
  done
  command -v "$1" || return 1
}

# Runs a command as the owner of the throwaway server (PostgreSQL refuses to run as root).
as_pg_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_started_here() { [ -f "$pg_dir/started-by-cluster-local" ]; }

pg_env_answers() {
  local isready
  isready=$(pg_bin pg_isready) || return 1
  "$isready" -q -t 3 >/dev/null 2>&1
}

# Writes $run_dir/pg.env: the PG* settings the silods get.
start_postgres() {
  if pg_started_here && [ -f "$pg_dir/data/postmaster.pid" ] && as_pg_owner "$(pg_bin pg_ctl)" -D "$pg_dir/data" status >/dev/null 2>&1; then
    say "PostgreSQL: already running (started by this script, socket in $pg_dir)"
    return
  fi
  if env | grep -qE '^PG(HOST|PORT|USER|DATABASE|SERVICE)='; then
    if pg_env_answers; then
      say "PostgreSQL: using the PG* environment (PGHOST=${PGHOST:-} PGPORT=${PGPORT:-} PGUSER=${PGUSER:-} PGDATABASE=${PGDATABASE:-})"
      # The silods inherit the PG* variables from this script (no file: PGPASSWORD may be among them).
      rm -f "$run_dir/pg.env"
      return
    fi
    say "PostgreSQL: the PG* environment is set but its server does not answer; starting a throwaway one instead"
  fi
  local initdb pg_ctl
  initdb=$(pg_bin initdb) || die "initdb not found: install PostgreSQL (deploy/install-deps.sh) or set PG* to a running server"
  pg_ctl=$(pg_bin pg_ctl) || die "pg_ctl not found: install PostgreSQL (deploy/install-deps.sh) or set PG* to a running server"
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    die "running as root and there is no 'postgres' user to run a throwaway PostgreSQL as; set PG* to a running server"
  fi
  mkdir -p "$pg_dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$pg_dir"
  chmod 700 "$pg_dir"
  if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
    say "PostgreSQL: initdb $pg_dir/data"
    as_pg_owner "$initdb" -D "$pg_dir/data" -U postgres -A trust >"$pg_dir/initdb.log" 2>&1 ||
      die "initdb failed; see $pg_dir/initdb.log"
  fi
  say "PostgreSQL: starting a throwaway server (socket in $pg_dir, log $pg_dir/postgres.log)"
  as_pg_owner "$pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=''" start >/dev/null ||
    die "PostgreSQL did not start; see $pg_dir/postgres.log"
  touch "$pg_dir/started-by-cluster-local"
  cat >"$run_dir/pg.env" <<EOF
export PGHOST=$pg_dir
export PGPORT=$pg_port
export PGUSER=postgres
export PGDATABASE=postgres
EOF
}

stop_postgres() {
  pg_started_here || return 0
  local pg_ctl
  pg_ctl=$(pg_bin pg_ctl) || die "pg_ctl not found: cannot stop the PostgreSQL in $pg_dir"
  if [ -f "$pg_dir/data/postmaster.pid" ]; then
    say "PostgreSQL: stopping the throwaway server"
    as_pg_owner "$pg_ctl" -D "$pg_dir/data" -w -m fast stop >/dev/null || die "could not stop PostgreSQL in $pg_dir/data"
  fi
  # Throwaway: the next start begins with an empty database. The server log stays for post-mortems.
  rm -rf "$pg_dir/data" "$pg_dir/started-by-cluster-local" "$run_dir/pg.env"
}

# ---- silods --------------------------------------------------------------------------------------------

write_config() {
  local i=$1 dir=$2
  cat >"$dir/silod.yaml" <<EOF
# Written by deploy/cluster-local.sh: silo $i of the local cluster.
cluster:
  id: $cluster_id
silo:
  name: silo-$i
  listen: 127.0.0.1:$((11111 + i))
  threads: 2
  shutdown_timeout: 15s
gateway:
  listen: 127.0.0.1:$((30000 + i))
membership:
  provider: postgres
  dsn: ""                      # the PG* environment
plugins:
  dir: $plugins
  load: [iot, bench]
  required: true
logging:
  level: info
EOF
}

# Waits until the silod in `dir` logged readiness; false if it exited or took over 30 s.
wait_ready() {
  local dir=$1
  for _ in $(seq 1 300); do
    grep -q "silod ready" "$dir/silod.log" 2>/dev/null && return 0
    # kill -0, not silod_alive: right after the fork the process may not have exec'd silod yet.
    kill -0 "$(cat "$dir/silod.pid")" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

active_count() {
  "$siloctl" --gateway 127.0.0.1:30000 --timeout 2s status 2>/dev/null | grep -cw active || true
}

cmd_start() {
  local n=${1:-}
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "start needs the number of silos, e.g.: $0 start 3"
  [ "$n" -le 100 ] || die "at most 100 silos (gateway ports 30000..30099)"
  if [ ! -x "$silod" ] || [ ! -x "$siloctl" ] || [ ! -f "$plugins/iot.so" ] || [ ! -f "$plugins/bench.so" ]; then
    die "build first (need build/bin/silod, build/bin/siloctl, build/plugins/iot.so and bench.so):
  cmake -S $root -B $root/build -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build $root/build --target silod siloctl iot bench"
  fi
  mkdir -p "$run_dir"
  local running
  running=$(running_silos | wc -l)
  if [ "$running" -gt 0 ]; then
    if [ "$running" -eq "$n" ]; then
      say "already running: $n silos (run directory $run_dir)"
      cmd_status
      return
    fi
    die "$running silos already run in $run_dir; '$0 stop' first to start $n"
  fi
  local i
  for ((i = 0; i < n; i++)); do
    port_in_use $((11111 + i)) && die "port $((11111 + i)) (silo-$i's silo.listen) is in use by another process"
    port_in_use $((30000 + i)) && die "port $((30000 + i)) (silo-$i's gateway) is in use by another process"
  done
  # Leftovers of an earlier, larger cluster would confuse `status`.
  rm -rf "$run_dir"/silo-*
  start_postgres
  say "starting $n silods in cluster '$cluster_id' (run directory $run_dir)"
  for ((i = 0; i < n; i++)); do
    local dir=$run_dir/silo-$i
    mkdir -p "$dir"
    write_config "$i" "$dir"
    # A subshell with the PG* settings; stdin from /dev/null and no controlling job, so the silods outlive
    # this script and its terminal (silod takes SIGHUP as "reopen the log").
    (
      # shellcheck disable=SC1091
      [ ! -f "$run_dir/pg.env" ] || . "$run_dir/pg.env"
      exec "$silod" --config "$dir/silod.yaml" </dev/null >"$dir/silod.log" 2>&1
    ) &
    echo $! >"$dir/silod.pid"
  done
  local failed=0
  for ((i = 0; i < n; i++)); do
    local dir=$run_dir/silo-$i
    if wait_ready "$dir"; then
      say "silo-$i ready: pid $(cat "$dir/silod.pid"), silo 127.0.0.1:$((11111 + i)), gateway 127.0.0.1:$((30000 + i)), log $dir/silod.log"
    else
      failed=1
      echo "---- silo-$i ($dir/silod.log):" >&2
      tail -n 20 "$dir/silod.log" >&2 || true
      say "silo-$i did not become ready (log above)" >&2
    fi
  done
  if [ "$failed" -ne 0 ]; then
    say "stopping what started; fix the error above and start again" >&2
    cmd_stop >&2
    exit 1
  fi
  # Ready means joined; wait until silo-0's view has every silo active, so the status below is complete.
  for _ in $(seq 1 100); do
    [ "$(active_count)" -ge "$n" ] && break
    sleep 0.1
  done
  cmd_status
  say "stop with: $0 stop"
}

cmd_stop() {
  local dirs pids=() d
  dirs=$(running_silos)
  if [ -z "$dirs" ]; then
    say "no silod runs (run directory $run_dir)"
  else
    for d in $dirs; do
      pids+=("$(cat "$d/silod.pid")")
      say "stopping $(basename "$d") (pid $(cat "$d/silod.pid"), SIGTERM)"
      kill -TERM "$(cat "$d/silod.pid")" 2>/dev/null || true
    done
    # shutdown_timeout is 15 s; a silod still there after 30 s is stuck.
    for _ in $(seq 1 300); do
      [ -z "$(running_silos)" ] && break
      sleep 0.1
    done
    for d in $(running_silos); do
      say "$(basename "$d") (pid $(cat "$d/silod.pid")) did not stop within 30 s: SIGKILL; see $d/silod.log" >&2
      kill -KILL "$(cat "$d/silod.pid")" 2>/dev/null || true
    done
    say "stopped ${#pids[@]} silods; logs stay in $run_dir/silo-*/silod.log"
  fi
  for d in $(silo_dirs); do
    rm -f "$d/silod.pid"
  done
  stop_postgres
}

cmd_status() {
  local dirs d
  dirs=$(running_silos)
  if [ -z "$dirs" ]; then
    say "no silod runs (run directory $run_dir)"
    pg_started_here && say "PostgreSQL started by this script still runs (socket in $pg_dir); '$0 stop' stops it"
    return 0
  fi
  for d in $(silo_dirs); do
    if silod_alive "$d/silod.pid"; then
      say "$(basename "$d"): pid $(cat "$d/silod.pid"), log $d/silod.log"
    elif [ -f "$d/silod.pid" ]; then
      say "$(basename "$d"): NOT RUNNING (exited; see $d/silod.log)"
    fi
  done
  # Ask the first running silo's gateway; silo-0 may be the one that is down.
  local first gateway
  first=$(echo "$dirs" | head -n 1)
  gateway=127.0.0.1:$((30000 + ${first##*-}))
  echo "\$ siloctl --gateway $gateway status"
  "$siloctl" --gateway "$gateway" status
}

case "${1:-}" in
  start) cmd_start "${2:-}" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
