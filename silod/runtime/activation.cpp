#include "runtime/activation.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "runtime/reminders.hpp"
#include "runtime/router.hpp"
#include "runtime/runtime.hpp"
#include "runtime/shard.hpp"
#include "storage/provider.hpp"

namespace silo::runtime {

namespace asio = boost::asio;

namespace {
void log_coroutine_failure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("runtime: internal coroutine failed: {}", ex.what());
  } catch (...) {
    spdlog::error("runtime: internal coroutine failed with a non-standard exception");
  }
}

const char* retired_message(Activation::Retired why) {
  if (why == Activation::Retired::lost)
    return "not written: another activation of this grain won the directory; this one is deactivating and "
           "the next call goes to the winner";
  return "not written: an earlier state write of this activation failed, so its in-memory state is not what "
         "is stored; the activation is deactivating and the next call re-reads the stored state";
}

Reply reply_from_exception(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return Reply::failure(err.code(), err.what());
  } catch (const std::exception& ex) {
    return Reply::failure(StatusCode::unknown, ex.what());
  } catch (...) {
    return Reply::failure(StatusCode::unknown, "the grain threw a non-standard exception");
  }
}
}  // namespace

Activation::Activation(Shard& shard, const GrainClass& cls, std::string key)
    : shard_(shard), cls_(cls), key_(std::move(key)), last_active_(Clock::now()) {}

Activation::~Activation() {
  cancel_all_timers();
}

void Activation::activate(bool clustered, Clock::time_point deadline) {
  if (!clustered) {
    asio::co_spawn(shard_.io(), run_activate(), log_coroutine_failure);
    return;
  }
  using Outcome = Router::Registration::Outcome;
  Router* router = shard_.runtime().router();
  router->register_activation(shard_, cls_, key_, deadline, [this, router](Router::Registration reg) {
    if (reg.outcome == Outcome::registered) {
      registered_ = true;
      asio::co_spawn(shard_.io(), run_activate(), log_coroutine_failure);
      return;
    }
    state_ = State::gone;
    Shard& shard = shard_;
    if (reg.outcome == Outcome::unavailable) {
      // No directory owner confirmed it in time: nothing ran, the caller may retry.
      fail_queue(StatusCode::unavailable,
                 "the directory could not confirm the activation of " + std::string(cls_.name()) + "/" +
                     key_ + " in time (membership is changing); the call did not run, retry it",
                 true);
      shard.remove(this, {});  // destroys *this
      return;
    }
    // Another silo holds this grain (a concurrent activation won): hand it everything that queued here.
    spdlog::debug("grain {}/{}: held by silo {}, forwarding {} queued calls", cls_.name(), key_, reg.holder,
                  queue_.size());
    std::vector<RequestPtr> queued;
    while (!queue_.empty()) {
      RequestPtr r = queue_.pop_front();
      if (r->kind != Request::Kind::timer_tick) queued.push_back(std::move(r));
    }
    shard.remove(this, {});  // destroys *this
    for (auto& r : queued)
      router->forward(shard, std::move(r), reg.holder);
  });
}

void Activation::lose() {
  // Another activation of this grain won the directory: run no further turn here; once the running ones
  // end, deactivate and re-deliver the queue (the directory then sends it to the winner).
  if (retired_ == Retired::no) retired_ = Retired::lost;
  request_deactivation();
}

