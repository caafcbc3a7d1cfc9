#include "runtime/runtime.hpp"

#include <cstring>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "runtime/activation.hpp"
#include "runtime/reminders.hpp"
#include "runtime/router.hpp"
#include "runtime/shard.hpp"
#include "storage/provider.hpp"

namespace silo::runtime {

namespace asio = boost::asio;

class Runtime::ClientCaller final : public detail::Caller {
 public:
  ClientCaller(Runtime& rt, Shard& shard) : rt_(rt), shard_(shard) {}
  Task<std::unique_ptr<google::protobuf::Message>> call(const MethodInfo& method, std::string key,
                                                        std::unique_ptr<google::protobuf::Message> request,
                                                        CallOptions options) override {
    return rt_.call(shard_, {}, method, std::move(key), std::move(request), options);
  }

 private:
  Runtime& rt_;
  Shard& shard_;
};

Runtime::Runtime(RuntimeOptions options) : options_(options) {
  if (options_.threads == 0) options_.threads = std::max(1u, std::thread::hardware_concurrency());
}

Runtime::~Runtime() {
  if (started_ && !stopping()) stop(Clock::now() + std::chrono::seconds(5));
}

void Runtime::add_class(std::unique_ptr<GrainClass> cls) {
  if (started_) throw std::logic_error("grain classes must be added before the runtime starts");
  const std::string_view name = cls->name();
  if (auto it = classes_.find(name); it != classes_.end()) {
    throw std::invalid_argument("grain type " + std::string(name) + " is registered by both plugin '" +
                                it->second->plugin + "' and plugin '" + cls->plugin + "'");
  }
  if (cls->collection_age.count() == 0) cls->collection_age = options_.collection_age;
  if (cls->max_local == 0) cls->max_local = options_.threads;
  classes_.emplace(name, std::move(cls));
}

const GrainClass* Runtime::find_class(std::string_view type_name) const {
  auto it = classes_.find(type_name);
  return it == classes_.end() ? nullptr : it->second.get();
}

std::vector<const GrainClass*> Runtime::classes() const {
  std::vector<const GrainClass*> out;
  for (const auto& [name, cls] : classes_)
    out.push_back(cls.get());
  return out;
}

void Runtime::start() {
  for (unsigned i = 0; i < options_.threads; ++i)
    shards_.push_back(std::make_unique<Shard>(*this, i));
  for (auto& s : shards_)
    clients_.push_back(std::make_unique<ClientCaller>(*this, *s));
  for (auto& s : shards_)
    s->start();
  started_ = true;
  watchdog_ = std::thread([this] { watchdog_loop(); });
  spdlog::info("grains: {} worker threads, {} grain types, collection_age {} ms, call_timeout {} ms",
               options_.threads, classes_.size(), options_.collection_age.count(),
               options_.call_timeout.count());
}

void Runtime::drain(Clock::time_point deadline) {
  if (!started_ || stopping_.exchange(true)) return;
  spdlog::info("grains: deactivating {} activations", activation_count());
  for (auto& s : shards_)
    asio::post(s->io(), [&s = *s] { s.deactivate_all(); });
  while (activation_count() > 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (const auto left = activation_count(); left > 0) {
    spdlog::warn(
        "grains: {} activations still busy at the shutdown deadline; their calls fail with UNAVAILABLE",
        left);
  }
}

void Runtime::stop(Clock::time_point deadline) {
  if (!started_ || stopped_) return;
  drain(deadline);
  stopped_ = true;
  // Fail whatever still waits, then let each worker drain its queue and stop.
  std::vector<std::shared_ptr<std::promise<void>>> drained;
  for (auto& s : shards_) {
    auto p = std::make_shared<std::promise<void>>();
    drained.push_back(p);
    asio::post(s->io(), [&s = *s, p] {
      s.fail_pending("silo is shutting down; retry on another silo");
      p->set_value();
    });
  }
  for (auto& p : drained)
    p->get_future().wait_until(deadline + std::chrono::seconds(1));
  {
    std::lock_guard lock(watchdog_mutex_);
    watchdog_stop_ = true;
  }
  watchdog_cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  for (auto& s : shards_)
    s->io().stop();
  for (auto& s : shards_)
    s->join();
  spdlog::info("grains: stopped");
}

Shard& Runtime::shard_for(const GrainClass& cls, std::string_view key) noexcept {
  const std::size_t h = GrainKeyHash{}(GrainKeyView{&cls, key});
  return *shards_[((h * 0x9E3779B97F4A7C15ull) >> 32) % shards_.size()];
}

detail::Caller& Runtime::client(unsigned shard) noexcept {
  return *clients_[shard];
}

asio::io_context& Runtime::shard_io(unsigned i) noexcept {
  return shards_[i]->io();
}

const MethodInfo* Runtime::resolve_method(const GrainClass& cls, const MethodInfo& method) const {
  const auto& methods = cls.info->methods;
  // Fast path: the caller's generated code is the plugin's own.
  if (method.type == cls.info) return &method;
  if (method.index >= 0 && static_cast<std::size_t>(method.index) < methods.size() &&
      std::strcmp(methods[method.index].name, method.name) == 0) {
    return &methods[method.index];
  }
  for (const auto& m : methods)
    if (std::strcmp(m.name, method.name) == 0) return &m;
  return nullptr;
}

Task<std::unique_ptr<google::protobuf::Message>> Runtime::call(Shard& from, CallChain chain,
                                                               const MethodInfo& method, std::string key,
                                                               std::unique_ptr<google::protobuf::Message> arg,
                                                               CallOptions options) {
  const GrainClass* cls = find_class(method.type->name);
  if (!cls) {
    throw Error(StatusCode::not_found, std::string("grain type ") + method.type->name +
                                           " is not loaded on this silo; add its plugin to plugins.load");
  }
  const MethodInfo* m = resolve_method(*cls, method);
  if (!m) {
    throw Error(StatusCode::unimplemented, std::string("grain type ") + cls->name() + " has no method " +
                                               method.name + " (plugin '" + cls->plugin + "')");
  }
  // A draining silo still routes grain-to-grain calls (on_deactivate, queued turns): clustered, they go to
  // the silo holding the grain, or to a new activation on another silo.
  if (stopping() && !(router_ && router_->clustered())) {
    throw Error(StatusCode::unavailable, "silo is shutting down; retry on another silo");
  }
  auto r = std::make_unique<Request>();
  r->cls = cls;
  r->key = std::move(key);
  r->method = m;
  r->arg = std::move(arg);
  r->chain = std::move(chain);
  if (options.one_way || m->one_way) {
    route(from, std::move(r));
    co_return std::unique_ptr<google::protobuf::Message>(m->response_prototype->New());
  }
  std::chrono::milliseconds timeout = options.timeout;
  if (timeout.count() <= 0) timeout = std::chrono::milliseconds(m->timeout_ms);
  if (timeout.count() <= 0) timeout = options_.call_timeout;
  r->deadline = Clock::now() + timeout;
  // The key moves into the request: errors name the grain by type and method (no string built per call).
  Reply reply = co_await from.call(std::move(r));
  if (reply.code != StatusCode::ok) {
    std::string error = std::move(reply.error);
    if (reply.code == StatusCode::deadline_exceeded) {
      error = std::string(cls->name()) + "." + m->name + ": " + error + " (" +
              std::to_string(timeout.count()) + " ms); the call was not resent";
    }
    if (reply.not_run) throw NotRunError(reply.code, error);
    throw Error(reply.code, error);
  }
  if (!reply.response) {
    reply.response.reset(m->response_prototype->New());
    if (!reply.response_bytes.empty() && !reply.response->ParseFromString(reply.response_bytes)) {
      throw Error(StatusCode::internal, std::string(cls->name()) + "." + m->name +
                                            ": cannot parse the remote response as " +
                                            reply.response->GetTypeName());
    }
  }
  co_return std::move(reply.response);
}

void Runtime::deliver_reminder(const GrainClass& cls, std::string key, ReminderTick tick,
                               std::function<void(Reply)> done) {
  auto r = std::make_unique<Request>();
  r->kind = Request::Kind::reminder_tick;
  r->cls = &cls;
  r->key = std::move(key);
  r->method = &reminder_method;
  r->arg_bytes = encode_tick(tick);
  r->deadline = Clock::now() + options_.call_timeout;
  Shard& shard = shard_for(cls, r->key);
  asio::co_spawn(shard.io(), run_reminder(shard, std::move(r), std::move(done)), [](std::exception_ptr e) {
    if (e) spdlog::error("grains: delivering a reminder tick failed unexpectedly");
  });
}

Task<void> Runtime::run_reminder(Shard& shard, RequestPtr request, std::function<void(Reply)> done) {
  Reply reply = co_await shard.call(std::move(request));
  done(std::move(reply));
}

void Runtime::route(Shard& from, RequestPtr request) {
  if (router_ && !request->cls->info->stateless_worker && router_->clustered()) {
    router_->route(from, std::move(request));
    return;
  }
  Shard& target = shard_for(*request->cls, request->key);
  if (&target == &from) {
    // Already on the grain's worker (always for gateway calls, often for grain-to-grain ones): deliver
    // now instead of a post. Safe: deliver only queues and posts; nothing in it resumes the caller.
    target.deliver(std::move(request));
    return;
  }
  asio::post(target.io(), [&target, r = std::move(request)]() mutable { target.deliver(std::move(r)); });
}

std::vector<std::pair<const GrainClass*, std::string>> Runtime::local_activations() {
  std::vector<std::pair<const GrainClass*, std::string>> out;
  for (auto& s : shards_) {
    auto p = std::make_shared<std::promise<std::vector<std::pair<const GrainClass*, std::string>>>>();
    auto f = p->get_future();
    asio::post(s->io(), [&s = *s, p] { p->set_value(s.list_activations()); });
    if (f.wait_for(std::chrono::seconds(5)) != std::future_status::ready) continue;  // a stuck worker
    auto part = f.get();
    out.insert(out.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
  }
  return out;
}

storage::Provider* Runtime::storage_provider(const std::string& name) const {
  return storage_ ? storage_->find(name) : nullptr;
}

std::size_t Runtime::activation_count() const {
  std::size_t n = 0;
  for (const auto& s : shards_)
    n += s->activation_count();
  return n;
}

std::unordered_map<std::string, std::size_t> Runtime::activation_counts() {
  std::unordered_map<std::string, std::size_t> out;
  for (auto& s : shards_) {
    std::promise<std::unordered_map<std::string, std::size_t>> p;
    auto f = p.get_future();
    asio::post(s->io(), [&s = *s, &p] {
      std::unordered_map<std::string, std::size_t> part;
      s.count_by_type(part);
      p.set_value(std::move(part));
    });
    for (auto& [type, n] : f.get())
      out[type] += n;
  }
  return out;
}

void Runtime::watchdog_loop() {
  // A worker that does not answer a heartbeat within turn_warning is stuck in one long synchronous turn.
  const auto period = std::max(options_.turn_warning / 2, std::chrono::milliseconds(10));
  std::vector<bool> warned(shards_.size(), false);
  std::unique_lock lock(watchdog_mutex_);
  while (!watchdog_cv_.wait_for(lock, period, [this] { return watchdog_stop_; })) {
    const auto now = Clock::now().time_since_epoch().count();
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      Shard& s = *shards_[i];
      const auto beat = s.heartbeat_ns.load(std::memory_order_relaxed);
      const auto stalled = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::duration(now - beat));
      if (stalled >= options_.turn_warning) {
        if (!warned[i]) {
          const MethodInfo* m = s.last_turn_method.load(std::memory_order_relaxed);
          // Blame the turn that runs: it is reported with its grain id when it ends.
          s.stalled_ms.store(stalled.count(), std::memory_order_relaxed);
          s.stalled_turn.store(s.running_turn.load(std::memory_order_relaxed), std::memory_order_relaxed);
          spdlog::warn(
              "grains: worker {} has been blocked for {} ms, running {}{}{}; a grain is blocking its "
              "thread (sleep, blocking I/O, long loop)",
              i, stalled.count(), m && m->type ? m->type->name : "a timer or reminder",
              m && m->type ? "." : "", m && m->type ? m->name : "");
          warned[i] = true;
        }
      } else {
        warned[i] = false;
      }
      asio::post(s.io(), [&s] {
        s.heartbeat_ns.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      });
    }
  }
}

}  // namespace silo::runtime
