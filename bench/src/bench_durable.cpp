// Durable writes (needs PostgreSQL through the PG* environment, e.g. under pg_virtualenv):
//   durable-silo  `writers` closed-loop callers of benchpp.Durable/Add, each on its own grain, whose state is
//                 in the postgres provider (group commit on, pool_size connections)
//   pg-batched    raw libpqxx upserts from `writers` closed-loop writers served by pool_size connections; a
//                 connection takes every queued write (up to 256, its fair share) into one transaction
//   pg-unbatched  the same, one transaction per write

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <pqxx/pqxx>

#include "args.hpp"
#include "config/config.hpp"
#include "pingpong.silo.h"
#include "plugins/plugin_loader.hpp"
#include "runtime/runtime.hpp"
#include "stats.hpp"
#include "storage/provider.hpp"

namespace bench {

namespace {

// The measured window: ops that start and end inside phase `measure` count.
enum Phase : int { warm = 0, measure = 1, done = 2 };

struct Window {
  std::atomic<int> phase{warm};
  Clock::time_point start, end;
  void run(double warm_s, double measure_s) {
    std::this_thread::sleep_for(std::chrono::duration<double>(warm_s));
    start = Clock::now();
    phase.store(measure);
    std::this_thread::sleep_for(std::chrono::duration<double>(measure_s));
    phase.store(done);
    end = Clock::now();
  }
  double seconds() const { return std::chrono::duration<double>(end - start).count(); }
};

std::string run_id() {
  return "bench-" + std::to_string(::getpid());
}

int durable_silo(const Args& args) {
  const auto writers = static_cast<unsigned>(args.num("writers", 64));
  const auto pool = static_cast<unsigned>(args.num("pool_size", 4));
  silo::config::StorageProviderConfig pc;
  pc.provider = "postgres";
  pc.dsn = args.str("dsn", "");
  pc.group_commit = args.num("group_commit", 1) != 0;
  pc.pool_size = pool;
  silo::storage::Registry registry({{"default", pc}}, run_id());
  registry.start();

  silo::runtime::RuntimeOptions options;
  options.threads = 2;
  options.turn_warning = std::chrono::hours(1);  // a write waits on PostgreSQL: not a blocked worker
  silo::runtime::Runtime rt(options);
  silo::config::PluginsConfig plugins;
  const char* dir = std::getenv("SILO_BENCH_PLUGIN_DIR");
  plugins.dir = dir && *dir ? dir : BENCH_PLUGIN_DIR;
  plugins.load = {"pingpong"};
  plugins.required = true;
  silo::plugins::load_plugins(plugins, silo::config::GrainsConfig{}, rt);
  rt.set_storage(&registry);
  rt.start();

  Window window;
  std::vector<Histogram> hists(writers);
  std::vector<std::uint64_t> ops(writers, 0);
  std::vector<std::future<int>> futures;
  for (unsigned w = 0; w < writers; ++w) {
    futures.push_back(rt.spawn<int>(w % 2, [&, w](silo::detail::Caller& c) -> silo::Task<int> {
      benchpp::DurableRef ref(&c, "w" + std::to_string(w));
      benchpp::AddRequest add;
      add.set_delta(1);
      for (;;) {
        const int phase = window.phase.load();
        if (phase == done) break;
        const auto t0 = Clock::now();
        co_await ref.Add(add);
        if (phase == measure && window.phase.load() == measure) {
          hists[w].record(t0, Clock::now());
          ++ops[w];
        }
      }
      co_return 0;
    }));
  }
  window.run(args.real("warmup", 1.0), args.real("seconds", 3.0));
  for (auto& f : futures)
    f.get();
  Histogram h;
  std::uint64_t total = 0;
  for (unsigned w = 0; w < writers; ++w) {
    h.merge(hists[w]);
    total += ops[w];
  }
  print_result("durable-silo", total, window.seconds(), &h);
  rt.stop(silo::runtime::Clock::now() + std::chrono::seconds(10));
  registry.stop();
  return 0;
}

// Raw libpqxx: a queue of writes served by `pool` connection threads; a writer re-queues its next write as
// soon as the previous one committed (closed loop, like a grain awaiting its write).
int pg_raw(const Args& args, bool batched) {
  const auto writers = static_cast<unsigned>(args.num("writers", 64));
  const auto pool = static_cast<unsigned>(args.num("pool_size", 4));
  const std::string dsn = args.str("dsn", "");
  const std::string cluster = run_id() + (batched ? "-b" : "-u");
  {
    pqxx::connection c(dsn);
    pqxx::work tx(c);
    tx.exec0(
        "CREATE TABLE IF NOT EXISTS bench_raw_state (cluster_id text NOT NULL, grain_type text NOT NULL, "
        "grain_key text NOT NULL, state_name text NOT NULL, payload bytea NOT NULL, version bigint NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (cluster_id, grain_type, grain_key, state_name))");
    tx.commit();
  }
  struct Op {
    unsigned writer;
    Clock::time_point start;
  };
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Op> queue;
  unsigned idle = 0;
  bool stop = false;
  Window window;
  std::vector<Histogram> hists(pool);
  std::vector<std::uint64_t> ops(pool, 0);
  std::vector<std::string> keys;
  for (unsigned w = 0; w < writers; ++w)
    keys.push_back("w" + std::to_string(w));
  std::vector<std::int64_t> totals(writers, 0);
  for (unsigned w = 0; w < writers; ++w)
    queue.push_back(Op{w, Clock::now()});

  auto worker = [&](unsigned index) {
    pqxx::connection conn(dsn);
    conn.prepare(
        "up",
        "INSERT INTO bench_raw_state (cluster_id, grain_type, grain_key, state_name, payload, version) "
        "VALUES ($1, 'benchpp.Durable', $2, 'state', $3, 1) "
        "ON CONFLICT (cluster_id, grain_type, grain_key, state_name) DO UPDATE SET "
        "payload = EXCLUDED.payload, version = bench_raw_state.version + 1, updated_at = now()");
    std::vector<Op> batch;
    for (;;) {
      {
        std::unique_lock lock(mutex);
        ++idle;
        cv.wait(lock, [&] { return stop || !queue.empty(); });
        --idle;
        if (stop) return;
        // The same fair share as the provider: other idle connections get work too.
        const std::size_t limit =
            batched ? std::min<std::size_t>(256, (queue.size() + idle) / (idle + 1)) : 1;
        while (!queue.empty() && batch.size() < std::max<std::size_t>(1, limit)) {
          batch.push_back(queue.front());
          queue.pop_front();
        }
      }
      pqxx::work tx(conn);
      for (const Op& op : batch) {
        const std::int64_t total = ++totals[op.writer];  // one writer is never in two batches at once
        const std::string payload(reinterpret_cast<const char*>(&total), sizeof total);
        tx.exec_prepared0("up", cluster, keys[op.writer], pqxx::binarystring(payload));
      }
      tx.commit();
      const auto now = Clock::now();
      {
        std::lock_guard lock(mutex);
        for (const Op& op : batch) {
          if (window.phase.load() == measure && op.start >= window.start) {
            hists[index].record(op.start, now);
            ++ops[index];
          }
          queue.push_back(Op{op.writer, Clock::now()});
        }
      }
      cv.notify_all();
      batch.clear();
    }
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < pool; ++i)
    threads.emplace_back(worker, i);
  window.run(args.real("warmup", 1.0), args.real("seconds", 3.0));
  {
    std::lock_guard lock(mutex);
    stop = true;
  }
  cv.notify_all();
  for (auto& t : threads)
    t.join();
  Histogram h;
  std::uint64_t total = 0;
  for (unsigned i = 0; i < pool; ++i) {
    h.merge(hists[i]);
    total += ops[i];
  }
  print_result(batched ? "pg-batched" : "pg-unbatched", total, window.seconds(), &h);
  return 0;
}

}  // namespace

int durable_main(const std::string& mode, const Args& args) {
  if (!std::getenv("PGHOST") && args.str("dsn").empty()) {
    std::fprintf(stderr, "bench_runtime %s: needs PostgreSQL: run under pg_virtualenv\n", mode.c_str());
    return 3;
  }
  if (mode == "durable-silo") return durable_silo(args);
  if (mode == "pg-batched") return pg_raw(args, true);
  if (mode == "pg-unbatched") return pg_raw(args, false);
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}

}  // namespace bench
