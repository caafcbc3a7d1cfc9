#include "runtime/shard.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "runtime/activation.hpp"
#include "runtime/router.hpp"
#include "runtime/runtime.hpp"

namespace silo::runtime {

namespace asio = boost::asio;

// A caller's coroutine waiting for its reply. The handler resumes the coroutine inline, so it is only ever
// invoked on this shard's thread.
struct Shard::Pending {
  virtual ~Pending() = default;
  virtual void complete(Reply reply) = 0;
  Clock::time_point deadline = Clock::time_point::max();
};

Shard::Shard(Runtime& runtime, std::uint32_t index)
    : runtime_(runtime), index_(index), next_call_id_((std::uint64_t(index) << 48) + 1) {}

Shard::~Shard() {
  catalog_.clear();
  pending_.clear();
}

void Shard::start() {
  schedule_collection();
  heartbeat_ns.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  thread_ = std::thread([this] {
    auto guard = asio::make_work_guard(io_);
    for (;;) {
      try {
        io_.run();
        break;
      } catch (const std::exception& e) {
        // Handlers catch their own errors; reaching this is a bug, but the worker must survive it.
        spdlog::critical("worker {}: unexpected exception escaped a handler: {}", index_, e.what());
      }
    }
  });
}

void Shard::join() {
  if (thread_.joinable()) thread_.join();
}

Activation* Shard::pick_worker(std::vector<std::unique_ptr<Activation>>& pool, const GrainClass& cls) {
  Activation* best = nullptr;
  for (auto& a : pool) {
    if (a->state() == Activation::State::deactivating || a->state() == Activation::State::gone) continue;
    if (a->idle()) return a.get();
    if (!best || a->load() < best->load()) best = a.get();
  }
  if (!best || pool.size() < cls.max_local) return nullptr;  // room for one more
  return best;
}

void Shard::deliver(RequestPtr request) {
  const GrainClass& cls = *request->cls;
  auto it = catalog_.find(GrainKeyView{&cls, request->key});
  Activation* target = nullptr;
  if (it != catalog_.end()) {
    auto& pool = it->second;
    if (cls.info->stateless_worker) {
      target = pick_worker(pool, cls);
    } else if (!pool.empty()) {
      target = pool.front().get();
    }
  }
  if (!target) {
    Router* router = runtime_.router();
    const bool clustered = router && !cls.info->stateless_worker && router->clustered();
    if (runtime_.stopping() && clustered && router->place_elsewhere(*this, request)) return;
    if (runtime_.stopping()) {
      reply(*request,
            Reply::failure(StatusCode::unavailable, "silo is shutting down and activates no more grains (" +
                                                        request->describe() + "); retry on another silo"));
      return;
    }
    if (it == catalog_.end()) it = catalog_.emplace(GrainKey{&cls, request->key}, 0).first;
    auto activation = std::make_unique<Activation>(*this, cls, request->key);
    target = activation.get();
    it->second.push_back(std::move(activation));
    activations_.fetch_add(1, std::memory_order_relaxed);
    // The first call's deadline bounds the wait for the directory, with room for the UNAVAILABLE reply
    // to reach the caller first (a reply after the deadline reads as "may have run").
    auto deadline = request->deadline;
    const auto now = Clock::now();
    if (deadline == Clock::time_point::max()) deadline = now + runtime_.options().call_timeout;
    if (deadline > now)
      deadline -= std::min<Clock::duration>(std::chrono::milliseconds(200), (deadline - now) / 4);
    target->activate(clustered, deadline);
  }
  target->enqueue(std::move(request));
}

Task<Reply> Shard::call(RequestPtr request, std::function<void(RequestPtr)> send) {
  const std::uint64_t id = next_call_id_++;
  request->reply_shard = index_;
  request->call_id = id;
  const Clock::time_point deadline = request->deadline;
  // Register the pending call first: a local reply is always posted, so it cannot overtake this.
  auto route = [this, r = std::move(request), send = std::move(send)]() mutable {
    if (send)
      send(std::move(r));
    else
      runtime_.route(*this, std::move(r));
  };

  return asio::async_initiate<decltype(asio::use_awaitable), void(Reply)>(
      [this, id, deadline, route = std::move(route)](auto handler) mutable {
        using Handler = decltype(handler);
        struct Impl final : Pending {
          explicit Impl(Handler&& h) : handler(std::move(h)) {}
          void complete(Reply reply) override { std::move(handler)(std::move(reply)); }
          Handler handler;
        };
        auto pending = std::make_unique<Impl>(std::move(handler));
        pending->deadline = deadline;
        pending_.emplace(id, std::move(pending));
        if (deadline != Clock::time_point::max()) {
          deadlines_.emplace(deadline, id);
          // Completed calls leave their entry behind until it comes due; rebuilding from the calls still
          // pending keeps the heap proportional to calls in flight, not to throughput x timeout.
          if (deadlines_.size() > 2 * pending_.size() + 64) compact_deadlines();
          if (deadline < deadline_armed_) arm_deadline_timer();
        }
        route();
      },
      asio::use_awaitable);
}

void Shard::complete(std::uint64_t call_id, Reply reply) {
  auto it = pending_.find(call_id);
  if (it == pending_.end()) return;  // timed out already: the late reply is dropped
  auto pending = std::move(it->second);
  pending_.erase(it);
  pending->complete(std::move(reply));
}

void Shard::reply(const Request& request, Reply reply) {
  if (request.sink) {
    request.sink->reply(request, std::move(reply));
    return;
  }
  if (request.call_id == 0) return;
  Shard& caller = runtime_.shard(request.reply_shard);
  asio::post(caller.io(), [&caller, id = request.call_id, r = std::move(reply)]() mutable {
    caller.complete(id, std::move(r));
  });
}

void Shard::compact_deadlines() {
  std::vector<DeadlineEntry> live;
  live.reserve(pending_.size());
  for (const auto& [id, p] : pending_)
    if (p->deadline != Clock::time_point::max()) live.emplace_back(p->deadline, id);
  deadlines_ = decltype(deadlines_)(std::greater<>(), std::move(live));
}

void Shard::arm_deadline_timer() {
  if (deadlines_.empty()) {
    deadline_armed_ = Clock::time_point::max();
    return;
  }
  deadline_armed_ = deadlines_.top().first;
  deadline_timer_.expires_at(deadline_armed_);
  deadline_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;  // re-armed for an earlier deadline, or shutting down
    on_deadline_timer();
  });
}

