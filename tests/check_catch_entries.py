#!/usr/bin/python3
"""Checks that ctest runs every Catch2 test case of the build exactly once, as one entry of its own.

catch_discover_tests turns each test case name into a ctest entry whose argument is the name as a Catch2
filter. A name holding ';' becomes two entries (CMake lists split there) whose filters match nothing, and
three tests "passed" that way without ever running. This check fails when:
  - a test case name holds ';' (named, with its executable);
  - a test case has no entry, or more than one (e.g. a [pg_outage] test of an executable that lacks PG_OUTAGE
    in silo_add_test, which discovers only the other tests);
  - an entry's filter is not the name of a test case (it would match nothing, or something else);
  - an entry runs without --warn NoTests (a filter matching nothing would then pass).
Usage: check_catch_entries.py BUILD_DIR
"""

import json
import os
import subprocess
import sys

# Programs in build/bin that ctest runs but that are not Catch2 sessions (drivers with options of their own;
# running them with --list-test-names-only would start them).
NOT_CATCH = {"silo_chaos"}


def catch_names(executable, spec):
    out = subprocess.run([executable, spec, "--list-test-names-only"], capture_output=True, text=True,
                         timeout=60).stdout
    return [line for line in out.splitlines() if line.strip()]


def unescape(spec):
    # CatchAddTests.cmake escapes ',', '[' and ']' with a backslash in the filter.
    for c in ",[]":
        spec = spec.replace("\\" + c, c)
    return spec


def main():
    build = os.path.realpath(sys.argv[1])
    bin_dir = os.path.join(build, "bin")
    listing = subprocess.run(["ctest", "--test-dir", build, "--show-only=json-v1"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    entries = {}  # executable -> [(entry name, filter)]
    errors = []
    for test in json.loads(listing)["tests"]:
        command = test.get("command") or []
        if "_NOT_BUILT" in test["name"]:
            errors.append(f"{test['name']}: its executable was not built")
            continue
        if not command or os.path.dirname(os.path.realpath(command[0])) != bin_dir:
            continue  # not a Catch2 executable of the build (a script)
        if os.path.basename(command[0]) in NOT_CATCH:
            continue
        if "NoTests" not in command:
            errors.append(f"{test['name']}: runs without --warn NoTests")
        entries.setdefault(os.path.realpath(command[0]), []).append((test["name"], command[1]))

    cases = 0
    for executable, found in sorted(entries.items()):
        exe = os.path.basename(executable)
        # Hidden tests ([.]) too: their names must be runnable by name as well.
        for name in catch_names(executable, "*,[.]"):
            if ";" in name:
                errors.append(f"{exe}: test name holds ';' (ctest would split it): {name!r}")
        names = catch_names(executable, "*")
        cases += len(names)
        filters = [unescape(f) for _, f in found]
        for name in names:
            if filters.count(name) != 1:
                errors.append(f"{exe}: test case {name!r} has {filters.count(name)} ctest entries, not 1")
        for entry, f in found:
            if unescape(f) not in names:
                errors.append(f"{exe}: ctest entry {entry!r} runs filter {f!r}, which names no test case")

    for e in errors:
        print("FAIL", e)
    print(f"{cases} Catch2 test cases in {len(entries)} executables; "
          f"{sum(len(f) for f in entries.values())} ctest entries; {len(errors)} problems")
    return 1 if errors or not entries else 0


if __name__ == "__main__":
    sys.exit(main())
