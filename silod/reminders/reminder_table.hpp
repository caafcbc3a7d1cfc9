#pragma once
// Where reminders are kept: one row per (grain type, grain key, name) with its schedule and the due time
// of the last tick delivered (so a tick missed while no silo could deliver it is delivered late, once).
// Calls block; the reminder service makes them from its own thread.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace silo::reminders {

struct ReminderRow {
  std::string grain_type;
  std::string grain_key;
  std::string name;
  std::int64_t start_ms = 0;  // unix ms of the first tick
  std::int64_t period_ms = 0;
  std::int64_t last_tick_ms = 0;  // due time of the last delivered tick; 0: none yet
};

/// The store cannot be reached; the service retries later.
class TableUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ReminderTable {
 public:
  virtual ~ReminderTable() = default;
  virtual void init() = 0;
  virtual void upsert(const ReminderRow& row) = 0;
  virtual void remove(const std::string& type, const std::string& key, const std::string& name) = 0;
  virtual std::vector<ReminderRow> for_grain(const std::string& type, const std::string& key) = 0;
  virtual std::vector<ReminderRow> all() = 0;
  /// Records a delivered tick if the stored reminder still has `row`'s schedule. False when it does not:
  /// it was unregistered or registered anew (perhaps by the tick itself), so that schedule must stop.
  virtual bool set_last_tick(const ReminderRow& row, std::int64_t last_tick_ms) = 0;
  virtual std::string describe() const = 0;
};

std::unique_ptr<ReminderTable> make_memory_reminder_table();
std::unique_ptr<ReminderTable> make_postgres_reminder_table(const std::string& dsn,
                                                            const std::string& cluster_id);

}  // namespace silo::reminders