void Shard::on_deadline_timer() {
  const auto now = Clock::now();
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    const std::uint64_t id = deadlines_.top().second;
    deadlines_.pop();
    complete(id, Reply::failure(StatusCode::deadline_exceeded, "no answer before the call's deadline"));
  }
  arm_deadline_timer();
}

void Shard::schedule_collection() {
  // Check often enough to collect within ~25% of the shortest collection age.
  auto tick = runtime_.options().collection_age / 4;
  for (const GrainClass* cls : runtime_.classes())
    tick = std::min(tick, cls->collection_age / 4);
  tick = std::clamp<std::chrono::milliseconds>(tick, std::chrono::milliseconds(50), std::chrono::seconds(10));
  collection_timer_.expires_after(tick);
  collection_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || runtime_.stopping()) return;
    collect_idle();
    schedule_collection();
  });
}

void Shard::collect_idle() {
  const auto now = Clock::now();
  for (auto& [key, pool] : catalog_) {
    for (auto& a : pool) {
      if (a->state() == Activation::State::valid && a->idle() &&
          now - a->last_active() >= a->grain_class().collection_age) {
        a->request_deactivation();
      }
    }
  }
}

void Shard::remove(Activation* activation, std::vector<RequestPtr> leftovers) {
  auto it = catalog_.find(GrainKeyView{&activation->grain_class(), activation->key()});
  if (it != catalog_.end()) {
    auto& pool = it->second;
    std::erase_if(pool, [activation](const auto& a) { return a.get() == activation; });
    activations_.fetch_sub(1, std::memory_order_relaxed);
    if (pool.empty()) catalog_.erase(it);
  }
  // Requests that arrived while it was deactivating go to a fresh activation (or fail during shutdown).
  for (auto& r : leftovers)
    deliver(std::move(r));
}

void Shard::lose(const GrainClass& cls, std::string_view key) {
  auto it = catalog_.find(GrainKeyView{&cls, key});
  if (it == catalog_.end()) return;
  std::vector<Activation*> pool;
  for (auto& a : it->second)
    pool.push_back(a.get());
  for (Activation* a : pool)
    a->lose();
}

void Shard::deactivate_all() {
  collection_timer_.cancel();
  // Collect the pointers first: deactivation may complete synchronously and erase catalog entries.
  std::vector<Activation*> all;
  for (auto& [key, pool] : catalog_)
    for (auto& a : pool)
      all.push_back(a.get());
  for (Activation* a : all)
    a->request_deactivation();
}

void Shard::fail_pending(std::string_view why) {
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [id, p] : pending)
    p->complete(Reply::failure(StatusCode::unavailable, std::string(why)));
  deadline_timer_.cancel();
}

std::vector<std::pair<const GrainClass*, std::string>> Shard::list_activations() const {
  std::vector<std::pair<const GrainClass*, std::string>> out;
  for (const auto& [key, pool] : catalog_)
    if (!key.cls->info->stateless_worker) out.emplace_back(key.cls, key.key);
  return out;
}

void Shard::count_by_type(std::unordered_map<std::string, std::size_t>& out) const {
  for (const auto& [key, pool] : catalog_)
    out[key.cls->name()] += pool.size();
}

}  // namespace silo::runtime
