#!/usr/bin/env bash
# Builds silod, its sample plugins and the messaging and cluster test suites with AddressSanitizer and
# UBSan (build-asan, -DSILO_SANITIZE=address,undefined) and runs both suites under them, with a throwaway
# PostgreSQL from pg_virtualenv. A sanitizer report aborts the silod (or test) that made it, so it shows up
# as a crashed silod or a failed test; the messaging suite also scans the silods' logs for reports.
# Usage: ./tests/sanitize.sh          (tests/run.sh runs it after the normal suites when SILO_SANITIZE_TESTS=1)
set -euo pipefail
cd "$(dirname "$0")/.."

# LeakSanitizer stays on (silod, the tests and protoc-gen-silo exit without reports, so a leak fails them).
# abort_on_error: a core/abort rather than exit(1). halt_on_error (UBSan): undefined behaviour stops the
# process like an ASan finding, instead of a log line nobody reads.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

echo "== sanitizer build (address,undefined) in build-asan"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSILO_BUILD_TESTS=ON -DSILO_BUILD_BENCH=OFF \
  -DSILO_SANITIZE=address,undefined >/dev/null
cmake --build build-asan --target silod iot bench silo_messaging_tests silo_cluster_tests
echo "== messaging and cluster tests under ASan/UBSan"
suites='build-asan/bin/silo_messaging_tests && build-asan/bin/silo_cluster_tests'
if [ "$(id -u)" -eq 0 ] || [ -w /var/run/postgresql ]; then
  pg_virtualenv -t -- bash -c "$suites"
else
  bash -c "$suites"
fi