Task<void> Activation::run_activate() {
  std::exception_ptr failure;
  try {
    grain_.reset(cls_.factory());
    detail::GrainAccess::bind(*grain_, this);
    co_await grain_->on_activate();
  } catch (...) {
    failure = std::current_exception();
  }
  if (!failure && retired_ == Retired::state_failed) {
    // on_activate caught the failure of its own state write: its calls cannot run on that state, and a
    // fresh activation would likely fail the same way, so they fail as not run rather than move on.
    failure = std::make_exception_ptr(Error(
        StatusCode::unavailable, "a state write in on_activate failed; the call did not run, retry it"));
  }
  if (failure) {
    const Reply r = reply_from_exception(failure);
    spdlog::warn("grain {}/{}: activation failed: {}", cls_.name(), key_, r.error);
    fail_queue(r.code, "activation of " + std::string(cls_.name()) + "/" + key_ + " failed: " + r.error);
    grain_.reset();
    state_ = State::gone;
    if (registered_) shard_.runtime().router()->unregister_activation(cls_, key_);
    shard_.remove(this, {});  // destroys *this
    co_return;
  }
  spdlog::debug("grain {}/{}: activated on worker {}", cls_.name(), key_, shard_.index());
  state_ = State::valid;
  pump();
}

void Activation::fail_queue(StatusCode code, const std::string& why, bool not_run) {
  while (!queue_.empty()) {
    RequestPtr r = queue_.pop_front();
    Reply reply = Reply::failure(code, why);
    reply.not_run = not_run;
    shard_.reply(*r, std::move(reply));
  }
}

bool Activation::is_call_cycle(const Request& r) const {
  if (running_ == 0) return false;
  return std::any_of(r.chain.begin(), r.chain.end(),
                     [this](const ChainLink& l) { return l.cls == &cls_ && l.key == key_; });
}

void Activation::enqueue(RequestPtr r) {
  if (r->kind == Request::Kind::call && state_ == State::valid && !cls_.info->reentrant &&
      !r->method->always_interleave && is_call_cycle(*r)) {
    if (retired_ != Retired::no) {
      // It cannot wait for the next activation: the turn it would queue behind waits on it.
      shard_.reply(*r, Reply::failure(StatusCode::unavailable,
                                      "the grain's activation is retiring; the call did not run, retry it"));
      return;
    }
    if (cls_.info->call_chain_reentrancy) {
      start_turn(std::move(r));  // the chain waits for us: run it now rather than deadlock
      return;
    }
    const std::string cycle = describe_chain(r->chain, &cls_, key_);
    spdlog::warn("grain {}/{}: deadlock refused: call cycle {}", cls_.name(), key_, cycle);
    shard_.reply(*r, Reply::failure(StatusCode::aborted,
                                    "deadlock: call cycle " + cycle + " among non-reentrant grains; make " +
                                        cls_.name() + " reentrant, mark " + r->method->name +
                                        " always_interleave, or enable call_chain_reentrancy"));
    return;
  }
  if (state_ == State::valid && retired_ == Retired::no && r->kind == Request::Kind::call &&
      r->method->always_interleave) {
    start_turn(std::move(r));
    return;
  }
  queue_.push_back(std::move(r));
  pump();
}

bool Activation::can_start(const Request& r) const {
  if (cls_.info->reentrant) return true;
  if (r.kind == Request::Kind::call && r.method->always_interleave) return true;
  if (r.kind == Request::Kind::call && r.method->read_only)
    return running_exclusive_ == 0 && running_ == running_read_only_;
  return running_ == 0;
}

void Activation::pump() {
  if (state_ != State::valid) return;
  // A retired activation starts nothing: its queued calls are delivered again once it is gone.
  while (retired_ == Retired::no && !queue_.empty() && can_start(queue_.front())) {
    start_turn(queue_.pop_front());
  }
  if (running_ == 0 && (retired_ != Retired::no || (deactivate_requested_ && queue_.empty()))) {
    state_ = State::deactivating;
    asio::co_spawn(shard_.io(), run_deactivate(), log_coroutine_failure);
  }
}

void Activation::start_turn(RequestPtr r) {
  ++running_;
  if (r->kind == Request::Kind::call && r->method->read_only)
    ++running_read_only_;
  else if (r->kind == Request::Kind::timer_tick || !r->method->always_interleave)
    ++running_exclusive_;
  asio::co_spawn(shard_.io(), run_turn(std::move(r)), log_coroutine_failure);
}

