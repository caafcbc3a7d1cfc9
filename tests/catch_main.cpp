// Catch2's main for every test executable, plus a tally of the test cases each run really executed.
//
// ctest sees one process per test case and only its exit code; a run that executed nothing looks the
// same as one that passed (three tests once "passed" that way without running: their names held a ';' and
// catch_discover_tests split each into two filters that matched nothing). tests/CMakeLists.txt passes
// `--warn NoTests` so such a run fails, and this listener appends one line per process to the file named
// by SILO_TEST_TALLY, which tests/run.sh sums into the number of test cases that actually ran.

#define CATCH_CONFIG_MAIN
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <catch2/catch.hpp>

namespace {

class Tally final : public Catch::TestEventListenerBase {
 public:
  using TestEventListenerBase::TestEventListenerBase;

  void testRunEnded(const Catch::TestRunStats& stats) override {
    const char* path = std::getenv("SILO_TEST_TALLY");
    if (!path || !*path) return;
    // "<executable> <test cases run> <failed>": one short line, written with a single O_APPEND write so
    // that parallel test processes never interleave their lines.
    const auto& cases = stats.totals.testCases;
    const std::string line =
        stats.runInfo.name + " " + std::to_string(cases.total()) + " " + std::to_string(cases.failed) + "\n";
    const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    [[maybe_unused]] const auto written = ::write(fd, line.data(), line.size());
    ::close(fd);
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(Tally)
