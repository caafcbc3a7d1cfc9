// The chaos test's verdict on made-up timelines: each invariant is caught, and a clean run passes. A
// harness that cannot fail is no harness.

#include <catch2/catch.hpp>

#include "chaos/analysis.hpp"

using namespace silo::chaos;

namespace {

constexpr std::int64_t kS = 1'000'000;  // one second in microseconds

// A builder for one grain's timeline: each call takes 10 ms and starts 100 ms after the previous one.
struct Timeline {
  GrainLog log;
  std::int64_t t = kS;

  Timeline& call(Op op, bool ok, std::int64_t seq_or_result, std::uint64_t activation, std::int64_t pid,
                 std::int64_t previous = 0, Phase phase = Phase::chaos) {
    Sample s;
    s.op = op;
    s.phase = phase;
    s.gateway = 0;
    s.ok = ok;
    s.sent_us = t;
    s.done_us = t + 10'000;
    t += 100'000;
    if (op == Op::write) {
      s.seq = seq_or_result;
      s.result = seq_or_result;
      s.previous = previous;
      log.last_attempted = std::max(log.last_attempted, seq_or_result);
    } else {
      s.result = seq_or_result;
    }
    if (ok) {
      s.activation = activation;
      s.pid = pid;
    } else {
      s.code = 14;
    }
    log.samples.push_back(s);
    return *this;
  }
  Timeline& write(std::int64_t seq, std::uint64_t a, std::int64_t pid, std::int64_t previous) {
    return call(Op::write, true, seq, a, pid, previous);
  }
  Timeline& read(std::int64_t result, std::uint64_t a, std::int64_t pid) {
    return call(Op::read, true, result, a, pid);
  }
  Timeline& final_read(std::int64_t result, std::uint64_t a, std::int64_t pid) {
    return call(Op::read, true, result, a, pid, 0, Phase::final_check);
  }
  Timeline& wait(std::int64_t us) {
    t += us;
    return *this;
  }
};

RunInfo info() {
  RunInfo r;
  r.seed = 1;
  r.seconds = 10;
  r.silos = 3;
  r.grains = 1;
  r.pg_outage = "no";
  return r;
}

std::vector<ProcessRecord> silos() {
  std::vector<ProcessRecord> out;
  for (std::int64_t pid : {100, 200, 300}) {
    ProcessRecord p;
    p.node = "silo-" + std::to_string(pid / 100);
    p.generation = 1;
    p.pid = pid;
    p.exit_code = 0;
    p.expected = "0";
    out.push_back(p);
  }
  return out;
}

Verdict verdict(const Timeline& t, const std::vector<Fault>& faults = {},
                const std::vector<ProcessRecord>& processes = silos(), RunInfo run = info()) {
  Timeline copy = t;
  copy.log.key = "g";
  return analyze(run, {copy.log}, faults, processes, 10 * kS);
}

bool mentions(const Verdict& v, const std::string& text) {
  for (const auto& b : v.broken)
    if (b.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("chaos analysis: a clean timeline with a failover passes", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0).write(2, 0xA, 100, 1).read(2, 0xA, 100);
  t.call(Op::write, false, 3, 0, 0);  // may have run: 3 is allowed later
  t.read(3, 0xB, 200).write(4, 0xB, 200, 3).final_read(4, 0xB, 200).final_read(4, 0xB, 200);
  const Verdict v = verdict(t);
  INFO(v.report);
  CHECK(v.broken.empty());
  CHECK(v.report.find("RESULT: PASS") != std::string::npos);
}

TEST_CASE("chaos analysis: a read below an acknowledged seq is a stale read", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0).write(2, 0xA, 100, 1).read(1, 0xB, 200).final_read(2, 0xB, 200);
  const Verdict v = verdict(t);
  INFO(v.report);
  CHECK(mentions(v, "1 stale reads"));
}

TEST_CASE("chaos analysis: a final read below the last acknowledged seq is a lost write", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0).write(2, 0xA, 100, 1).final_read(1, 0xB, 200);
  const Verdict v = verdict(t);
  INFO(v.report);
  CHECK(mentions(v, "1 lost acknowledged writes"));
}

