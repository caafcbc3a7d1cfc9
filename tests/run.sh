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
# Serial: several tests time their own behaviour (deadlines, collection) and 2 cores are easily saturated.
ctest_cmd=(ctest --test-dir build --output-on-failure --no-tests=error "$@")
if [ "$(id -u)" -eq 0 ] || [ -w /var/run/postgresql ]; then
  # -t: a temporary cluster of its own, so a second run (or a developer's) on this machine cannot clash.
  pg_virtualenv -t -- "${ctest_cmd[@]}"
else
  echo "tests/run.sh: not root: using the PostgreSQL of your PG* environment for the database tests (they fail without one)"
  "${ctest_cmd[@]}"
fi

# Opt-in: the messaging and cluster suites again, built with AddressSanitizer and UBSan (tests/sanitize.sh).
if [ "${SILO_SANITIZE_TESTS:-0}" = 1 ]; then
  ./tests/sanitize.sh
fi
