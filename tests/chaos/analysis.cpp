#include "chaos/analysis.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <silo/error.hpp>

namespace silo::chaos {

namespace {

constexpr std::size_t kMaxDetails = 12;  // example lines printed per kind of violation

std::string secs(std::int64_t us) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(us) / 1e6);
  return buf;
}

std::string ms(std::int64_t us) {
  return std::to_string(us / 1000) + " ms";
}

std::string at(std::int64_t us) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "+%.3f s", static_cast<double>(us) / 1e6);
  return buf;
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Nearest-rank percentile of a non-empty sorted vector.
std::int64_t percentile(const std::vector<std::int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<std::size_t>(p * static_cast<double>(sorted.size()) + 0.999999);
  return sorted[std::min(sorted.size(), std::max<std::size_t>(rank, 1)) - 1];
}

struct Examples {
  long count = 0;
  std::vector<std::string> lines;
  void add(std::string line) {
    ++count;
    if (lines.size() < kMaxDetails) lines.push_back(std::move(line));
  }
  void print(std::ostream& out) const {
    for (const auto& l : lines)
      out << "    " << l << "\n";
    if (count > static_cast<long>(lines.size())) out << "    ... and " << count - lines.size() << " more\n";
  }
};

// Per activation of one grain: the first and last of its answers (index among the grain's successful
// calls, and the estimated instant it answered).
struct Span {
  std::size_t first = 0, last = 0;
  std::int64_t first_mid = 0, last_mid = 0;
  std::int64_t pid = 0;
};

}  // namespace

