#pragma once
/// @file
/// Reminders: durable timers of a grain. Unlike timers they survive deactivation, restarts and the loss of
/// a silo; each tick is delivered as a call to Grain::on_reminder and activates the grain if needed. A tick
/// that fell due while no silo could deliver it is delivered late, once, not skipped.

#include <chrono>
#include <string>

namespace silo {

/// A registered reminder.
struct ReminderInfo {
  std::string name;
  std::chrono::system_clock::time_point first_tick;
  std::chrono::milliseconds period;
};

/// What on_reminder is told about the tick it runs for.
struct ReminderTick {
  std::string name;
  std::chrono::system_clock::time_point due;  ///< when this tick fell due
  std::chrono::milliseconds period;
  bool late = false;  ///< delivered more than one period after it fell due (its silo was down)
};

}  // namespace silo
