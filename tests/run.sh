#!/usr/bin/env bash
# Installs what silo needs, builds everything (Release, tests and benchmarks included), and runs every test.
# Tests that need PostgreSQL get a throwaway cluster from pg_virtualenv (PG* variables set for them).
# Usage: ./tests/run.sh [ctest arguments...]   e.g.  ./tests/run.sh -L conformance
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/install-deps.sh
echo "== configure"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSILO_BUILD_TESTS=ON -DSILO_BUILD_BENCH=ON >/dev/null
echo "== build ($(nproc) cores)"
cmake --build build
echo "== test"
# Two at a time: the tests are safe in parallel (each test process binds its silods on a loopback address of
# its own, and the tests that stop PostgreSQL are RUN_SERIAL; see docs/ARCHITECTURE.md, "Tests"), and
# tests that time their own behaviour leave margin for a loaded 2-core machine.
ctest_cmd=(ctest --test-dir build --output-on-failure --no-tests=error -j2 "$@")
# Each test process appends "<executable> <test cases run> <failed>" here (tests/catch_main.cpp).
export SILO_TEST_TALLY="$PWD/build/catch-tally.txt"
rm -f "$SILO_TEST_TALLY"
rc=0
if [ "$(id -u)" -eq 0 ] || [ -w /var/run/postgresql ]; then
  # -t: a temporary cluster of its own, so a second run (or a developer's) on this machine cannot clash.
  # On a port of its own too: pg_createcluster gives each new cluster the lowest free port from 5432, so
  # while an outage test has our server stopped, another pg_virtualenv starting on the machine would take
  # its port and our restart would fail (seen with several suites sharing a machine). A random port in
  # 20000-29999 is far from where pg_createcluster looks and below the ephemeral range of outgoing sockets.
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 10000))
    if [ ! -e "/var/run/postgresql/.s.PGSQL.$port" ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      break
    fi
  done
  # max_connections: two cluster tests at once (ctest -j2) run up to 8 silods of ~8 connections each
  # (storage pool, membership and its listener, reminders) beside their own; the default 100 is too close.
  PGPORT=$port pg_virtualenv -t -o max_connections=300 -- "${ctest_cmd[@]}" || rc=$?
else
  echo "tests/run.sh: not root: using the PostgreSQL of your PG* environment for the database tests (they fail without one)"
  echo "tests/run.sh: not running the tests that stop PostgreSQL (label pg_outage): they only stop pg_virtualenv's throwaway cluster"
  "${ctest_cmd[@]}" -LE pg_outage || rc=$?
fi
# ctest counts its entries; this counts what Catch2 really ran in them (an entry that ran none fails anyway:
# --warn NoTests).
if [ -f "$SILO_TEST_TALLY" ]; then
  awk '{ cases += $2; failed += $3; n++; if ($2 == 0) empty++ }
       END { printf "== Catch2: %d test cases ran in %d test processes, %d failed, %d processes ran none\n",
             cases, n, failed, empty }' "$SILO_TEST_TALLY"
fi
# Opt-in: the messaging and cluster suites again, built with AddressSanitizer and UBSan (tests/sanitize.sh).
if [ "${SILO_SANITIZE_TESTS:-0}" = 1 ]; then
  ./tests/sanitize.sh || rc=$?
fi
exit "$rc"
