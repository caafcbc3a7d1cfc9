#!/usr/bin/env bash
# The chaos test's long form, for an operator (docs/CHAOS.md): builds what it needs, brings a throwaway
# PostgreSQL (pg_virtualenv -t) unless the PG* environment names one, and runs silo_chaos, which prints its
# progress every 5 s and the report at the end. Exit status: 0 all invariants held, 1 one broke, 2 the
# run could not be set up.
# Usage: tests/chaos/run.sh [--minutes N] [--seed N] [--silos N] [--grains N] [--max-kill-recovery-ms N]
#        (SILO_BUILD_DIR picks the build directory; default build)
set -euo pipefail
cd "$(dirname "$0")/../.."

minutes=5
seed=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --silos|--grains|--max-kill-recovery-ms|--pg-outage) extra+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "tests/chaos/run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$minutes" in ''|*[!0-9]*) echo "tests/chaos/run.sh: --minutes takes a whole number" >&2; exit 2 ;; esac

build_dir="${SILO_BUILD_DIR:-build}"
if ! command -v pg_virtualenv >/dev/null || ! command -v cmake >/dev/null; then
  ./deploy/install-deps.sh
fi
if [ ! -f "$build_dir/build.ninja" ]; then
  echo "== configure $build_dir"
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSILO_BUILD_TESTS=ON >/dev/null
fi
echo "== build (silo_chaos, silod, chaosgrains)"
cmake --build "$build_dir" --target silo_chaos silod chaosgrains

out="$build_dir/chaos/seed-$seed-$(date +%Y%m%dT%H%M%S)"
cmd=("$build_dir/bin/silo_chaos" --seconds "$((minutes * 60))" --seed "$seed" --out "$out" "${extra[@]}")
echo "== chaos: $minutes min, seed $seed (report and logs in $out)"
if [ -n "${PGHOST:-}" ]; then
  # Someone else's server is never stopped: silo_chaos makes the outage only on a pg_virtualenv cluster.
  echo "using the PostgreSQL of the PG* environment (PGHOST=$PGHOST)"
  exec "${cmd[@]}"
fi
exec pg_virtualenv -t -- "${cmd[@]}"
