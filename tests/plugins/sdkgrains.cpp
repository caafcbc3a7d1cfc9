// Implementations of sdkgrains.proto. Process-wide counters and gates are reached through the Control
// grain, so a test observes side effects of calls that answered nothing (one-way calls, timer ticks).

#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include <boost/asio/steady_timer.hpp>
#include <silo/silo.hpp>

#include "sdkgrains.silo.h"

namespace {

using std::chrono::milliseconds;

std::mutex mutex;
std::map<std::string, std::int64_t> counters;
std::set<std::string> open_gates;

void bump(const std::string& name) {
  std::lock_guard lock(mutex);
  ++counters[name];
}
std::int64_t get(const std::string& name) {
  std::lock_guard lock(mutex);
  auto it = counters.find(name);
  return it == counters.end() ? 0 : it->second;
}
bool is_open(const std::string& gate) {
  std::lock_guard lock(mutex);
  return open_gates.count(gate) > 0;
}

silo::Task<void> sleep_for(milliseconds ms) {
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, ms);
  co_await t.async_wait(boost::asio::use_awaitable);
}

sdk::Ident ident(const std::string& key) {
  sdk::Ident id;
  id.set_pid(::getpid());
  id.set_key(key);
  return id;
}

class Control final : public sdk::ControlGrain {
 public:
  silo::Task<sdk::Empty> Open(const sdk::Name& req) override {
    std::lock_guard lock(mutex);
    open_gates.insert(req.name());
    co_return sdk::Empty{};
  }
  silo::Task<sdk::Count> Get(const sdk::Name& req) override {
    sdk::Count c;
    c.set_value(get(req.name()));
    co_return c;
  }
};

class Sdk final : public sdk::SdkGrain {
 public:
  silo::Task<sdk::Empty> Hold(const sdk::Name& req) override { co_return co_await hold(req.name()); }
  silo::Task<sdk::Empty> HoldOneWay(const sdk::Name& req) override { co_return co_await hold(req.name()); }

  // Timer callbacks only call member coroutines: a capturing lambda coroutine would keep a pointer to its
  // closure, which cancel_timer may destroy while the tick runs.
  silo::Task<sdk::Empty> Timers(const sdk::Empty&) override {
    register_timer([this] { return count("oneshot:"); }, milliseconds(20));  // period 0: once
    const silo::TimerId cancelled =
        register_timer([this] { return count("cancelled:"); }, milliseconds(30), milliseconds(30));
    cancel_timer(cancelled);
    periodic_ = register_timer([this] { return periodic_tick(); }, milliseconds(10), milliseconds(10));
    co_return sdk::Empty{};
  }

  silo::Task<sdk::KeyReply> Key(const sdk::Name& req) override {
    sdk::KeyReply r;
    r.set_own_key(key());
    const auto other = grain<sdk::SdkRef>(req.name());
    r.set_ref_key(other.key());
    r.set_callee_key((co_await other.Whoami(sdk::Empty{})).key());
    co_return r;
  }

  silo::Task<sdk::Ident> Whoami(const sdk::Empty&) override { co_return ident(key()); }

  silo::Task<sdk::LogReply> Log(const sdk::Name& req) override {
    const auto log = logger();
    log.trace(req.name() + " at trace");
    log.debug(req.name() + " at debug");
    log.info(req.name() + " at info");
    log.warn(req.name() + " at warn");
    log.error(req.name() + " at error");
    sdk::LogReply r;
    for (auto level : {silo::LogLevel::trace, silo::LogLevel::debug, silo::LogLevel::info,
                       silo::LogLevel::warn, silo::LogLevel::error})
      r.add_enabled(log.enabled(level));
    co_return r;
  }

  silo::Task<sdk::Empty> Remind(const sdk::ReminderRequest& req) override {
    co_await register_reminder(req.name(), milliseconds(req.due_ms()), milliseconds(req.period_ms()));
    co_return sdk::Empty{};
  }
  silo::Task<sdk::Empty> Unremind(const sdk::Name& req) override {
    co_await unregister_reminder(req.name());
    co_return sdk::Empty{};
  }
  silo::Task<sdk::ReminderList> Reminders(const sdk::Empty&) override {
    sdk::ReminderList out;
    for (const auto& r : co_await reminders()) {
      auto* e = out.add_entries();
      e->set_name(r.name);
      e->set_period_ms(r.period.count());
    }
    co_return out;
  }
  // Counts ticks per (name, period): a replaced reminder's old period must stop showing up.
  silo::Task<void> on_reminder(const silo::ReminderTick& tick) override {
    bump("tick:" + key() + "/" + tick.name + "/" + std::to_string(tick.period.count()));
    // "once...": a reminder that removes itself from its own tick (a common way to stop after N ticks).
    if (tick.name.starts_with("once")) co_await unregister_reminder(tick.name);
  }

