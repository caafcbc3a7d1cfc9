#pragma once
/// @file
/// silo::Grain: the base of every grain class. Plugins derive from the generated base
/// (`iot::ThermostatGrain`), which derives from this.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "silo/call_options.hpp"
#include "silo/detail/context.hpp"
#include "silo/error.hpp"
#include "silo/grain_ref.hpp"
#include "silo/logger.hpp"
#include "silo/task.hpp"

namespace silo {

namespace detail {
class GrainAccess;
}

/// A handle to a timer registered by Grain::register_timer.
using TimerId = std::uint64_t;

/// The base of every grain. Constructors must have no side effects: silod constructs one instance of each
/// type when it loads the plugin, to learn which storage providers its PersistentStates use.
/// One instance is one activation: the runtime creates it on the first call to
/// its id, runs on_activate() before any method, runs its methods one turn at a time (unless the type is
/// reentrant or the method interleaves), and runs on_deactivate() before destroying it.
class Grain {
 public:
  Grain() = default;
  Grain(const Grain&) = delete;
  Grain& operator=(const Grain&) = delete;
  virtual ~Grain() = default;

  /// Runs once, before the first method. An exception fails the activation and the calls waiting for it.
  virtual Task<void> on_activate() { co_return; }
  /// Runs once, after the last method, when the activation is collected or the silo stops.
  virtual Task<void> on_deactivate() { co_return; }
  /// Runs for each tick of this grain's reminders, as a turn like any call.
  virtual Task<void> on_reminder(const ReminderTick& tick) { co_return; }

  /// The grain key (its identity within its type).
  const std::string& key() const { return ctx_->key(); }

  /// A reference to another grain (or this one), for grain-to-grain calls:
  /// `co_await grain<iot::HomeRef>("home-1").AddThermostat(req);`
  template <class Ref>
  Ref grain(std::string key) const {
    return Ref(ctx_, std::move(key));
  }

  /// Runs `callback` after `due`, then every `period` (zero: once). Each tick is a turn of this activation,
  /// queued like a call; the next period starts when the tick ends. Timers stop when the activation is
  /// deactivated. Returns an id for cancel_timer.
  TimerId register_timer(std::function<Task<void>()> callback, std::chrono::milliseconds due,
                         std::chrono::milliseconds period = std::chrono::milliseconds{0}) {
    return ctx_->register_timer(std::move(callback), due, period);
  }
  /// Stops a timer; a tick already running finishes.
  void cancel_timer(TimerId id) { ctx_->cancel_timer(id); }

  /// Registers (or replaces) the durable reminder `name`: first tick after `due`, then every `period`
  /// (at least `reminders.min_period`, 1 s by default). Ticks call on_reminder().
  Task<void> register_reminder(std::string name, std::chrono::milliseconds due,
                               std::chrono::milliseconds period) {
    return ctx_->register_reminder(std::move(name), due, period);
  }
  /// Removes reminder `name` (no-op when there is none).
  Task<void> unregister_reminder(std::string name) { return ctx_->unregister_reminder(std::move(name)); }
  /// This grain's reminders.
  Task<std::vector<ReminderInfo>> reminders() { return ctx_->list_reminders(); }

  /// Asks the runtime to deactivate this activation once the current turn ends.
  void deactivate_on_idle() { ctx_->deactivate_on_idle(); }

  /// This activation's logger: lines carry the grain id.
  Logger logger() const { return Logger(ctx_); }

  /// Generated: this grain's type metadata.
  virtual const GrainTypeInfo& grain_type() const = 0;
  /// Generated: decodes `inv`, runs the method, stores the response in inv.response.
  virtual Task<void> dispatch(detail::Invocation& inv) = 0;

 private:
  friend class detail::GrainAccess;
  detail::ActivationContext* ctx_ = nullptr;
  std::vector<std::pair<std::string, std::string>> states_;  // (provider, name) of its PersistentStates
};

namespace detail {
/// Used by the runtime to bind an instance to its activation before on_activate().
class GrainAccess {
 public:
  static void bind(Grain& g, ActivationContext* ctx) { g.ctx_ = ctx; }
  static ActivationContext& context(const Grain& g) { return *g.ctx_; }
  static void declare_state(Grain& g, std::string provider, std::string name) {
    g.states_.emplace_back(std::move(provider), std::move(name));
  }
  static const std::vector<std::pair<std::string, std::string>>& states(const Grain& g) { return g.states_; }
};
}  // namespace detail

}  // namespace silo