Task<void> Activation::run_turn(RequestPtr r) {
  const auto started = Clock::now();
  const bool read_only = r->kind == Request::Kind::call && r->method->read_only;
  const bool exclusive =
      r->kind == Request::Kind::timer_tick || (!read_only && !r->method->always_interleave);
  Reply reply;
  if (r->kind == Request::Kind::timer_tick) {
    r->turn_id = shard_.begin_turn(nullptr);
    current_ = r.get();
    try {
      co_await r->timer->callback();
    } catch (...) {
      reply = reply_from_exception(std::current_exception());
      spdlog::warn("grain {}/{}: timer {} threw: {}", cls_.name(), key_, r->timer->id, reply.error);
    }
  } else if (started > r->deadline) {
    // The caller gave up already; running the call now would only waste the turn.
    reply = Reply::failure(StatusCode::deadline_exceeded, "the call waited in the mailbox past its deadline");
    reply.not_run = true;  // dropped unrun
  } else if (Router* router = shard_.runtime().router(); router && router->fenced()) {
    // The edges (gateway, silo port, sends) refuse new calls of a fenced silo, but a call that queued here
    // before the silo froze would otherwise start when it resumes, already declared dead, while its grain
    // may be active elsewhere (seen once in the SIGSTOP fencing test). One lease read per turn.
    reply = Reply::failure(
        StatusCode::unavailable,
        "this silo was declared dead or cannot confirm its membership; not run, retry the call");
    reply.not_run = true;
  } else if (r->kind == Request::Kind::reminder_tick) {
    r->turn_id = shard_.begin_turn(r->method);
    current_ = r.get();
    ReminderTick tick;
    if (!decode_tick(r->arg_bytes, tick)) {
      reply = Reply::failure(StatusCode::internal, "malformed reminder tick");
    } else {
      try {
        co_await grain_->on_reminder(tick);
      } catch (...) {
        reply = reply_from_exception(std::current_exception());
        spdlog::warn("grain {}/{}: reminder '{}' threw: {}", cls_.name(), key_, tick.name, reply.error);
      }
    }
  } else {
    r->turn_id = shard_.begin_turn(r->method);
    current_ = r.get();
    detail::Invocation inv;
    inv.method = r->method;
    inv.request = r->arg.get();
    inv.request_bytes = r->arg_bytes;
    try {
      co_await grain_->dispatch(inv);
      reply.response = std::move(inv.response);
    } catch (...) {
      reply = reply_from_exception(std::current_exception());
      spdlog::debug("grain {}/{}: {} failed: {} {}", cls_.name(), key_, r->method->name,
                    to_string(reply.code), reply.error);
    }
  }
  current_ = nullptr;
  --running_;
  if (read_only)
    --running_read_only_;
  else if (exclusive)
    --running_exclusive_;

  // Only a turn the watchdog caught blocking the worker is reported: a turn that merely awaits other grains
  // or storage for a long time blocks nobody.
  if (r->turn_id != 0 && shard_.stalled_turn.load(std::memory_order_relaxed) == r->turn_id) {
    shard_.stalled_turn.store(0, std::memory_order_relaxed);
    spdlog::warn(
        "grain {}/{}: turn {} blocked worker {} for over {} ms (grains.turn_warning is {} ms); every call "
        "queued "
        "on that worker waited: move blocking work (sleep, blocking I/O, long loops) off the grain",
        cls_.name(), key_, r->describe(), shard_.index(), shard_.stalled_ms.load(std::memory_order_relaxed),
        shard_.runtime().options().turn_warning.count());
  }
  if (r->kind == Request::Kind::timer_tick) {
    auto& t = r->timer;
    if (!t->cancelled && t->period.count() > 0)
      arm(t, t->period);
    else if (!t->cancelled)
      timers_.erase(t->id);
  } else {
    last_active_ = Clock::now();
    if (reply.code != StatusCode::ok && cls_.info->on_error == OnError::deactivate) {
      spdlog::info("grain {}/{}: deactivating after a failed call (on_error: DEACTIVATE)", cls_.name(), key_);
      deactivate_requested_ = true;
    }
    shard_.reply(*r, std::move(reply));
  }
  pump();
}