Verdict analyze(const RunInfo& run, const std::vector<GrainLog>& logs, const std::vector<Fault>& faults,
                const std::vector<ProcessRecord>& processes, std::int64_t chaos_end_us) {
  std::map<std::int64_t, std::string> silo_of_pid;
  for (const auto& p : processes)
    silo_of_pid[p.pid] = p.node + "#" + std::to_string(p.generation);
  auto who = [&](std::int64_t pid) {
    auto it = silo_of_pid.find(pid);
    return (it == silo_of_pid.end() ? "pid?" : it->second) + "(" + std::to_string(pid) + ")";
  };

  long writes_ok = 0, writes_failed = 0, reads_ok = 0, reads_failed = 0;
  std::map<std::string, long> failures;
  Examples lost, stale, back, impossible, dups, not_answering;
  std::int64_t worst_stale = 0, longest_dup = 0;
  std::set<std::string> stale_grains, dup_grains;

  for (const auto& g : logs) {
    std::int64_t acked = 0;     // highest acknowledged seq so far
    std::int64_t seen = 0;      // highest value a read or a write's `previous` showed so far
    std::int64_t read_max = 0;  // highest value a read returned so far
    std::map<std::uint64_t, Span> spans;
    std::size_t index = 0;
    std::map<int, bool> final_ok;  // gateway -> outcome of its last final read (the check retries failures)
    for (const auto& s : g.samples) {
      if (s.phase == Phase::final_check) final_ok[s.gateway] = s.ok;
      if (!s.ok) {
        (s.op == Op::write ? writes_failed : reads_failed)++;
        failures[std::string(s.op == Op::write ? "Write " : "Read ") +
                 std::string(to_string(static_cast<StatusCode>(s.code)))]++;
        continue;
      }
      const std::string where = at(s.sent_us) + " via gateway of node " + std::to_string(s.gateway) + ", " +
                                who(s.pid) + " activation " + hex(s.activation);
      auto [it, fresh] = spans.try_emplace(s.activation);
      if (fresh) {
        it->second.first = index;
        it->second.first_mid = (s.sent_us + s.done_us) / 2;
      }
      it->second.last = index;
      it->second.last_mid = (s.sent_us + s.done_us) / 2;
      it->second.pid = s.pid;
      ++index;

      const std::int64_t value = s.op == Op::read ? s.result : s.previous;
      if (s.result > g.last_attempted || value > g.last_attempted) {
        impossible.add(g.key + ": " + std::to_string(std::max(s.result, value)) +
                       " but the highest seq sent is " + std::to_string(g.last_attempted) + " (" + where +
                       ")");
      }
      if (s.op == Op::read) {
        ++reads_ok;
        if (s.result < acked) {
          if (s.phase == Phase::final_check) {
            lost.add(g.key + ": final read " + std::to_string(s.result) + " < acknowledged " +
                     std::to_string(acked) + " (" + where + ")");
          } else {
            stale.add(g.key + ": read " + std::to_string(s.result) + " < acknowledged " +
                      std::to_string(acked) + " (" + where + ")");
            stale_grains.insert(g.key);
            worst_stale = std::max(worst_stale, acked - s.result);
          }
        } else if (s.result < read_max) {
          back.add(g.key + ": read " + std::to_string(s.result) + " after a read of " +
                   std::to_string(read_max) + " (acknowledged " + std::to_string(acked) + "; " + where + ")");
        }
        read_max = std::max(read_max, s.result);
        seen = std::max(seen, s.result);
      } else {
        ++writes_ok;
        if (s.previous < acked) {
          lost.add(g.key + ": Write(" + std::to_string(s.seq) + ") succeeded on an activation holding " +
                   std::to_string(s.previous) + " < acknowledged " + std::to_string(acked) + " (" + where +
                   ")");
        } else if (s.previous < read_max) {
          back.add(g.key + ": Write(" + std::to_string(s.seq) + ") found " + std::to_string(s.previous) +
                   " after a read of " + std::to_string(read_max) + " (" + where + ")");
        }
        seen = std::max({seen, s.previous, s.seq});
        acked = std::max(acked, s.seq);
      }
    }
    if (final_ok.empty()) not_answering.add(g.key + ": no final read was made");
    for (const auto& [gateway, ok] : final_ok)
      if (!ok)
        not_answering.add(g.key + ": the final reads through node " + std::to_string(gateway) + " failed");

    // Interleaved answers of two activations: both were alive at once.
    std::vector<std::pair<std::uint64_t, Span>> list(spans.begin(), spans.end());
    for (std::size_t i = 0; i < list.size(); ++i) {
      for (std::size_t j = i + 1; j < list.size(); ++j) {
        const Span& a = list[i].second;
        const Span& b = list[j].second;
        if (!(a.first < b.last && b.first < a.last)) continue;
        const std::int64_t from = std::max(a.first_mid, b.first_mid);
        const std::int64_t to = std::min(a.last_mid, b.last_mid);
        const std::int64_t len = std::max<std::int64_t>(0, to - from);
        longest_dup = std::max(longest_dup, len);
        dup_grains.insert(g.key);
        dups.add(g.key + ": activations " + hex(list[i].first) + " on " + who(a.pid) + " and " +
                 hex(list[j].first) + " on " + who(b.pid) + " both answering from " + at(from) + " for ~" +
                 ms(len));
      }
    }
  }

  // A silo frozen until the others declared it dead (it exits 3 once it runs again and reads so) must not
  // answer anything after SIGCONT: its grains may already live elsewhere.
  Examples zombies;
  for (const auto& f : faults) {
    if (f.kind != "sigstop" || f.pids.empty()) continue;
    const std::int64_t resumed = f.at_us + f.duration_us;
    const auto p = std::find_if(processes.begin(), processes.end(),
                                [&](const ProcessRecord& r) { return r.pid == f.pids[0]; });
    if (p == processes.end() || p->exit_code != 3) continue;
    for (const auto& g : logs) {
      for (const auto& s : g.samples) {
        if (s.ok && s.pid == p->pid && s.sent_us >= resumed) {
          zombies.add(g.key + ": " + (s.op == Op::read ? "read " : "write ") + std::to_string(s.result) +
                      " " + at(s.sent_us) + " via gateway of node " + std::to_string(s.gateway) + " by " +
                      who(s.pid) + " (SIGCONT " + at(resumed) + ", exit 3 " + at(p->ended_us) + ")");
        }
      }
    }
  }

  // Crashes and starts that never became ready.
  Examples crashes;
  for (const auto& p : processes) {
    if (!p.unexpected && !p.never_ready) continue;
    std::ostringstream line;
    line << p.node << "#" << p.generation << " pid " << p.pid << ": "
         << (p.never_ready ? "never became ready" : "exit ")
         << (p.exit_code ? std::to_string(*p.exit_code) : std::string("(running)")) << " at "
         << at(p.ended_us) << ", expected " << p.expected << "; log " << p.log_file;
    if (!p.log_tail.empty()) line << "\n" << p.log_tail;
    crashes.add(line.str());
  }

  // Recovery: from each fault to the first answer of each grain that had answered from a victim last.
  std::ostringstream rec;
  std::map<std::string, std::vector<std::int64_t>> by_kind;
  std::int64_t kill_p100 = -1;
  long unrecovered = 0;
  for (const auto& f : faults) {
    if (f.kind == "pg-outage") {
      // Writes need the database: how long after it answered again until every grain's writes did.
      const std::int64_t back_at = f.at_us + f.duration_us;
      std::vector<std::int64_t> times;
      for (const auto& g : logs) {
        for (const auto& s : g.samples) {
          if (s.ok && s.op == Op::write && s.sent_us >= back_at) {
            times.push_back(s.done_us - back_at);
            break;
          }
        }
      }
      std::sort(times.begin(), times.end());
      rec << "  " << at(f.at_us) << " pg-outage " << secs(f.duration_us)
          << ": writes acknowledged again after "
          << "PostgreSQL answered: p50 " << ms(percentile(times, 0.5)) << ", p100 "
          << ms(percentile(times, 1.0)) << " (" << times.size() << " grains)\n";
      continue;
    }
    std::vector<std::int64_t> times;
    long missing = 0;
    for (const auto& g : logs) {
      const Sample* last = nullptr;
      for (const auto& s : g.samples)
        if (s.ok && s.done_us < f.at_us) last = &s;
      if (!last || std::find(f.pids.begin(), f.pids.end(), last->pid) == f.pids.end()) continue;
      const Sample* next = nullptr;
      for (const auto& s : g.samples) {
        if (s.ok && s.sent_us >= f.at_us) {
          next = &s;
          break;
        }
      }
      if (next)
        times.push_back(next->done_us - f.at_us);
      else
        ++missing;
    }
    unrecovered += missing;
    std::sort(times.begin(), times.end());
    auto& pooled = by_kind[f.kind];
    pooled.insert(pooled.end(), times.begin(), times.end());
    std::string victims;
    for (std::size_t i = 0; i < f.victims.size(); ++i)
      victims += (i ? "+" : "") + f.victims[i];
    rec << "  " << at(f.at_us) << " " << f.kind << " " << victims;
    if (f.duration_us > 0) rec << " (" << secs(f.duration_us) << ")";
    if (times.empty() && missing == 0)
      rec << ": no grain had answered from it last";
    else
      rec << ": " << times.size() << " grains answered again, p50 " << ms(percentile(times, 0.5)) << ", p100 "
          << ms(percentile(times, 1.0));
    if (missing) rec << "; " << missing << " NEVER answered again";
    rec << "\n";
  }
  std::ostringstream kinds;
  for (auto& [kind, times] : by_kind) {
    std::sort(times.begin(), times.end());
    kinds << "  " << kind << ": p50 " << ms(percentile(times, 0.5)) << ", p100 " << ms(percentile(times, 1.0))
          << " over " << times.size() << " grain recoveries\n";
    if ((kind == "kill9" || kind == "kill9x2") && !times.empty())
      kill_p100 = std::max(kill_p100, percentile(times, 1.0));
  }

  std::map<std::string, int> fault_counts;
  for (const auto& f : faults)
    fault_counts[f.kind]++;

  Verdict v;
  if (lost.count) v.broken.push_back(std::to_string(lost.count) + " lost acknowledged writes");
  if (stale.count) v.broken.push_back(std::to_string(stale.count) + " stale reads");
  if (back.count) v.broken.push_back(std::to_string(back.count) + " reads going back");
  if (impossible.count) v.broken.push_back(std::to_string(impossible.count) + " impossible values");
  if (dups.count) v.broken.push_back(std::to_string(dups.count) + " duplicate-activation windows");
  if (zombies.count) v.broken.push_back(std::to_string(zombies.count) + " answers from silos declared dead");
  if (crashes.count) v.broken.push_back(std::to_string(crashes.count) + " crashed or never-ready silods");
  if (!run.reformed) v.broken.push_back("the cluster did not form again within 60 s of the last fault");
  if (not_answering.count)
    v.broken.push_back(std::to_string(not_answering.count) + " grains not answering at the end");
  if (run.max_kill_recovery_ms > 0 && (kill_p100 > run.max_kill_recovery_ms * 1000 || unrecovered > 0)) {
    v.broken.push_back("kill -9 recovery p100 " + ms(kill_p100) + " (" + std::to_string(unrecovered) +
                       " grains never answered) exceeds the limit of " +
                       std::to_string(run.max_kill_recovery_ms) + " ms");
  }

  std::ostringstream out;
  out << "==== chaos report: seed " << run.seed << ", " << run.seconds << " s of faults, " << run.silos
      << " silos, " << run.grains << " grains, PostgreSQL outage: " << run.pg_outage << "\n";
  out << "faults injected (" << faults.size() << "):";
  for (const auto& [k, n] : fault_counts)
    out << " " << k << " x" << n;
  out << "  (fault injection ended at " << at(chaos_end_us) << ")\n";
  out << "acknowledged writes: " << writes_ok << "   failed writes: " << writes_failed
      << "   reads: " << reads_ok << " ok, " << reads_failed << " failed\n";
  if (!failures.empty()) {
    out << "failed calls by status:";
    for (const auto& [k, n] : failures)
      out << "  " << k << " x" << n;
    out << "\n";
  }
  out << "lost acknowledged writes: " << lost.count << "\n";
  lost.print(out);
  out << "stale reads: " << stale.count << " on " << stale_grains.size() << " grains (worst: " << worst_stale
      << " seqs behind the acknowledged one)\n";
  stale.print(out);
  out << "reads going back: " << back.count << "\n";
  back.print(out);
  if (impossible.count) {
    out << "impossible values: " << impossible.count << "\n";
    impossible.print(out);
  }
  out << "duplicate-activation windows: " << dups.count << " on " << dup_grains.size() << " grains (longest ~"
      << ms(longest_dup) << ")\n";
  dups.print(out);
  out << "answers from silos declared dead (after SIGCONT, before their exit 3): " << zombies.count << "\n";
  zombies.print(out);
  out << "crashed silods: " << crashes.count << "\n";
  crashes.print(out);
  out << "grains not answering at the end: " << not_answering.count << "\n";
  not_answering.print(out);
  out << "time from each fault to its grains answering again:\n" << rec.str();
  out << "by kind:\n" << kinds.str();
  // Not an invariant, but an operator's concern (and a known defect): a drain that waits out the timeout.
  long slow_stops = 0, stops = 0;
  for (const auto& p : processes) {
    if (p.term_us < 0 || p.ended_us < 0) continue;
    ++stops;
    if (p.ended_us - p.term_us >= (run.shutdown_timeout_ms - 500) * 1000) ++slow_stops;
  }
  out << "graceful stops (SIGTERM): " << stops << ", of which " << slow_stops
      << " took the whole shutdown_timeout (" << run.shutdown_timeout_ms << " ms)\n";
  out << "silod processes:\n";
  for (const auto& p : processes) {
    out << "  " << p.node << "#" << p.generation << " pid " << p.pid << " " << at(p.started_us) << " .. "
        << (p.ended_us < 0 ? std::string("end") : at(p.ended_us)) << " exit "
        << (p.exit_code ? std::to_string(*p.exit_code) : std::string("-")) << " (expected " << p.expected
        << ")" << (p.unexpected ? "  UNEXPECTED" : "") << (p.never_ready ? "  NEVER READY" : "")
        << (p.term_us >= 0 && p.ended_us >= 0 ? ", " + ms(p.ended_us - p.term_us) + " after SIGTERM" : "")
        << (p.note.empty() ? "" : "  " + p.note) << "\n";
  }
  out << "RESULT: " << (v.broken.empty() ? "PASS" : "FAIL");
  for (std::size_t i = 0; i < v.broken.size(); ++i)
    out << (i ? "; " : ": ") << v.broken[i];
  out << "\n";
  v.report = out.str();
  return v;
}

void write_timeline(const std::string& path, const std::vector<GrainLog>& logs) {
  std::ofstream out(path, std::ios::trunc);
  out << "grain,op,phase,gateway,seq,sent_us,done_us,ok,code,result,previous,activation,pid\n";
  static const char* phases[] = {"chaos", "settle", "final"};
  for (const auto& g : logs) {
    for (const auto& s : g.samples) {
      out << g.key << "," << (s.op == Op::write ? "write" : "read") << ","
          << phases[static_cast<int>(s.phase)] << "," << s.gateway << "," << s.seq << "," << s.sent_us << ","
          << s.done_us << "," << s.ok << ","
          << (s.ok ? "" : std::string(to_string(static_cast<StatusCode>(s.code)))) << "," << s.result << ","
          << s.previous << "," << (s.ok ? hex(s.activation) : "") << "," << s.pid << "\n";
    }
  }
}

}  // namespace silo::chaos
