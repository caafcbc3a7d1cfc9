// In-process benchmarks of the grain runtime (2 worker threads) and their baselines:
//   insilo      Pinger grains calling Ponger grains on the other worker, timed by the Pinger
//   asio        the same ping-pong as raw Asio coroutines posting between two single-threaded io_contexts
//   activations activate `count` Trivial grains: activations/s and resident bytes per activation
//   durable-silo, pg-batched, pg-unbatched: see bench_durable.cpp

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include "args.hpp"
#include "config/config.hpp"
#include "pingpong.silo.h"
#include "plugins/plugin_loader.hpp"
#include "runtime/runtime.hpp"
#include "runtime/shard.hpp"
#include "stats.hpp"

namespace bench {
/// Where pingpong.so is: $SILO_BENCH_PLUGIN_DIR (bench/run.sh runs a copy of the build) or the build's.
inline std::string plugin_dir() {
  const char* dir = std::getenv("SILO_BENCH_PLUGIN_DIR");
  return dir && *dir ? dir : BENCH_PLUGIN_DIR;
}
int durable_main(const std::string& mode, const Args& args);  // bench_durable.cpp
}  // namespace bench

namespace {

namespace asio = boost::asio;
using bench::Args;
using bench::Clock;
using bench::Histogram;

std::unique_ptr<silo::runtime::Runtime> make_runtime(unsigned threads) {
  silo::runtime::RuntimeOptions options;
  options.threads = threads;
  // A Pinger's turn awaits thousands of calls: not a blocked worker, so no warning for it.
  options.turn_warning = std::chrono::hours(1);
  auto rt = std::make_unique<silo::runtime::Runtime>(options);
  silo::config::PluginsConfig plugins;
  plugins.dir = bench::plugin_dir();
  plugins.load = {"pingpong"};
  plugins.required = true;
  silo::plugins::load_plugins(plugins, silo::config::GrainsConfig{}, *rt);
  rt->start();
  return rt;
}

// A key of grain type `type` whose activation lives on worker `shard` (tried in order: deterministic).
std::string key_on_shard(silo::runtime::Runtime& rt, const char* type, const std::string& prefix,
                         unsigned shard, unsigned& next) {
  const auto* cls = rt.find_class(type);
  for (;;) {
    std::string key = prefix + std::to_string(next++);
    if (rt.shard_for(*cls, key).index() == shard) return key;
  }
}

int insilo(const Args& args) {
  const auto callers = static_cast<unsigned>(args.num("callers", 64));
  const auto calls = static_cast<std::uint32_t>(args.num("calls", 20000));
  const auto warmup = static_cast<std::uint32_t>(args.num("warmup", 2000));
  auto rt = make_runtime(2);
  // Each Pinger and its Ponger on different workers: every call crosses threads, as in the baseline.
  std::vector<std::pair<std::string, std::string>> pairs;
  unsigned next = 0;
  for (unsigned i = 0; i < callers; ++i) {
    const unsigned shard = i % 2;
    std::string pinger = key_on_shard(*rt, "benchpp.Pinger", "pinger-", shard, next);
    std::string ponger = key_on_shard(*rt, "benchpp.Ponger", "ponger-", 1 - shard, next);
    pairs.emplace_back(std::move(pinger), std::move(ponger));
  }
  auto run_all = [&](std::uint32_t n, bool record) {
    std::vector<std::future<benchpp::RunResult>> futures;
    for (unsigned i = 0; i < callers; ++i) {
      benchpp::RunRequest req;
      req.set_ponger(pairs[i].second);
      req.set_calls(n);
      req.set_record(record);
      futures.push_back(rt->spawn<benchpp::RunResult>(
          i % 2, [key = pairs[i].first, req](silo::detail::Caller& c) -> silo::Task<benchpp::RunResult> {
            co_return co_await benchpp::PingerRef(&c, key).Run(req);
          }));
    }
    Histogram h;
    std::uint64_t total = 0;
    for (auto& f : futures) {
      const auto r = f.get();
      total += r.calls();
      for (int j = 0; j < r.latency().index_size(); ++j)
        h.add(r.latency().index(j), r.latency().count(j));
    }
    return std::make_pair(total, h);
  };
  run_all(warmup, false);  // activations, allocator and caches warm
  const double cpu0 = bench::cpu_seconds();
  const auto t0 = Clock::now();
  auto [total, h] = run_all(calls, true);
  const double secs = bench::seconds_since(t0);
  bench::print_result("insilo", total, secs, &h, bench::cpu_field(bench::cpu_seconds() - cpu0, total));
  return 0;
}

// The raw ping-pong: a request posted to the other io_context, the reply posted back, the caller resumed.
template <class Work>
auto call_on(asio::io_context& remote, Work work) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(std::uint64_t)>(
      [&remote, work](auto handler) mutable {
        asio::post(remote, [h = std::move(handler), work]() mutable {
          const std::uint64_t reply = work();
          auto ex = asio::get_associated_executor(h);
          asio::post(ex, [h = std::move(h), reply]() mutable { std::move(h)(reply); });
        });
      },
      asio::use_awaitable);
}