void Activation::request_deactivation() {
  deactivate_requested_ = true;
  if (state_ == State::valid) pump();
}

Task<void> Activation::run_deactivate() {
  cancel_all_timers();
  try {
    co_await grain_->on_deactivate();
  } catch (const std::exception& e) {
    spdlog::warn("grain {}/{}: on_deactivate threw: {}", cls_.name(), key_, e.what());
  } catch (...) {
    spdlog::warn("grain {}/{}: on_deactivate threw a non-standard exception", cls_.name(), key_);
  }
  grain_.reset();
  state_ = State::gone;
  if (registered_) shard_.runtime().router()->unregister_activation(cls_, key_);
  spdlog::debug("grain {}/{}: deactivated on worker {}", cls_.name(), key_, shard_.index());
  std::vector<RequestPtr> leftovers;
  while (!queue_.empty()) {
    RequestPtr r = queue_.pop_front();
    if (r->kind != Request::Kind::timer_tick) leftovers.push_back(std::move(r));
  }
  shard_.remove(this, std::move(leftovers));  // destroys *this: nothing may follow
}

Task<std::unique_ptr<google::protobuf::Message>> Activation::call(
    const MethodInfo& method, std::string key, std::unique_ptr<google::protobuf::Message> request,
    CallOptions options) {
  // The chain is what the current turn's caller waits on, plus this grain. Captured before the first
  // suspension: afterwards another turn of a reentrant grain may run.
  CallChain chain;
  if (!method.one_way) {
    if (current_) chain = current_->chain;
    chain.push_back(ChainLink{&cls_, key_});
  }
  const Request* turn = current_;
  auto response = co_await shard_.runtime().call(shard_, std::move(chain), method, std::move(key),
                                                 std::move(request), options);
  current_ = turn;  // this turn's code runs again
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  co_return response;
}

std::uint64_t Activation::register_timer(std::function<Task<void>()> callback, std::chrono::milliseconds due,
                                         std::chrono::milliseconds period) {
  const std::uint64_t id = next_timer_id_++;
  auto t = std::make_shared<TimerState>(shard_.io(), this, id, std::move(callback), period);
  timers_.emplace(id, t);
  arm(t, due);
  return id;
}

void Activation::arm(const std::shared_ptr<TimerState>& t, std::chrono::milliseconds after) {
  t->timer.expires_after(after);
  t->timer.async_wait([t](boost::system::error_code ec) {
    if (ec || t->cancelled) return;
    auto r = std::make_unique<Request>();
    r->kind = Request::Kind::timer_tick;
    r->cls = &t->owner->cls_;
    r->key = t->owner->key_;
    r->timer = t;
    t->owner->enqueue(std::move(r));
  });
}

void Activation::cancel_timer(std::uint64_t id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  it->second->cancelled = true;
  it->second->timer.cancel();
  timers_.erase(it);
}

void Activation::cancel_all_timers() {
  for (auto& [id, t] : timers_) {
    t->cancelled = true;
    t->timer.cancel();
  }
  timers_.clear();
}

void Activation::deactivate_on_idle() {
  deactivate_requested_ = true;
}

void Activation::log(LogLevel level, std::string_view message) {
  spdlog::log(static_cast<spdlog::level::level_enum>(level), "grain {}/{}: {}", cls_.name(), key_, message);
}

bool Activation::log_enabled(LogLevel level) const {
  return spdlog::should_log(static_cast<spdlog::level::level_enum>(level));
}

namespace {

// Runs one storage operation and resumes the grain on its own worker when the provider completes.
template <class Start>
auto storage_op(asio::io_context& io, Start start) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(storage::Outcome)>(
      [&io, start = std::move(start)](auto handler) mutable {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        start([&io, h](storage::Outcome o) {
          asio::post(io, [h, o = std::move(o)]() mutable { std::move (*h)(std::move(o)); });
        });
      },
      asio::use_awaitable);
}

}  // namespace

