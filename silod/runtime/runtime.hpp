#pragma once
// The grain runtime of one silo: grain classes, shards (worker threads), calls between grains, the
// watchdog, and orderly deactivation of everything at shutdown.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <silo/detail/context.hpp>
#include <silo/plugin.hpp>

#include "runtime/message.hpp"

namespace silo::storage {
class Provider;
class Registry;
}  // namespace silo::storage

namespace silo::runtime {

class Shard;
class Router;
class Reminders;

struct RuntimeOptions {
  unsigned threads = 0;  // 0: hardware concurrency
  std::chrono::milliseconds collection_age{std::chrono::minutes(15)};
  std::chrono::milliseconds turn_warning{std::chrono::seconds(1)};
  std::chrono::milliseconds call_timeout{std::chrono::seconds(30)};
};

class Runtime {
 public:
  explicit Runtime(RuntimeOptions options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  /// Registers a grain class (before start). Throws std::invalid_argument for a duplicate type name.
  void add_class(std::unique_ptr<GrainClass> cls);
  const GrainClass* find_class(std::string_view type_name) const;
  /// Placement directors registered by plugins (before start).
  void add_director(const std::string& name, PlacementDirector director) { directors_[name] = director; }
  PlacementDirector find_director(const std::string& name) const {
    auto it = directors_.find(name);
    return it == directors_.end() ? nullptr : it->second;
  }
  std::vector<const GrainClass*> classes() const;

  void start();
  /// Refuses new activations (UNAVAILABLE, or placed on another silo when clustered) and deactivates every
  /// activation, running calls and queued turns first; returns when none is left or at `deadline`.
  void drain(Clock::time_point deadline);
  /// drain(), then fails what is left and stops the threads.
  void stop(Clock::time_point deadline);
  bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

  const RuntimeOptions& options() const noexcept { return options_; }
  unsigned shard_count() const noexcept { return static_cast<unsigned>(shards_.size()); }
  Shard& shard(unsigned i) noexcept { return *shards_[i]; }
  Shard& shard_for(const GrainClass& cls, std::string_view key) noexcept;

  /// Calls a grain from `from`'s thread, taking ownership of the request. `chain` is the caller's call
  /// chain (empty for clients).
  Task<std::unique_ptr<google::protobuf::Message>> call(Shard& from, CallChain chain,
                                                        const MethodInfo& method, std::string key,
                                                        std::unique_ptr<google::protobuf::Message> arg,
                                                        CallOptions options);
  /// A caller for code that is not a grain (clients, the gateway, tests), bound to one shard.
  detail::Caller& client(unsigned shard) noexcept;

  /// Runs `fn` on shard `shard_index` and returns its result as a future (tests, tools, the gateway).
  template <class T>
  std::future<T> spawn(unsigned shard_index, std::function<Task<T>(detail::Caller&)> fn);

  /// The cluster layer (set before start; null: single silo).
  void set_router(Router* router) noexcept { router_ = router; }
  Router* router() const noexcept { return router_; }
  /// The reminder service (set before start; null: reminders are refused).
  void set_reminders(Reminders* r) noexcept { reminders_ = r; }
  Reminders* reminders() const noexcept { return reminders_; }
  /// Delivers a reminder tick to grain (cls, key) like a call; `done` gets the reply on a worker thread.
  void deliver_reminder(const GrainClass& cls, std::string key, ReminderTick tick,
                        std::function<void(Reply)> done);
  /// Hands a request to its grain: through the router when clustered, else to the local worker.
  void route(Shard& from, RequestPtr request);
  /// Every local activation (type, key) that lives in the directory (blocks while each worker lists).
  std::vector<std::pair<const GrainClass*, std::string>> local_activations();

  /// The storage providers grains use (set before start; may be null when no grain uses state).
  void set_storage(storage::Registry* registry) noexcept { storage_ = registry; }
  storage::Provider* storage_provider(const std::string& name) const;

  std::size_t activation_count() const;
  /// Activation counts per grain type (blocks briefly while each shard counts).
  std::unordered_map<std::string, std::size_t> activation_counts();

 private:
  class ClientCaller;
  void watchdog_loop();
  const MethodInfo* resolve_method(const GrainClass& cls, const MethodInfo& method) const;
  boost::asio::io_context& shard_io(unsigned i) noexcept;

  RuntimeOptions options_;
  std::unordered_map<std::string_view, std::unique_ptr<GrainClass>> classes_;
  std::unordered_map<std::string, PlacementDirector> directors_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<std::unique_ptr<ClientCaller>> clients_;
  storage::Registry* storage_ = nullptr;
  Router* router_ = nullptr;
  Reminders* reminders_ = nullptr;
  Task<void> run_reminder(Shard& shard, RequestPtr request, std::function<void(Reply)> done);
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  bool stopped_ = false;

  std::thread watchdog_;
  std::mutex watchdog_mutex_;
  std::condition_variable watchdog_cv_;
  bool watchdog_stop_ = false;
};

template <class T>
std::future<T> Runtime::spawn(unsigned shard_index, std::function<Task<T>(detail::Caller&)> fn) {
  auto promise = std::make_shared<std::promise<T>>();
  auto future = promise->get_future();
  detail::Caller* caller = &client(shard_index);
  boost::asio::co_spawn(
      shard_io(shard_index), [fn = std::move(fn), caller]() -> Task<T> { co_return co_await fn(*caller); },
      [promise](std::exception_ptr e, auto... value) {
        if (e)
          promise->set_exception(e);
        else
          promise->set_value(std::move(value)...);
      });
  return future;
}

}  // namespace silo::runtime
