#pragma once
/// @file
/// silo::Client: calls grains through silo gateways from any C++ program.
///
/// ```cpp
/// silo::Client client({.gateways = {"127.0.0.1:30000"}});
/// auto thermostat = client.ref<iot::ThermostatRef>("device-42");
/// iot::Status s = client.wait(thermostat.SetTarget(target));          // blocking
/// client.spawn([&]() -> silo::Task<void> {                             // or as coroutines
///   co_await thermostat.ReportReading(reading);
/// });
/// ```
/// Calls are multiplexed and batched over one stream per gateway. When a gateway fails, calls in flight on
/// it fail with UNAVAILABLE (they may or may not have run: delivery is at most once) and later calls go to
/// the next gateway in the list. A gateway that is shutting down hands new calls to another gateway while
/// its calls in flight complete.
///
/// Every failed call says whether it ran: the client throws silo::CallError (a silo::Error) whose
/// outcome() is Outcome::not_run when the call provably never reached a grain (the client never sent it,
/// or a gateway refused it: unknown method, draining, fenced silo) and Outcome::may_have_run otherwise (the
/// connection broke after the call was sent, the deadline passed, or the grain failed). The client resends
/// by itself only calls it never sent and calls a gateway refused with "retry elsewhere":
/// ```cpp
/// try { co_await counter.Add(one); }
/// catch (const silo::CallError& e) {
///   if (e.outcome() == silo::Outcome::not_run) { /* safe to retry */ }
/// }
/// ```

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <silo/asio.hpp>
#include <silo/detail/context.hpp>
#include <silo/error.hpp>
#include <silo/grain_ref.hpp>
#include <silo/task.hpp>

namespace silo {

/// Whether a failed call ran.
enum class Outcome : std::uint8_t {
  not_run,       ///< provably never reached a grain: safe to send again
  may_have_run,  ///< it ran, or may have: send again only if it is idempotent
};

/// "not_run" / "may_have_run".
const char* to_string(Outcome outcome) noexcept;

/// What a call through silo::Client throws when it fails: its status and whether it ran.
class CallError final : public Error {
 public:
  CallError(StatusCode code, const std::string& message, Outcome outcome)
      : Error(code, message), outcome_(outcome) {}
  Outcome outcome() const noexcept { return outcome_; }

 private:
  Outcome outcome_;
};

/// The outcome of any exception a call threw: a CallError's own, else Outcome::may_have_run.
Outcome outcome_of(const std::exception& e) noexcept;

struct ClientOptions {
  /// Gateway endpoints, "host:port". At least one.
  std::vector<std::string> gateways;
  /// Timeout of calls whose CallOptions and method option set none.
  std::chrono::milliseconds default_timeout{std::chrono::seconds(30)};
  /// Threads that run the client's coroutines and complete calls. 1 is plenty for most clients.
  unsigned threads = 1;
  /// Largest message sent or received.
  std::size_t max_message_size = 4 * 1024 * 1024;
  /// How often the client asks the cluster for its gateways (Status) and adds those of active silos to
  /// its list, so it can fail over to silos it was not told about. Zero: use `gateways` only.
  std::chrono::milliseconds gateway_refresh{std::chrono::seconds(10)};
};

class Client final : public detail::Caller {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// A typed reference to a grain: `client.ref<iot::ThermostatRef>("t1")`.
  template <class Ref>
  Ref ref(std::string key) {
    return Ref(this, std::move(key));
  }

  /// The executor the client's coroutines run on.
  boost::asio::any_io_executor executor() const;

  /// Runs `task` on the client's threads and blocks until it finishes; rethrows its exception.
  template <class T>
  T wait(Task<T> task) {
    return spawn(std::move(task)).get();
  }

  /// Starts `task` on the client's threads.
  template <class T>
  std::future<T> spawn(Task<T> task) {
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    boost::asio::co_spawn(executor(), std::move(task), [promise](std::exception_ptr e, auto... value) {
      if (e)
        promise->set_exception(e);
      else
        promise->set_value(std::move(value)...);
    });
    return future;
  }

  /// Starts a coroutine function on the client's threads: `client.spawn([&]() -> silo::Task<void> {...})`.
  /// The function object is kept alive until its coroutine finishes.
  template <class F>
  requires std::is_invocable_v<F>
  auto spawn(F f) {
    using T = typename std::invoke_result_t<F>::value_type;
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    boost::asio::co_spawn(executor(), std::move(f), [promise](std::exception_ptr e, auto... value) {
      if (e)
        promise->set_exception(e);
      else
        promise->set_value(std::move(value)...);
    });
    return future;
  }

  /// detail::Caller: sends one call through a gateway.
  Task<std::unique_ptr<google::protobuf::Message>> call(const MethodInfo& method, std::string key,
                                                        std::unique_ptr<google::protobuf::Message> request,
                                                        CallOptions options) override;

  /// The gateway calls currently go to ("host:port").
  std::string current_gateway() const;
  /// The gateways the client knows: the configured ones plus those learned from the cluster.
  std::vector<std::string> gateways() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace silo
