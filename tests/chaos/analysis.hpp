#pragma once
// The chaos test's verdict, computed after the run from what the driver recorded (model.hpp): plain values
// in, a report and a list of broken invariants out, so it is unit-tested on made-up timelines
// (analysis.test.cpp) without a cluster.
//
// The invariants, per grain (one driver coroutine per grain, so its calls never overlap in time):
// - lost acknowledged write: a final read below the last acknowledged seq, or a successful write whose
//   activation held less than an acknowledged seq (its etag matched a store that lacked the write);
// - stale read: a read returning less than a seq acknowledged before the read was sent;
// - read going back: a read (or a write's `previous`) below a value an earlier read returned, though no
//   acknowledged write explains it (a value was visible that was not durable);
// - impossible value: above any seq ever sent;
// - duplicate activation: activation A answered, then B, then A again (or B, A, B). Activations of one
//   grain are sequential when single activation holds, and the calls are sequential, so the answers of
//   each activation must form one contiguous run; interleaved runs prove both were alive at once. The
//   window is estimated from the midpoints of the first and last calls each answered;
// - answer from a silo declared dead: a successful call sent to a silo after SIGCONT ended a freeze that
//   outlasted the failure detector (the silo then exits 3: it was declared dead while frozen);
// - crash: a silod exit we did not cause (model.hpp ProcessRecord::unexpected), or a start that never
//   became ready;
// - not answering at the end: a grain the final check could not read through every gateway.

#include <string>
#include <vector>

#include "chaos/model.hpp"

namespace silo::chaos {

struct Verdict {
  std::string report;               // the whole printed report
  std::vector<std::string> broken;  // one line per broken invariant; empty: pass
};

/// `chaos_end_us`: when fault injection stopped (recovery times are measured up to the end of the run).
/// `final_check_ok`: grains whose final reads all succeeded, out of logs.size().
Verdict analyze(const RunInfo& run, const std::vector<GrainLog>& logs, const std::vector<Fault>& faults,
                const std::vector<ProcessRecord>& processes, std::int64_t chaos_end_us);

/// Every call of every grain as CSV (grain, op, phase, gateway, seq, sent_us, done_us, ok, code, result,
/// previous, activation, pid), for post-mortems: grep one grain to see its whole story.
void write_timeline(const std::string& path, const std::vector<GrainLog>& logs);

}  // namespace silo::chaos
