#pragma once
// What the runtime asks of the reminder service (silod/reminders/). Completions may run on any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <silo/reminder.hpp>

#include "runtime/message.hpp"

namespace silo::runtime {

class Reminders {
 public:
  virtual ~Reminders() = default;
  virtual std::chrono::milliseconds min_period() const = 0;
  /// Registers or replaces a reminder; `done` gets an OK reply or the failure.
  virtual void register_reminder(std::string type, std::string key, std::string name, std::int64_t start_ms,
                                 std::int64_t period_ms, std::function<void(Reply)> done) = 0;
  virtual void unregister_reminder(std::string type, std::string key, std::string name,
                                   std::function<void(Reply)> done) = 0;
  virtual void list(std::string type, std::string key,
                    std::function<void(Reply, std::vector<ReminderInfo>)> done) = 0;
};

/// The pseudo-method of reminder ticks (Request::Kind::reminder_tick).
extern const MethodInfo reminder_method;

/// A tick's payload on the wire and in Request::arg_bytes.
std::string encode_tick(const ReminderTick& tick);
bool decode_tick(const std::string& bytes, ReminderTick& out);

}  // namespace silo::runtime
