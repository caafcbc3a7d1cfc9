// silo_chaos: the chaos test. Starts N silods on loopback sharing a PostgreSQL membership table (the PG*
// environment), writes increasing sequence numbers to chaos.Register grains through every gateway, and
// injects a seeded schedule of faults every 5-15 s (kill -9 of one or two silos, SIGTERM with a later
// restart, a rolling restart, SIGSTOP then SIGCONT, one PostgreSQL outage). Then it heals the cluster,
// reads every grain through every gateway, prints the report (analysis.hpp says what each invariant means)
// and exits 1 when an invariant broke, 2 when the run itself could not be set up. docs/CHAOS.md tells how
// to run it and read the report.
//
// Usage: silo_chaos [--seconds N] [--seed N] [--silos N] [--grains N] [--pg-outage auto|on|off]
//                   [--out DIR] [--max-kill-recovery-ms N]

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "chaos/analysis.hpp"
#include "chaos/cluster.hpp"
#include "chaos/workload.hpp"
#include "pg_server.hpp"

using namespace std::chrono_literals;
using std::chrono::milliseconds;
namespace fs = std::filesystem;
namespace chaos = silo::chaos;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  int seconds = 75;
  std::uint64_t seed = 1;
  int silos = 4;
  int grains = 128;
  std::string pg_outage = "auto";
  std::string out;
  std::int64_t max_kill_recovery_ms = 0;
};

[[noreturn]] void usage(const std::string& error) {
  std::cerr << "silo_chaos: " << error
            << "\nusage: silo_chaos [--seconds N] [--seed N] [--silos 3..6] [--grains N] "
               "[--pg-outage auto|on|off] [--out DIR] [--max-kill-recovery-ms N]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage("missing value after " + a);
    const std::string v = argv[++i];
    try {
      if (a == "--seconds")
        o.seconds = std::stoi(v);
      else if (a == "--seed")
        o.seed = std::stoull(v);
      else if (a == "--silos")
        o.silos = std::stoi(v);
      else if (a == "--grains")
        o.grains = std::stoi(v);
      else if (a == "--pg-outage")
        o.pg_outage = v;
      else if (a == "--out")
        o.out = v;
      else if (a == "--max-kill-recovery-ms")
        o.max_kill_recovery_ms = std::stoll(v);
      else
        usage("unknown option " + a);
    } catch (const std::logic_error&) {
      usage("bad value for " + a + ": " + v);
    }
  }
  if (o.seconds < 10 || o.seconds > 3600) usage("--seconds must be 10..3600");
  if (o.silos < 3 || o.silos > 6) usage("--silos must be 3..6");
  if (o.grains < 1 || o.grains > 2000) usage("--grains must be 1..2000");
  if (o.pg_outage != "auto" && o.pg_outage != "on" && o.pg_outage != "off") usage("--pg-outage: auto|on|off");
  return o;
}

// The seeded schedule: uniform integers from one generator, so a seed replays the same choices.
class Dice {
 public:
  explicit Dice(std::uint64_t seed) : rng_(seed) {}
  std::int64_t between(std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(rng_() % static_cast<std::uint64_t>(hi - lo + 1));
  }
  milliseconds ms(std::int64_t lo, std::int64_t hi) { return milliseconds(between(lo, hi)); }

 private:
  std::mt19937_64 rng_;
};

std::string stamp(Clock::time_point t0) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "[+%6.1f s]", std::chrono::duration<double>(Clock::now() - t0).count());
  return buf;
}