  silo::Task<sdk::Empty> Deactivate(const sdk::Empty&) override {
    deactivate_on_idle();
    co_return sdk::Empty{};
  }

 private:
  silo::Task<sdk::Empty> hold(const std::string& gate) {
    bump("hold_started:" + key());
    for (int i = 0; i < 4000 && !is_open(gate); ++i)  // at most 20 s
      co_await sleep_for(milliseconds(5));
    bump("hold_done:" + key());
    co_return sdk::Empty{};
  }
  silo::Task<void> count(std::string prefix) {
    bump(prefix + key());
    co_return;
  }
  // The third tick cancels its own timer and starts the sentinel: once the sentinel ticked, a timer that
  // was not stopped would have ticked ~20 more times.
  silo::Task<void> periodic_tick() {
    bump("periodic:" + key());
    if (++periodic_ticks_ == 3) {
      cancel_timer(periodic_);
      register_timer([this] { return count("sentinel:"); }, milliseconds(200));
    }
    co_return;
  }

  silo::TimerId periodic_ = 0;
  int periodic_ticks_ = 0;
};

class TwoStates final : public sdk::TwoStatesGrain {
 public:
  silo::Task<void> on_activate() override {
    co_await a_.read();
    co_await b_.read();
  }
  silo::Task<sdk::Both> SetA(const sdk::StateA& req) override {
    *a_ = req;
    co_await a_.write();
    co_return both();
  }
  silo::Task<sdk::Both> SetB(const sdk::StateB& req) override {
    *b_ = req;
    co_await b_.write();
    co_return both();
  }
  silo::Task<sdk::Both> ClearA(const sdk::Empty&) override {
    co_await a_.clear();
    co_return both();
  }
  silo::Task<sdk::Both> Get(const sdk::Empty&) override { co_return both(); }
  silo::Task<sdk::Empty> Deactivate(const sdk::Empty&) override {
    deactivate_on_idle();
    co_return sdk::Empty{};
  }

 private:
  sdk::Both both() const {
    sdk::Both r;
    r.set_a(a_->a());
    r.set_b(b_->b());
    r.set_etag_a(a_.etag());
    r.set_etag_b(b_.etag());
    return r;
  }
  silo::PersistentState<sdk::StateA> a_{*this, "default", "a"};
  silo::PersistentState<sdk::StateB> b_{*this, "default", "b"};
};

// The placement grains differ only in their generated base (which carries the placement option).
template <class Base>
class Placed final : public Base {
 public:
  silo::Task<sdk::Ident> Whoami(const sdk::Empty&) override { co_return ident(this->key()); }
  silo::Task<sdk::Empty> Deactivate(const sdk::Empty&) override {
    this->deactivate_on_idle();
    co_return sdk::Empty{};
  }
};

// Key "<port>/<anything>": the candidate listening on <port>. Anything else: out of range, so the type's
// default policy decides.
std::size_t by_port(std::string_view, std::string_view key, std::span<const silo::PlacementCandidate> c) {
  const auto slash = key.find('/');
  if (slash == std::string_view::npos) return c.size();
  const std::string needle = ":" + std::string(key.substr(0, slash)) + "@";
  for (std::size_t i = 0; i < c.size(); ++i)
    if (c[i].silo.find(needle) != std::string_view::npos) return i;
  return c.size();
}

}  // namespace

SILO_PLUGIN(sdkgrains) {
  registry.add_director("by_port", by_port);
  registry.add<Control>();
  registry.add<Sdk>();
  registry.add<TwoStates>();
  registry.add<Placed<sdk::RandomPlacedGrain>>();
  registry.add<Placed<sdk::HashPlacedGrain>>();
  registry.add<Placed<sdk::CountPlacedGrain>>();
  registry.add<Placed<sdk::LocalPlacedGrain>>();
  registry.add<Placed<sdk::DirectedGrain>>();
}
