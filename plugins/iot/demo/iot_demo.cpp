// iot-demo: simulates homes full of thermostats against a silo. It registers every thermostat with its
// home, has every device report readings for a while (a controller now and then sets a target), reads
// each home's summary, and prints throughput, latency and errors. Exit code: 0 without errors, 1 with
// errors, 2 for bad arguments.

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <silo/client.hpp>

#include "iot.silo.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* usage =
    "usage: iot-demo [--homes H] [--devices D] [--seconds S | --rounds R] [--concurrency C] "
    "[--gateway HOST:PORT]...";

struct Options {
  std::vector<std::string> gateways;
  int homes = 10;
  int devices = 5;  // thermostats per home
  double seconds = 5;
  std::int64_t rounds = 0;  // 0: run for `seconds`; else every device reports `rounds` readings
  int concurrency = 64;     // calls in flight overall
};

template <class T>
bool parse_number(std::string_view text, T& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

bool valid_gateway(std::string_view gw) {
  const auto colon = gw.rfind(':');
  int port = 0;
  return colon != std::string_view::npos && colon > 0 && parse_number(gw.substr(colon + 1), port) &&
         port > 0 && port < 65536;
}

// Returns nullopt after printing what is wrong.
std::optional<Options> parse_args(int argc, char** argv) {
  Options opts;
  bool seconds_given = false;
  auto fail = [](const std::string& why) -> std::optional<Options> {
    std::fprintf(stderr, "iot-demo: %s\n%s\n", why.c_str(), usage);
    return std::nullopt;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::printf("%s\n", usage);
      std::exit(0);
    }
    constexpr std::string_view known[] = {"--homes",  "--devices",     "--seconds",
                                          "--rounds", "--concurrency", "--gateway"};
    if (std::find(std::begin(known), std::end(known), flag) == std::end(known)) {
      return fail("unknown option " + std::string(flag));
    }
    if (i + 1 >= argc) return fail("missing value after " + std::string(flag));
    const std::string_view value = argv[++i];
    bool ok = true;
    if (flag == "--homes") {
      ok = parse_number(value, opts.homes) && opts.homes > 0;
    } else if (flag == "--devices") {
      ok = parse_number(value, opts.devices) && opts.devices > 0;
    } else if (flag == "--seconds") {
      ok = parse_number(value, opts.seconds) && opts.seconds > 0;
      seconds_given = true;
    } else if (flag == "--rounds") {
      ok = parse_number(value, opts.rounds) && opts.rounds > 0;
    } else if (flag == "--concurrency") {
      ok = parse_number(value, opts.concurrency) && opts.concurrency > 0;
    } else {  // --gateway
      ok = valid_gateway(value);
      opts.gateways.emplace_back(value);
    }
    if (!ok) return fail("bad value for " + std::string(flag) + ": " + std::string(value));
  }
  if (seconds_given && opts.rounds > 0) return fail("--seconds and --rounds exclude each other");
  if (opts.gateways.empty()) {
    const char* env = std::getenv("SILO_GATEWAY");
    opts.gateways.emplace_back(env && *env ? env : "127.0.0.1:30000");
    if (!valid_gateway(opts.gateways.back())) return fail("bad SILO_GATEWAY: " + opts.gateways.back());
  }
  return opts;
}

// Shared by all the demo's coroutines. The client runs them on its single thread, so no lock is needed.
struct State {
  std::vector<iot::HomeRef> homes;
  std::vector<iot::ThermostatRef> thermostats;  // device d of home h at h * devices + d
  std::mt19937 rng{std::random_device{}()};
  std::int64_t next_item = 0;  // the next work item a worker takes
  std::int64_t calls = 0;
  std::vector<double> latencies_ms;  // of calls that succeeded
  std::int64_t errors = 0;
  std::vector<std::string> first_errors;  // up to 3 distinct messages
};

// Awaits one call, timing it. A silo::Error is counted and yields nullopt; the worker carries on.
template <class T>
silo::Task<std::optional<T>> timed(State& s, silo::Task<T> call) {
  const auto start = Clock::now();
  ++s.calls;
  try {
    T result = co_await std::move(call);
    s.latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    co_return result;
  } catch (const silo::Error& e) {
    ++s.errors;
    std::string message = std::string(silo::to_string(e.code())) + ": " + e.what();
    if (s.first_errors.size() < 3 &&
        std::find(s.first_errors.begin(), s.first_errors.end(), message) == s.first_errors.end()) {
      s.first_errors.push_back(std::move(message));
    }
    co_return std::nullopt;
  }
}

// Takes items 0, 1, ... from the shared counter while `more(item)` holds; each worker has one call in
// flight, so `concurrency` workers bound the calls in flight overall.
struct Pool {
  std::function<bool(std::int64_t)> more;
  std::function<silo::Task<void>(std::int64_t)> run;
};