std::string describe(const chaos::Fault& f) {
  std::string out = f.kind;
  for (std::size_t i = 0; i < f.victims.size(); ++i)
    out += " " + f.victims[i] + " (pid " + std::to_string(f.pids[i]) + ")";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const char* pghost = std::getenv("PGHOST");
  if (!pghost || !*pghost) {
    std::cerr << "silo_chaos: PGHOST is unset: the chaos test needs a PostgreSQL; run tests/chaos/run.sh (it "
                 "brings a throwaway one) or pg_virtualenv -t -- build/bin/silo_chaos\n";
    return 2;
  }

  // The outage stops the PostgreSQL server: only one pg_virtualenv made for this run (PG_CLUSTER_CONF_ROOT
  // is its private cluster directory), never a server someone else runs.
  std::optional<silo::test::PgServer> pg;
  std::string pg_refusal = "PG_CLUSTER_CONF_ROOT is unset";
  if (std::getenv("PG_CLUSTER_CONF_ROOT")) {
    try {
      pg.emplace();  // refuses (throws) unless PGPORT is pg_virtualenv's throwaway cluster
    } catch (const std::exception& e) {
      pg_refusal = e.what();
    }
  }
  const bool throwaway_pg = pg && pg->found();
  std::string pg_outage = "yes";
  if (opt.pg_outage == "off") pg_outage = "no (--pg-outage off)";
  if (opt.pg_outage != "off" && !throwaway_pg) {
    pg_outage = "no (PostgreSQL is not a pg_virtualenv cluster of this run: " + pg_refusal + ")";
    if (opt.pg_outage == "on") {
      std::cerr << "silo_chaos: --pg-outage on, but " << pg_outage << "\n";
      return 2;
    }
  }

  const std::string out = opt.out.empty() ? "/tmp/silo-chaos-" + std::to_string(::getpid()) : opt.out;
  fs::create_directories(out);
  // A previous run's files would mix with this one's (the names repeat): remove those, and only those.
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name == "report.txt" || name == "timeline.csv" ||
        (name.starts_with("silo-") && name.ends_with(".log")))
      fs::remove(e.path());
  }
  const auto t0 = Clock::now();
  const std::string cluster_id = "chaos-" + std::to_string(::getpid()) + "-" +
                                 std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
  std::cout << "silo_chaos: seed " << opt.seed << ", " << opt.seconds << " s, " << opt.silos << " silos, "
            << opt.grains << " grains, PostgreSQL outage: " << pg_outage << "; logs in " << out << std::endl;

  chaos::Cluster cluster({cluster_id, opt.silos, SILO_TEST_PLUGIN_DIR, out, t0});
  cluster.start_all();
  if (!cluster.wait_formed(90s)) {
    std::cerr << "silo_chaos: the cluster did not form within 90 s\n" << cluster.log_tails();
    return 2;
  }
  std::cout << stamp(t0) << " cluster formed: " << cluster.status_line() << std::endl;

  chaos::WorkloadOptions wo;
  wo.gateways = cluster.gateways();
  wo.serving = cluster.serving();
  wo.grains = opt.grains;
  wo.seed = opt.seed;
  wo.t0 = t0;
  chaos::Workload workload(wo);
  workload.start();

  // The schedule. Faults come 5-15 s apart and leave at least two silos up; the PostgreSQL outage comes
  // once, at about 40% of the run, alone (no silo fault overlaps it, so its effect is its own).
  Dice dice(opt.seed);
  std::vector<chaos::Fault> faults;
  const auto chaos_start = Clock::now() + 3s;  // warm-up: every grain activated and written
  const auto chaos_end = chaos_start + std::chrono::seconds(opt.seconds);
  auto next_fault = chaos_start + dice.ms(2000, 6000);
  auto pg_due =
      pg_outage == "yes" ? chaos_start + std::chrono::seconds(opt.seconds) * 2 / 5 : Clock::time_point::max();
  const auto pg_hold = std::clamp(milliseconds(opt.seconds * 100), milliseconds(5000), milliseconds(15000));
  auto next_progress = Clock::now() + 5s;
  const auto& p = workload.progress();
  auto progress = [&] {
    std::cout << stamp(t0) << " acked " << p.acked << " writes (" << p.write_failed << " failed), " << p.reads
              << " reads (" << p.read_failed << " failed); stale " << p.stale << ", lost " << p.lost << " | "
              << cluster.status_line() << std::endl;
  };

  while (Clock::now() < chaos_end) {
    cluster.poll();
    const auto now = Clock::now();
    // Quiet for a while: a silo resumed from SIGSTOP may still be declared dead and exit, and must not
    // then need the database to restart.
    if (now >= pg_due && cluster.quiet_for(5s)) {
      pg_due = Clock::time_point::max();
      chaos::Fault f;
      f.kind = "pg-outage";
      f.at_us = std::chrono::duration_cast<std::chrono::microseconds>(now - t0).count();
      std::cout << stamp(t0) << " fault: PostgreSQL down for " << pg_hold.count() << " ms (" << pg->describe()
                << ")" << std::endl;
      cluster.hold_restarts(true);
      if (!pg->stop()) {
        std::cerr << "silo_chaos: cannot stop PostgreSQL: " << pg->last_output() << "\n";
        return 2;
      }
      const auto until = Clock::now() + pg_hold;
      while (Clock::now() < until) {
        cluster.poll();
        std::this_thread::sleep_for(20ms);
      }
      if (!pg->start()) {
        std::cerr << "silo_chaos: cannot start PostgreSQL again: " << pg->last_output() << "\n";
        return 2;
      }
      cluster.hold_restarts(false);
      f.duration_us =
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count() - f.at_us;
      faults.push_back(f);
      std::cout << stamp(t0) << " PostgreSQL is back" << std::endl;
      next_fault = Clock::now() + dice.ms(5000, 15000);
      continue;
    }
    if (now >= next_fault && now < pg_due) {  // a due outage waits for a quiet cluster: no new faults
      const std::vector<int> up = cluster.up_nodes();
      if (up.size() < 3) {
        next_fault = now + 1s;  // a fault now would leave fewer than two silos: wait for the cluster
      } else {
        const int victim = up[dice.between(0, static_cast<std::int64_t>(up.size()) - 1)];
        const auto roll = dice.between(1, 100);
        chaos::Fault f;
        if (roll <= 10 && up.size() >= 4) {
          int second = up[dice.between(0, static_cast<std::int64_t>(up.size()) - 1)];
          while (second == victim)
            second = up[(std::find(up.begin(), up.end(), second) - up.begin() + 1) % up.size()];
          f = cluster.kill9({victim, second}, dice.ms(1000, 5000));
        } else if (roll <= 40) {
          f = cluster.kill9({victim}, dice.ms(1000, 5000));
        } else if (roll <= 55) {
          f = cluster.sigterm(victim, dice.ms(1000, 5000), false);
        } else if (roll <= 70) {
          f = cluster.sigterm(victim, milliseconds(0), true);
        } else {
          // Short stops end before the failure detector decides; long ones outlast it (the silo is declared
          // dead and must stop serving, then exits 3 once it runs again).
          const bool long_stop = dice.between(0, 1) == 1;
          f = cluster.sigstop(victim, long_stop ? dice.ms(5000, 9000) : dice.ms(1000, 3000));
        }
        std::cout << stamp(t0) << " fault: " << describe(f);
        if (f.duration_us) std::cout << " for " << f.duration_us / 1000 << " ms";
        std::cout << std::endl;
        faults.push_back(f);
        next_fault = now + dice.ms(5000, 15000);
      }
    }
    if (now >= next_progress) {
      progress();
      next_progress = now + 5s;
    }
    std::this_thread::sleep_for(20ms);
  }
  const std::int64_t chaos_end_us =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();

  // Heal: every silo back, then a few seconds of load on a whole cluster, then the final reads.
  std::cout << stamp(t0) << " faults over; healing: " << cluster.status_line() << std::endl;
  workload.set_phase(chaos::Phase::settle);
  cluster.heal();
  const bool formed = cluster.wait_formed(60s);
  std::cout << stamp(t0) << (formed ? " cluster whole again: " : " cluster NOT whole after 60 s: ")
            << cluster.status_line() << std::endl;
  const auto settle_until = Clock::now() + 5s;
  while (Clock::now() < settle_until) {
    cluster.poll();
    std::this_thread::sleep_for(20ms);
  }
  progress();
  workload.stop();
  std::cout << stamp(t0) << " final check: every grain through every gateway" << std::endl;
  workload.final_check(30s);
  std::cout << stamp(t0) << " stopping the silods" << std::endl;
  cluster.stop_all(20s);

  chaos::RunInfo run;
  run.seed = opt.seed;
  run.seconds = opt.seconds;
  run.silos = opt.silos;
  run.grains = opt.grains;
  run.pg_outage = pg_outage;
  run.max_kill_recovery_ms = opt.max_kill_recovery_ms;
  run.reformed = formed;
  const chaos::Verdict v = chaos::analyze(run, workload.logs(), faults, cluster.records(), chaos_end_us);
  std::cout << v.report << std::flush;
  silo::test::write_file((fs::path(out) / "report.txt").string(), v.report);
  chaos::write_timeline((fs::path(out) / "timeline.csv").string(), workload.logs());
  std::cout << "report and silod logs: " << out << std::endl;
  return v.broken.empty() ? 0 : 1;
}