int asio_pingpong(const Args& args) {
  const auto callers = static_cast<unsigned>(args.num("callers", 64));
  const auto calls = static_cast<std::uint32_t>(args.num("calls", 20000));
  const auto warmup = static_cast<std::uint32_t>(args.num("warmup", 2000));
  asio::io_context ctx[2] = {asio::io_context(1), asio::io_context(1)};
  std::vector<Histogram> hists(callers);
  auto run_all = [&](std::uint32_t n, bool record) {
    std::vector<std::future<void>> futures;
    for (unsigned i = 0; i < callers; ++i) {
      asio::io_context& home = ctx[i % 2];
      asio::io_context& remote = ctx[1 - i % 2];
      auto caller = [&remote, &h = hists[i], n, record]() -> asio::awaitable<void> {
        for (std::uint32_t k = 0; k < n; ++k) {
          const auto start = Clock::now();
          const std::uint64_t seq = co_await call_on(remote, [k] { return std::uint64_t(k); });
          if (seq != k) throw std::logic_error("wrong reply");
          if (record) h.record(start, Clock::now());
        }
      };
      futures.push_back(asio::co_spawn(home, caller, asio::use_future));
    }
    for (auto& f : futures)
      f.get();
  };
  std::vector<std::thread> threads;
  auto guard0 = asio::make_work_guard(ctx[0]);
  auto guard1 = asio::make_work_guard(ctx[1]);
  for (auto& c : ctx)
    threads.emplace_back([&c] { c.run(); });
  run_all(warmup, false);
  const double cpu0 = bench::cpu_seconds();
  const auto t0 = Clock::now();
  run_all(calls, true);
  const double secs = bench::seconds_since(t0);
  const double cpu = bench::cpu_seconds() - cpu0;
  Histogram h;
  for (auto& x : hists)
    h.merge(x);
  const std::uint64_t total = std::uint64_t(callers) * calls;
  bench::print_result("asio", total, secs, &h, bench::cpu_field(cpu, total));
  guard0.reset();
  guard1.reset();
  for (auto& c : ctx)
    c.stop();
  for (auto& t : threads)
    t.join();
  return 0;
}

std::size_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

int activations(const Args& args) {
  const auto count = static_cast<std::uint64_t>(args.num("count", 1000000));
  const auto lanes = static_cast<unsigned>(args.num("lanes", 512));
  auto rt = make_runtime(2);
  auto touch_range = [&](std::string prefix, std::uint64_t n) {
    std::vector<std::future<int>> futures;
    for (unsigned lane = 0; lane < lanes; ++lane) {
      futures.push_back(
          rt->spawn<int>(lane % 2, [lane, lanes, n, prefix](silo::detail::Caller& c) -> silo::Task<int> {
            for (std::uint64_t i = lane; i < n; i += lanes)
              co_await benchpp::TrivialRef(&c, prefix + std::to_string(i)).Touch(benchpp::Empty{});
            co_return 0;
          }));
    }
    for (auto& f : futures)
      f.get();
  };
  touch_range("warm-", 20000);  // the catalog's first growth and the allocator's arenas
  const std::size_t rss0 = rss_bytes();
  const std::size_t before = rt->activation_count();
  const double cpu0 = bench::cpu_seconds();
  const auto t0 = Clock::now();
  touch_range("g-", count);
  const double secs = bench::seconds_since(t0);
  const double cpu = bench::cpu_seconds() - cpu0;
  const std::size_t rss1 = rss_bytes();
  const std::size_t made = rt->activation_count() - before;
  const double per = made ? double(rss1 - rss0) / double(made) : 0;
  bench::print_result("activations", made, secs, nullptr,
                      "\"bytes_per_activation\":" + std::to_string(static_cast<long long>(per)) + "," +
                          bench::cpu_field(cpu, made));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_runtime {insilo|asio|activations|durable-silo|pg-batched|pg-unbatched} "
                 "[key=value ...]\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  try {
    const std::string mode = argv[1];
    const Args args(argc, argv, 2);
    if (mode == "insilo") return insilo(args);
    if (mode == "asio") return asio_pingpong(args);
    if (mode == "activations") return activations(args);
    return bench::durable_main(mode, args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_runtime: %s\n", e.what());
    return 1;
  }
}