storage::Provider& Activation::provider(const std::string& name) const {
  storage::Provider* p = shard_.runtime().storage_provider(name);
  if (!p) {
    throw Error(StatusCode::failed_precondition,
                std::string("grain type ") + cls_.name() + " uses storage provider '" + name +
                    "', which is not configured under storage: in the silo's YAML");
  }
  return *p;
}

Task<detail::StoredState> Activation::read_state(const std::string& provider_name, const std::string& name) {
  storage::Provider& p = provider(provider_name);
  const Request* turn = current_;
  storage::StateKey key{cls_.name(), key_, name};
  auto start = [&](storage::Completion done) { p.read(key, std::move(done)); };
  auto out = co_await storage_op(shard_.io(), std::move(start));
  current_ = turn;
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  if (!out.ok()) throw Error(out.code, out.error);
  // A cleared record reads as nothing stored; its version is kept here for the next write.
  set_tombstone(provider_name, name, out.tombstone ? out.etag : 0);
  if (out.tombstone) co_return detail::StoredState{};
  co_return detail::StoredState{std::move(out.data), out.etag};
}

namespace {
std::string state_id(const std::string& provider_name, const std::string& name) {
  std::string id = provider_name;
  id += '\0';
  id += name;
  return id;
}
}  // namespace

std::uint64_t Activation::tombstone(const std::string& provider_name, const std::string& name) const {
  if (tombstones_.empty()) return 0;  // the common case: no cleared record in sight
  const std::string id = state_id(provider_name, name);
  for (const auto& [k, v] : tombstones_)
    if (k == id) return v;
  return 0;
}

void Activation::set_tombstone(const std::string& provider_name, const std::string& name,
                               std::uint64_t version) {
  if (version == 0 && tombstones_.empty()) return;
  const std::string id = state_id(provider_name, name);
  auto it =
      std::find_if(tombstones_.begin(), tombstones_.end(), [&](const auto& t) { return t.first == id; });
  if (version == 0) {
    if (it != tombstones_.end()) tombstones_.erase(it);
  } else if (it != tombstones_.end()) {
    it->second = version;
  } else {
    tombstones_.emplace_back(id, version);
  }
}

Task<std::uint64_t> Activation::write_state(const std::string& provider_name, const std::string& name,
                                            std::string data, std::uint64_t etag) {
  storage::Provider& p = provider(provider_name);
  if (retired_ != Retired::no) throw Error(StatusCode::unavailable, retired_message(retired_));
  if (etag == 0) etag = tombstone(provider_name, name);  // "nothing stored" on top of a cleared record
  const Request* turn = current_;
  storage::StateKey key{cls_.name(), key_, name};
  auto start = [&](storage::Completion done) { p.write(key, std::move(data), etag, std::move(done)); };
  auto out = co_await storage_op(shard_.io(), std::move(start));
  current_ = turn;
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  if (!out.ok()) fail_state_operation(out.code, out.error);
  set_tombstone(provider_name, name, 0);
  co_return out.etag;
}

void Activation::fail_state_operation(StatusCode code, const std::string& error) {
  // Either someone else wrote this state since we read it (aborted: most likely a duplicate activation
  // elsewhere), or the store failed and this activation's in-memory state now differs from what is stored.
  // Both ways it must not serve that state any longer: the next call activates afresh and re-reads, so a
  // failed write is never saved later by an unrelated one.
  spdlog::warn("grain {}/{}: state {} ({}); deactivating this activation", cls_.name(), key_,
               code == StatusCode::aborted ? "conflict" : "write failed", error);
  retired_ = Retired::state_failed;
  throw Error(code, error + "; this activation was deactivated and re-reads its state on the next call");
}