TEST_CASE(
    "chaos analysis: a successful write on an activation that missed an acknowledged one is a lost write",
    "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0).write(2, 0xA, 100, 1).write(3, 0xB, 200, 1).final_read(3, 0xB, 200);
  const Verdict v = verdict(t);
  INFO(v.report);
  CHECK(mentions(v, "1 lost acknowledged writes"));
}

TEST_CASE("chaos analysis: a read that goes back below an earlier read is reported", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0);
  t.call(Op::write, false, 2, 0, 0);  // failed, yet a read shows it: not durable...
  t.read(2, 0xA, 100).read(1, 0xB, 200).final_read(1, 0xB, 200);  // ...it is gone again
  const Verdict v = verdict(t);
  INFO(v.report);
  CHECK(mentions(v, "reads going back"));
  CHECK_FALSE(mentions(v, "stale"));
}

TEST_CASE("chaos analysis: interleaved answers of two activations are a duplicate window", "[chaos]") {
  Timeline t;
  t.read(0, 0xA, 100).read(0, 0xB, 200).wait(kS).read(0, 0xA, 100).final_read(0, 0xB, 200);
  const Verdict v = verdict(t);
  INFO(v.report);
  CHECK(mentions(v, "1 duplicate-activation windows"));

  // One activation after the other, however often: no window.
  Timeline seq;
  seq.read(0, 0xA, 100).read(0, 0xA, 100).read(0, 0xB, 200).final_read(0, 0xB, 200).final_read(0, 0xB, 200);
  CHECK(verdict(seq).broken.empty());
}

TEST_CASE("chaos analysis: an exit we did not cause is a crash", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0).final_read(1, 0xA, 100);
  auto processes = silos();
  processes[1].exit_code = 134;  // SIGABRT
  processes[1].expected = "137";
  processes[1].unexpected = true;
  const Verdict v = verdict(t, {}, processes);
  INFO(v.report);
  CHECK(mentions(v, "1 crashed"));
}

TEST_CASE("chaos analysis: recovery after a kill is measured, and a limit on it is enforced", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0);  // +1.0 s on pid 100
  Fault f;
  f.kind = "kill9";
  f.at_us = 2 * kS;
  f.victims = {"silo-1"};
  f.pids = {100};
  t.wait(2 * kS);  // the next call is sent at +3.1 s, answered at +3.11 s
  t.write(2, 0xB, 200, 1).final_read(2, 0xB, 200);
  const Verdict ok = verdict(t, {f});
  INFO(ok.report);
  CHECK(ok.broken.empty());
  CHECK(ok.report.find("p100 1110 ms") != std::string::npos);

  RunInfo strict = info();
  strict.max_kill_recovery_ms = 1000;
  CHECK(mentions(verdict(t, {f}, silos(), strict), "kill -9 recovery"));
}

TEST_CASE("chaos analysis: a grain the final check could not read fails the run", "[chaos]") {
  Timeline t;
  t.write(1, 0xA, 100, 0).call(Op::read, false, 0, 0, 0, 0, Phase::final_check);
  CHECK(mentions(verdict(t), "not answering"));
}

TEST_CASE("chaos analysis: a silo declared dead while frozen must not answer after SIGCONT", "[chaos]") {
  Fault f;
  f.kind = "sigstop";
  f.at_us = 2 * kS;
  f.duration_us = 2 * kS;  // SIGCONT at +4 s
  f.victims = {"silo-1"};
  f.pids = {100};
  auto processes = silos();
  processes[0].exit_code = 3;  // it read itself dead after SIGCONT
  processes[0].expected = "3";
  processes[0].ended_us = 6 * kS;

  Timeline t;
  t.write(1, 0xA, 100, 0).wait(2 * kS).write(2, 0xB, 200, 1).wait(kS);  // +3.1 s: B elsewhere
  t.read(1, 0xA, 100);                                                  // +4.2 s: the frozen silo answers
  t.final_read(2, 0xB, 200);
  const Verdict v = verdict(t, {f}, processes);
  INFO(v.report);
  CHECK(mentions(v, "1 answers from silos declared dead"));

  // Not declared dead (it kept running): answering after SIGCONT is fine.
  processes[0].exit_code = 0;
  processes[0].expected = "0";
  Timeline ok;
  ok.write(1, 0xA, 100, 0).wait(3 * kS).read(1, 0xA, 100).final_read(1, 0xA, 100);
  CHECK(verdict(ok, {f}, processes).broken.empty());
}
