#pragma once
// One in-memory instance of a grain. Owns the grain object, its mailbox and its timers, and decides when a
// queued request may start a turn. Lives on one shard and is only touched from that shard's thread.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/steady_timer.hpp>
#include <silo/grain.hpp>

#include "runtime/message.hpp"

namespace silo::storage {
class Provider;
}

namespace silo::runtime {

class Shard;
class Activation;
class Reminders;

class TimerState {
 public:
  TimerState(boost::asio::io_context& io, Activation* owner, std::uint64_t id, std::function<Task<void>()> cb,
             std::chrono::milliseconds period)
      : timer(io), owner(owner), id(id), callback(std::move(cb)), period(period) {}
  boost::asio::steady_timer timer;
  Activation* owner;
  std::uint64_t id;
  std::function<Task<void>()> callback;
  std::chrono::milliseconds period;
  bool cancelled = false;
};

class Activation final : public detail::ActivationContext {
 public:
  enum class State : std::uint8_t { activating, valid, deactivating, gone };
  enum class Retired : std::uint8_t { no, lost, state_failed };  // see retired_

  Activation(Shard& shard, const GrainClass& cls, std::string key);
  ~Activation();

  /// Starts the activation: registers it in the directory first when `clustered` (another silo may hold
  /// the grain: then the queued requests go there; no owner confirms it before `deadline`: they fail with
  /// UNAVAILABLE), then runs on_activate(); requests queue meanwhile.
  void activate(bool clustered, Clock::time_point deadline);
  /// The directory names another activation of this grain: retire (see `retired_`).
  void lose();
  /// Adds a request to the mailbox and starts whatever may start.
  void enqueue(RequestPtr request);
  /// Deactivates once idle (now, if idle already).
  void request_deactivation();

  State state() const noexcept { return state_; }
  bool idle() const noexcept { return running_ == 0 && queue_.empty(); }
  std::size_t load() const noexcept { return running_ + queue_.size(); }
  Clock::time_point last_active() const noexcept { return last_active_; }
  const GrainClass& grain_class() const noexcept { return cls_; }

  // detail::ActivationContext
  const std::string& key() const override { return key_; }
  const GrainTypeInfo& type() const override { return *cls_.info; }
  Task<std::unique_ptr<google::protobuf::Message>> call(const MethodInfo& method, std::string key,
                                                        std::unique_ptr<google::protobuf::Message> request,
                                                        CallOptions options) override;
  std::uint64_t register_timer(std::function<Task<void>()> callback, std::chrono::milliseconds due,
                               std::chrono::milliseconds period) override;
  void cancel_timer(std::uint64_t id) override;
  void deactivate_on_idle() override;
  void log(LogLevel level, std::string_view message) override;
  bool log_enabled(LogLevel level) const override;
  Task<detail::StoredState> read_state(const std::string& provider, const std::string& name) override;
  Task<std::uint64_t> write_state(const std::string& provider, const std::string& name, std::string data,
                                  std::uint64_t etag) override;
  Task<void> clear_state(const std::string& provider, const std::string& name, std::uint64_t etag) override;
  Task<void> register_reminder(std::string name, std::chrono::milliseconds due,
                               std::chrono::milliseconds period) override;
  Task<void> unregister_reminder(std::string name) override;
  Task<std::vector<ReminderInfo>> list_reminders() override;

 private:
  storage::Provider& provider(const std::string& name) const;
  Reminders& reminders() const;
  [[noreturn]] void fail_state_operation(StatusCode code, const std::string& error);
  // The version of a tombstone (a cleared record) this activation read or left; 0: none. PersistentState
  // shows a cleared record as "nothing stored" (etag 0) to grain code; the runtime writes on top of it with
  // the tombstone's version, so versions stay monotonic without changing the SDK's etag contract.
  std::uint64_t tombstone(const std::string& provider, const std::string& name) const;
  void set_tombstone(const std::string& provider, const std::string& name, std::uint64_t version);
  bool can_start(const Request& r) const;
  bool is_call_cycle(const Request& r) const;
  void pump();
  void start_turn(RequestPtr r);
  Task<void> run_turn(RequestPtr r);
  Task<void> run_activate();
  Task<void> run_deactivate();
  void arm(const std::shared_ptr<TimerState>& t, std::chrono::milliseconds after);
  void cancel_all_timers();
  /// Fails every queued request; `not_run`: they provably did not run (the caller may send them again).
  void fail_queue(StatusCode code, const std::string& why, bool not_run = false);

  Shard& shard_;
  const GrainClass& cls_;
  std::string key_;
  std::unique_ptr<Grain> grain_;
  State state_ = State::activating;
  RequestQueue queue_;
  std::uint32_t running_ = 0;            // turns in progress
  std::uint32_t running_exclusive_ = 0;  // ... of which neither read_only nor always_interleave
  std::uint32_t running_read_only_ = 0;
  const Request* current_ = nullptr;  // the turn whose code runs now (for the call chain)
  bool deactivate_requested_ = false;
  // Why this activation retired, if it did. A retired activation starts no further turn and writes no state;
  // it deactivates once its running turns end, and its queued calls are delivered again (to the winner, or
  // to a fresh activation that re-reads the stored state).
  //  - lost: another activation of the grain won the directory (re-registration after a view change);
  //  - state_failed: a state write or clear failed, so the in-memory state may differ from what is stored.
  Retired retired_ = Retired::no;
  bool registered_ = false;  // in the directory: unregister on deactivation
  Clock::time_point last_active_;
  std::uint64_t next_timer_id_ = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<TimerState>> timers_;
  std::vector<std::pair<std::string, std::uint64_t>> tombstones_;  // "provider\0name" -> version (rare)
};

}  // namespace silo::runtime
