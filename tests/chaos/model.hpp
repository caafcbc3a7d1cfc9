#pragma once
// What the chaos driver records while it runs, and what the analysis reads afterwards: every call's outcome
// (with the identity of the activation that answered), every fault injected, every silod process started.
// Times are microseconds since the run started, on the driver's steady clock: one clock for everything.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace silo::chaos {

enum class Op : std::uint8_t { write, read };
enum class Phase : std::uint8_t { chaos, settle, final_check };

/// One call to one grain. Calls to one grain never overlap: each grain has one driver coroutine that waits
/// for a call's outcome before the next.
struct Sample {
  Op op = Op::read;
  Phase phase = Phase::chaos;
  int gateway = -1;          // node index whose gateway took the call
  std::int64_t seq = 0;      // write: the seq sent
  std::int64_t sent_us = 0;  // just before the call
  std::int64_t done_us = 0;  // when its outcome arrived
  bool ok = false;
  int code = 0;               // silo::StatusCode when !ok
  std::int64_t result = 0;    // read: stored seq; write: seq written
  std::int64_t previous = 0;  // write: what the activation held before
  std::uint64_t activation = 0;
  std::int64_t pid = 0;
};

/// One grain's calls in issue order (which is also completion order).
struct GrainLog {
  std::string key;
  std::int64_t last_attempted = 0;  // highest seq ever sent to it
  std::vector<Sample> samples;
};

/// A fault the driver injected.
struct Fault {
  std::string kind;  // kill9, kill9x2, sigterm, restart, sigstop, pg-outage
  std::int64_t at_us = 0;
  std::int64_t duration_us = 0;      // sigstop: until SIGCONT; pg-outage: until PostgreSQL answered again
  std::vector<std::string> victims;  // node names
  std::vector<std::int64_t> pids;    // their processes at the time
};

/// One silod process (one generation of one node) and how it ended.
struct ProcessRecord {
  std::string node;
  int generation = 0;  // 1 for the first start of the node
  std::int64_t pid = 0;
  std::int64_t started_us = 0;
  std::int64_t ended_us = -1;    // -1: still running at the end of the run
  std::optional<int> exit_code;  // 128+signal when killed by one
  std::string expected;          // the exits our own actions allow, e.g. "137" or "0" or "3 or running"
  bool unexpected = false;       // a crash: a signal we did not send, or an exit code we did not cause
  bool never_ready = false;      // no READY=1 within the start timeout
  std::string log_file;          // its log, kept in the output directory
  std::string log_tail;          // last lines, for the report when it crashed
  std::string note;              // e.g. a graceful stop that needed SIGKILL
  std::int64_t term_us = -1;     // when we sent SIGTERM, if we did
};

/// What the run was asked to do, printed at the top of the report.
struct RunInfo {
  std::uint64_t seed = 0;
  int seconds = 0;
  int silos = 0;
  int grains = 0;
  std::string pg_outage;                     // "yes" or why not
  std::int64_t max_kill_recovery_ms = 0;     // 0: reported only
  std::int64_t shutdown_timeout_ms = 10000;  // silo.shutdown_timeout of the silods
  bool reformed = true;                      // every silo came back and saw all the others after the faults
};

}  // namespace silo::chaos
