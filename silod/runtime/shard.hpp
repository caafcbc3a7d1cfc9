#pragma once
// A shard is one worker thread with its own io_context and its own part of the activation catalog.
// An activation lives on the shard its grain id hashes to; everything that touches it runs on that thread,
// so the catalog, mailboxes and pending-call table need no locks. Cross-shard hand-off is a post.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <silo/asio.hpp>

#include "runtime/message.hpp"

namespace silo::runtime {

class Activation;
class Runtime;

struct GrainKeyView {
  const GrainClass* cls;
  std::string_view key;
};

struct GrainKeyHash {
  using is_transparent = void;
  std::size_t operator()(const GrainKeyView& k) const noexcept {
    return std::hash<std::string_view>{}(k.key) ^ (reinterpret_cast<std::uintptr_t>(k.cls) >> 4);
  }
};

struct GrainKey {
  const GrainClass* cls;
  std::string key;
  operator GrainKeyView() const noexcept { return {cls, key}; }
};

struct GrainKeyEq {
  using is_transparent = void;
  bool operator()(const GrainKeyView& a, const GrainKeyView& b) const noexcept {
    return a.cls == b.cls && a.key == b.key;
  }
};

class Shard {
 public:
  Shard(Runtime& runtime, std::uint32_t index);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  boost::asio::io_context& io() noexcept { return io_; }
  std::uint32_t index() const noexcept { return index_; }
  /// The worker whose pending table holds `call_id`.
  static std::uint32_t shard_of(std::uint64_t call_id) noexcept {
    return static_cast<std::uint32_t>(call_id >> 48);
  }
  Runtime& runtime() noexcept { return runtime_; }

  void start();  // starts the thread
  void join();   // after io().stop()

  // --- everything below runs on this shard's thread ---

  /// Hands a request to its activation, creating the activation when there is none.
  void deliver(RequestPtr request);
  /// Routes `request` to its grain and waits for the reply (or the deadline). `send`, when given, replaces
  /// the routing (the cluster relays a request to a known silo with it).
  Task<Reply> call(RequestPtr request, std::function<void(RequestPtr)> send = {});
  /// Completes a pending call; a no-op when it already timed out.
  void complete(std::uint64_t call_id, Reply reply);
  /// Sends the reply of `request` to the shard its caller waits on.
  void reply(const Request& request, Reply reply);
  /// Called by a deactivated activation: drops it and re-delivers what queued up meanwhile.
  void remove(Activation* activation, std::vector<RequestPtr> leftovers);
  /// The directory holds another activation of (cls, key): the local one stops and hands its calls over.
  void lose(const GrainClass& cls, std::string_view key);
  /// Deactivates every activation (silo shutdown); fails calls that would need a new one.
  void deactivate_all();
  /// Fails every pending call with UNAVAILABLE (last step of shutdown).
  void fail_pending(std::string_view why);

  std::size_t activation_count() const noexcept { return activations_.load(std::memory_order_relaxed); }
  /// The (type, key) of every activation that belongs in the directory (called on the thread).
  std::vector<std::pair<const GrainClass*, std::string>> list_activations() const;
  /// Activation count of each grain type on this shard (called on the thread).
  void count_by_type(std::unordered_map<std::string, std::size_t>& out) const;

  // Watchdog support: the last heartbeat, the turn whose code runs (or ran last) on this worker, and the
  // turn the watchdog caught blocking it (reported with its grain id when that turn ends).
  std::atomic<std::int64_t> heartbeat_ns{0};
  std::atomic<const MethodInfo*> last_turn_method{nullptr};
  std::atomic<std::uint64_t> running_turn{0};
  std::atomic<std::uint64_t> stalled_turn{0};
  std::atomic<std::int64_t> stalled_ms{0};
  /// A new turn starts (on the thread); returns its id.
  std::uint64_t begin_turn(const MethodInfo* method) noexcept {
    last_turn_method.store(method, std::memory_order_relaxed);
    running_turn.store(++next_turn_, std::memory_order_relaxed);
    return next_turn_;
  }
  /// A turn's code runs again after an await.
  void resume_turn(std::uint64_t id, const MethodInfo* method) noexcept {
    last_turn_method.store(method, std::memory_order_relaxed);
    running_turn.store(id, std::memory_order_relaxed);
  }

 private:
  struct Pending;
  void arm_deadline_timer();
  void compact_deadlines();
  void on_deadline_timer();
  void schedule_collection();
  void collect_idle();
  Activation* pick_worker(std::vector<std::unique_ptr<Activation>>& pool, const GrainClass& cls);

  Runtime& runtime_;
  std::uint32_t index_;
  boost::asio::io_context io_{1};
  std::thread thread_;

  std::unordered_map<GrainKey, std::vector<std::unique_ptr<Activation>>, GrainKeyHash, GrainKeyEq> catalog_;
  std::atomic<std::size_t> activations_{0};

  std::uint64_t next_call_id_;
  std::uint64_t next_turn_ = 0;  // the worker's index in the top 16 bits: replies find their way back
  std::unordered_map<std::uint64_t, std::unique_ptr<Pending>> pending_;
  using DeadlineEntry = std::pair<Clock::time_point, std::uint64_t>;
  std::priority_queue<DeadlineEntry, std::vector<DeadlineEntry>, std::greater<>> deadlines_;
  boost::asio::steady_timer deadline_timer_{io_};
  Clock::time_point deadline_armed_ = Clock::time_point::max();
  boost::asio::steady_timer collection_timer_{io_};
};

}  // namespace silo::runtime
