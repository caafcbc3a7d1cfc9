#pragma once
// The reminder service: keeps the reminders of the grains whose ids this silo owns on the directory ring
// (all of them on a single silo), fires each tick as a call to the grain (activating it), and records the
// due time of the last tick delivered, so a tick that fell due while no silo could deliver it is delivered
// late, once. Re-reads its share of the table every reminders.refresh_interval and when the ring changes,
// so reminders of a dead silo move to the survivors.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <silo/asio.hpp>

#include "app/component.hpp"
#include "config/config.hpp"
#include "reminders/reminder_table.hpp"
#include "runtime/reminders.hpp"

namespace silo::runtime {
class Runtime;
}

namespace silo::reminders {

class ReminderService final : public app::Component, public runtime::Reminders {
 public:
  /// `owns(grain_id)`: true when this silo owns the id's range ("type/key").
  ReminderService(const config::Config& cfg, std::unique_ptr<ReminderTable> table, runtime::Runtime& rt,
                  std::function<bool(const std::string&)> owns);
  ~ReminderService() override;

  std::string_view name() const override { return "reminders"; }
  void start() override;
  void prepare_stop(Deadline deadline) override;
  void stop(Deadline deadline) override;

  /// The ring changed: re-read what this silo owns.
  void ownership_changed();

  // runtime::Reminders
  std::chrono::milliseconds min_period() const override { return cfg_.reminders.min_period; }
  void register_reminder(std::string type, std::string key, std::string name, std::int64_t start_ms,
                         std::int64_t period_ms, std::function<void(runtime::Reply)> done) override;
  void unregister_reminder(std::string type, std::string key, std::string name,
                           std::function<void(runtime::Reply)> done) override;
  void list(std::string type, std::string key,
            std::function<void(runtime::Reply, std::vector<ReminderInfo>)> done) override;

  std::size_t scheduled_count() const { return scheduled_count_.load(); }

 private:
  struct Scheduled {
    ReminderRow row;
    std::unique_ptr<boost::asio::steady_timer> timer;
    bool firing = false;
  };
  static std::string id_of(const ReminderRow& r) { return r.grain_type + "/" + r.grain_key + "/" + r.name; }
  void reload();
  void schedule_reload();
  void arm(Scheduled& s);
  void fire(const std::string& id);
  template <class F>
  void on_thread(F&& f);

  const config::Config& cfg_;
  std::unique_ptr<ReminderTable> table_;
  runtime::Runtime& rt_;
  std::function<bool(const std::string&)> owns_;
  boost::asio::io_context io_{1};
  std::thread thread_;
  boost::asio::steady_timer reload_timer_{io_};
  std::map<std::string, Scheduled> scheduled_;  // only touched on the service thread
  std::atomic<std::size_t> scheduled_count_{0};
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point last_warning_{};
};

}  // namespace silo::reminders
