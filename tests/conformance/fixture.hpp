#pragma once
// An in-process silo runtime with the test plugins loaded from build/test-plugins, plus helpers to run
// grain calls from the test thread. The runtime, the plugin loader and the plugins are the real ones.

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <catch2/catch.hpp>

#include "config/config.hpp"
#include "plugins/plugin_loader.hpp"
#include "reminders/reminder_service.hpp"
#include "runtime/runtime.hpp"
#include "testgrains.silo.h"

namespace conformance {

template <class T>
struct task_value;
template <class T>
struct task_value<silo::Task<T>> {
  using type = T;
};

/// Captures log lines so tests can assert on what the runtime says.
inline std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> capture_logs() {
  static auto sink = [] {
    auto s = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
    s->set_pattern("%l %v");
    auto logger = std::make_shared<spdlog::logger>("test", s);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
    return s;
  }();
  return sink;
}

inline bool logged(const std::string& needle) {
  for (const auto& line : capture_logs()->last_formatted())
    if (line.find(needle) != std::string::npos) return true;
  return false;
}

struct Silo {
  explicit Silo(silo::runtime::RuntimeOptions options = {}, silo::config::GrainsConfig grains = {}) {
    capture_logs();
    if (options.threads == 0) options.threads = 2;
    rt = std::make_unique<silo::runtime::Runtime>(options);
    silo::config::PluginsConfig plugins;
    plugins.dir = SILO_TEST_PLUGIN_DIR;
    plugins.load = {"testgrains"};
    plugins.required = true;
    silo::plugins::load_plugins(plugins, grains, *rt);
    rt->start();
  }
  ~Silo() {
    stop_reminders();
    rt->stop(std::chrono::steady_clock::now() + std::chrono::seconds(10));
  }

  /// Starts a reminder service on `table` (shared across "restarts" of the service).
  void start_reminders(silo::reminders::ReminderTable* table, std::chrono::milliseconds min_period) {
    cfg.reminders.min_period = min_period;
    cfg.reminders.refresh_interval = std::chrono::milliseconds(200);
    struct Borrowed final : silo::reminders::ReminderTable {
      explicit Borrowed(silo::reminders::ReminderTable& t) : t(t) {}
      void init() override { t.init(); }
      void upsert(const silo::reminders::ReminderRow& r) override { t.upsert(r); }
      void remove(const std::string& a, const std::string& b, const std::string& c) override {
        t.remove(a, b, c);
      }
      std::vector<silo::reminders::ReminderRow> for_grain(const std::string& a,
                                                          const std::string& b) override {
        return t.for_grain(a, b);
      }
      std::vector<silo::reminders::ReminderRow> all() override { return t.all(); }
      bool set_last_tick(const silo::reminders::ReminderRow& r, std::int64_t v) override {
        return t.set_last_tick(r, v);
      }
      std::string describe() const override { return t.describe(); }
      silo::reminders::ReminderTable& t;
    };
    reminders = std::make_unique<silo::reminders::ReminderService>(
        cfg, std::make_unique<Borrowed>(*table), *rt, std::string());  // alone: keeps every reminder
    rt->set_reminders(reminders.get());
    reminders->start();
  }
  /// Stops the reminder service (as when its silo goes down); grains keep running.
  void stop_reminders() {
    if (!reminders) return;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    reminders->prepare_stop(deadline);
    reminders->stop(deadline);
    rt->set_reminders(nullptr);
    reminders.reset();
  }

  /// Starts `f(caller)` on worker `shard` and returns its future.
  template <class F>
  auto spawn(F f, unsigned shard = 0) {
    using T = typename task_value<std::invoke_result_t<F, silo::detail::Caller&>>::type;
    return rt->spawn<T>(shard % rt->shard_count(),
                        std::function<silo::Task<T>(silo::detail::Caller&)>(std::move(f)));
  }
  /// Runs `f(caller)` and waits for its result (rethrowing its exception).
  template <class F>
  auto run(F f, unsigned shard = 0) {
    return spawn(std::move(f), shard).get();
  }

  template <class Ref>
  Ref ref(silo::detail::Caller& c, std::string key) {
    return Ref(&c, std::move(key));
  }

  std::int64_t probe(const std::string& name) {
    return run([&](silo::detail::Caller& c) -> silo::Task<std::int64_t> {
      test::ProbeRequest req;
      req.set_name(name);
      co_return (co_await test::ProbeRef(&c, "probe").Get(req)).value();
    });
  }

  /// Polls `pred` until it holds or `timeout` passes.
  template <class P>
  static bool eventually(P pred, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred();
  }

  silo::config::Config cfg;
  std::unique_ptr<silo::runtime::Runtime> rt;
  std::unique_ptr<silo::reminders::ReminderService> reminders;
};

inline test::WorkRequest work(int sleep_ms, int block_ms = 0) {
  test::WorkRequest r;
  r.set_sleep_ms(sleep_ms);
  r.set_block_ms(block_ms);
  return r;
}

/// Runs `call` and returns the silo::Error it throws (fails the test when it does not throw).
template <class F>
silo::Error expect_error(F&& call) {
  try {
    call();
  } catch (const silo::Error& e) {
    return e;
  }
  FAIL("expected a silo::Error");
  return silo::Error(silo::StatusCode::ok, "");
}

}  // namespace conformance
