#pragma once
// Storage tests: a real PostgreSQL (the PG* variables of pg_virtualenv), in-process silos with the
// stategrains plugin and a storage registry ("default" = memory, "pg" = postgres), and helpers to drive
// providers directly and to stop and start the PostgreSQL cluster under them.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <catch2/catch.hpp>

#include <pqxx/pqxx>
#include "pg_server.hpp"

#include "config/config.hpp"
#include "plugins/plugin_loader.hpp"
#include "runtime/runtime.hpp"
#include "stategrains.silo.h"
#include "storage/provider.hpp"

namespace storage_test {

using namespace std::chrono_literals;

/// Unique per test process, so runs sharing one database never see each other's rows.
inline const std::string& run_id() {
  static const std::string id = [] {
    std::random_device rd;
    return std::to_string(::getpid()) + "-" + std::to_string(rd() % 1000000);
  }();
  return id;
}

/// Captures log lines so tests can assert on what the providers say.
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

inline int count_logged(const std::string& needle) {
  int n = 0;
  for (const auto& line : capture_logs()->last_formatted())
    if (line.find(needle) != std::string::npos) ++n;
  return n;
}

/// Fails the test (never skips it) when there is no PostgreSQL to talk to. Also starts capturing log lines.
inline void require_postgres() {
  capture_logs();
  silo::test::require_postgres("silo_storage_tests");
}

inline silo::config::StorageProviderConfig pg_config(bool group_commit = true, unsigned pool_size = 2,
                                                     std::string dsn = "connect_timeout=2") {
  silo::config::StorageProviderConfig c;
  c.provider = "postgres";
  c.dsn = std::move(dsn);
  c.group_commit = group_commit;
  c.pool_size = pool_size;
  return c;
}

/// Polls `pred` until it holds or `timeout` passes.
template <class P>
bool eventually(P pred, std::chrono::milliseconds timeout = 5s) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

template <class T>
struct task_value;
template <class T>
struct task_value<silo::Task<T>> {
  using type = T;
};

/// One in-process silo with the stategrains plugin and its own storage registry.
struct Silo {
  explicit Silo(const std::string& cluster_id = "state-" + run_id()) {
    capture_logs();
    std::map<std::string, silo::config::StorageProviderConfig> cfg;
    cfg["default"] = silo::config::StorageProviderConfig{};
    cfg["pg"] = pg_config();
    registry = std::make_unique<silo::storage::Registry>(cfg, cluster_id);
    registry->start();
    silo::runtime::RuntimeOptions options;
    options.threads = 2;
    rt = std::make_unique<silo::runtime::Runtime>(options);
    rt->set_storage(registry.get());
    silo::config::PluginsConfig plugins;
    plugins.dir = SILO_TEST_PLUGIN_DIR;
    plugins.load = {"stategrains"};
    plugins.required = true;
    silo::plugins::load_plugins(plugins, {}, *rt);
    rt->start();
  }
  ~Silo() {
    rt->stop(std::chrono::steady_clock::now() + 10s);
    registry->stop();
  }

  /// Runs `f(caller)` on a worker of this silo and waits for its result (rethrowing its exception).
  template <class F>
  auto run(F f, unsigned shard = 0) {
    return spawn(std::move(f), shard).get();
  }
  template <class F>
  auto spawn(F f, unsigned shard = 0) {
    using T = typename task_value<std::invoke_result_t<F, silo::detail::Caller&>>::type;
    return rt->spawn<T>(shard % rt->shard_count(),
                        std::function<silo::Task<T>(silo::detail::Caller&)>(std::move(f)));
  }

  bool wait_until_no_activations() {
    return eventually([&] { return rt->activation_count() == 0; });
  }

  std::unique_ptr<silo::storage::Registry> registry;
  std::unique_ptr<silo::runtime::Runtime> rt;
};

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

/// Starts a provider operation and waits for its outcome; fails the test if it does not complete in time.
inline silo::storage::Outcome await(const std::function<void(silo::storage::Completion)>& start,
                                    std::chrono::milliseconds timeout = 10s) {
  auto promise = std::make_shared<std::promise<silo::storage::Outcome>>();
  auto future = promise->get_future();
  start([promise](silo::storage::Outcome o) { promise->set_value(std::move(o)); });
  REQUIRE(future.wait_for(timeout) == std::future_status::ready);
  return future.get();
}

inline silo::storage::Outcome write(silo::storage::Provider& p, const silo::storage::StateKey& k,
                                    std::string data, std::uint64_t etag) {
  return await([&](silo::storage::Completion done) { p.write(k, std::move(data), etag, std::move(done)); });
}
inline silo::storage::Outcome read(silo::storage::Provider& p, const silo::storage::StateKey& k) {
  return await([&](silo::storage::Completion done) { p.read(k, std::move(done)); });
}
inline silo::storage::Outcome clear(silo::storage::Provider& p, const silo::storage::StateKey& k,
                                    std::uint64_t etag) {
  return await([&](silo::storage::Completion done) { p.clear(k, etag, std::move(done)); });
}

/// A direct connection (PG* environment) for looking at the tables.
inline std::unique_ptr<pqxx::connection> sql(const std::string& dsn = "") {
  return std::make_unique<pqxx::connection>(dsn);
}

inline std::string shell(const std::string& command) {
  std::string out;
  if (FILE* f = ::popen(command.c_str(), "r")) {
    char buf[512];
    while (std::fgets(buf, sizeof buf, f))
      out += buf;
    ::pclose(f);
  }
  return out;
}

}  // namespace storage_test