silo::Task<void> worker(State& s, const Pool& pool) {
  for (std::int64_t item = s.next_item++; pool.more(item); item = s.next_item++) {
    co_await pool.run(item);
  }
}

void run_pool(silo::Client& client, State& s, int concurrency, const Pool& pool) {
  s.next_item = 0;
  std::vector<std::future<void>> workers;
  for (int w = 0; w < concurrency; ++w)
    workers.push_back(client.spawn(worker(s, pool)));
  for (auto& w : workers)
    w.get();  // rethrows anything but silo::Error, which timed() absorbs
}

std::string home_id(std::int64_t h) {
  return "home-" + std::to_string(h);
}

double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<std::size_t>(q * static_cast<double>(sorted.size()));
  return sorted[std::min(rank, sorted.size() - 1)];
}

int run(const Options& opts) {
  // One thread: the coroutines share State without locks (see State).
  silo::Client client({.gateways = opts.gateways, .threads = 1});
  const std::int64_t devices = opts.devices;
  const std::int64_t total_devices = opts.homes * devices;
  State s;
  for (int h = 0; h < opts.homes; ++h) {
    s.homes.push_back(client.ref<iot::HomeRef>(home_id(h)));
    for (int d = 0; d < opts.devices; ++d) {
      s.thermostats.push_back(client.ref<iot::ThermostatRef>(home_id(h) + "-t" + std::to_string(d)));
    }
  }

  // Phase 1: every home learns its thermostats.
  run_pool(client, s, opts.concurrency,
           {[&](std::int64_t i) { return i < total_devices; },
            [&](std::int64_t i) -> silo::Task<void> {
              iot::AddThermostatRequest req;
              req.set_thermostat_id(s.thermostats[i].key());
              co_await timed(s, s.homes[i / devices].AddThermostat(req));
            }});
  const bool reachable = s.errors < s.calls;  // all failed: the silo is down or lacks the iot plugin

  // Phase 2: readings from every device in turn; every 100th item, the controller also sets a target.
  const std::int64_t setup_calls = s.calls;
  s.latencies_ms.clear();
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts.seconds));
  auto more = [&](std::int64_t i) {
    if (!reachable) return false;
    return opts.rounds > 0 ? i < opts.rounds * total_devices : Clock::now() < deadline;
  };
  run_pool(client, s, opts.concurrency,
           {more, [&](std::int64_t i) -> silo::Task<void> {
              iot::Reading reading;
              reading.set_celsius(std::uniform_real_distribution<double>(17, 23)(s.rng));
              co_await timed(s, s.thermostats[i % total_devices].ReportReading(reading));
              if (i % 100 == 99) {
                iot::Target target;
                target.set_celsius(std::uniform_real_distribution<double>(18, 24)(s.rng));
                const auto t = std::uniform_int_distribution<std::int64_t>(0, total_devices - 1)(s.rng);
                co_await timed(s, s.thermostats[t].SetTarget(target));
              }
            }});
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  const std::int64_t load_calls = s.calls - setup_calls;
  std::vector<double> latencies = std::exchange(s.latencies_ms, {});
  std::sort(latencies.begin(), latencies.end());

  // Phase 3: each home's summary (which calls its thermostats), then the report.
  std::vector<std::optional<iot::HomeSummary>> summaries(opts.homes);
  if (reachable) {
    run_pool(client, s, opts.concurrency,
             {[&](std::int64_t h) { return h < opts.homes; },
              [&](std::int64_t h) -> silo::Task<void> {
                summaries[h] = co_await timed(s, s.homes[h].GetSummary(iot::HomeSummaryRequest{}));
              }});
  }

  std::string via;
  for (const auto& gw : opts.gateways)
    via += (via.empty() ? "" : ", ") + gw;
  std::printf("iot-demo: %d homes x %d thermostats via %s\n", opts.homes, opts.devices, via.c_str());
  std::printf("calls %lld  errors %lld  calls/s %.1f  p50 %.2f ms  p99 %.2f ms\n",
              static_cast<long long>(load_calls), static_cast<long long>(s.errors),
              elapsed_s > 0 ? static_cast<double>(load_calls) / elapsed_s : 0.0, percentile(latencies, 0.50),
              percentile(latencies, 0.99));
  constexpr int shown_homes = 3;
  for (int h = 0; h < std::min(opts.homes, shown_homes); ++h) {
    if (summaries[h]) {
      std::printf("%s: %d thermostats, average %.2f C\n", home_id(h).c_str(), summaries[h]->thermostats(),
                  summaries[h]->average_celsius());
    } else {
      std::printf("%s: no summary\n", home_id(h).c_str());
    }
  }
  if (opts.homes > shown_homes) std::printf("... and %d more\n", opts.homes - shown_homes);
  for (const auto& message : s.first_errors)
    std::printf("error: %s\n", message.c_str());
  return s.errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> opts = parse_args(argc, argv);
  if (!opts) return 2;
  try {
    return run(*opts);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "iot-demo: %s\n", e.what());
    return 1;
  }
}