Task<void> Activation::clear_state(const std::string& provider_name, const std::string& name,
                                   std::uint64_t etag) {
  storage::Provider& p = provider(provider_name);
  if (retired_ != Retired::no) throw Error(StatusCode::unavailable, retired_message(retired_));
  if (etag == 0) etag = tombstone(provider_name, name);
  const Request* turn = current_;
  storage::StateKey key{cls_.name(), key_, name};
  auto start = [&](storage::Completion done) { p.clear(key, etag, std::move(done)); };
  auto out = co_await storage_op(shard_.io(), std::move(start));
  current_ = turn;
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  if (!out.ok()) fail_state_operation(out.code, out.error);
  set_tombstone(provider_name, name, out.etag);  // the tombstone's version (0: there was no record)
}

namespace {
// Runs one reminder-service operation and resumes the grain on its own worker.
template <class Result, class Start>
auto reminder_op(asio::io_context& io, Start start) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(Reply, Result)>(
      [&io, start = std::move(start)](auto handler) mutable {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        start([&io, h](Reply r, Result result) {
          asio::post(io, [h, r = std::move(r), result = std::move(result)]() mutable {
            std::move (*h)(std::move(r), std::move(result));
          });
        });
      },
      asio::use_awaitable);
}
}  // namespace

Reminders& Activation::reminders() const {
  Reminders* r = shard_.runtime().reminders();
  if (!r) throw Error(StatusCode::failed_precondition, "reminders are not enabled on this silo");
  return *r;
}

Task<void> Activation::register_reminder(std::string name, std::chrono::milliseconds due,
                                         std::chrono::milliseconds period) {
  Reminders& service = reminders();
  if (name.empty() || name.find('\n') != std::string::npos) {
    throw Error(StatusCode::invalid_argument, "a reminder name must be non-empty and on one line");
  }
  if (period < service.min_period()) {
    throw Error(StatusCode::invalid_argument, "reminder '" + name + "' of " + std::string(cls_.name()) + "/" +
                                                  key_ + ": period " + std::to_string(period.count()) +
                                                  " ms is below reminders.min_period (" +
                                                  std::to_string(service.min_period().count()) + " ms)");
  }
  const auto start = std::chrono::duration_cast<std::chrono::milliseconds>(
                         (std::chrono::system_clock::now() + due).time_since_epoch())
                         .count();
  const Request* turn = current_;
  auto op = [&](std::function<void(Reply, int)> done) {
    service.register_reminder(cls_.name(), key_, name, start, period.count(),
                              [done = std::move(done)](Reply r) { done(std::move(r), 0); });
  };
  auto [reply, ignored] = co_await reminder_op<int>(shard_.io(), std::move(op));
  current_ = turn;
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  if (reply.code != StatusCode::ok) throw Error(reply.code, reply.error);
}

Task<void> Activation::unregister_reminder(std::string name) {
  Reminders& service = reminders();
  const Request* turn = current_;
  auto op = [&](std::function<void(Reply, int)> done) {
    service.unregister_reminder(cls_.name(), key_, name,
                                [done = std::move(done)](Reply r) { done(std::move(r), 0); });
  };
  auto [reply, ignored] = co_await reminder_op<int>(shard_.io(), std::move(op));
  current_ = turn;
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  if (reply.code != StatusCode::ok) throw Error(reply.code, reply.error);
}

Task<std::vector<ReminderInfo>> Activation::list_reminders() {
  Reminders& service = reminders();
  const Request* turn = current_;
  auto op = [&](std::function<void(Reply, std::vector<ReminderInfo>)> done) {
    service.list(cls_.name(), key_, std::move(done));
  };
  auto [reply, list] = co_await reminder_op<std::vector<ReminderInfo>>(shard_.io(), std::move(op));
  current_ = turn;
  if (turn) shard_.resume_turn(turn->turn_id, turn->method);
  if (reply.code != StatusCode::ok) throw Error(reply.code, reply.error);
  co_return list;
}

}  // namespace silo::runtime
