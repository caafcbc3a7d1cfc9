#pragma once
// The reminder service: keeps the reminders this silo is the keeper of (all of them on a single silo), fires
// each tick as a call to the grain (routed to wherever it lives, activating it), and records the due time of
// the last tick delivered, so a tick that fell due while no silo could deliver it is delivered late, once.
// Re-reads its share of the table every reminders.refresh_interval and when membership changes, so
// reminders of a dead silo move to the survivors.
//
// A reminder's keeper is chosen among the active silos that load its grain type (rendezvous hashing on the
// grain id), not among all silos: a silo without the type cannot build the call, and the reminder would
// never fire (it did, when the keeper was the grain id's directory owner).

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

/// An active silo as far as reminders care: its id and the grain types it loads.
struct Keeper {
  std::string silo;
  std::vector<std::string> grain_types;
};

/// The keeper of grain (type, key)'s reminders among `active`: the silo loading `type` that rendezvous
/// hashing picks; empty when no active silo loads it. Every silo computes the same from the same view.
std::string keeper_of(const std::vector<Keeper>& active, const std::string& type, const std::string& key);

class ReminderService final : public app::Component, public runtime::Reminders {
 public:
  /// `self`: this silo's id in the cluster's membership; empty for a silo alone, which keeps every reminder.
  ReminderService(const config::Config& cfg, std::unique_ptr<ReminderTable> table, runtime::Runtime& rt,
                  std::string self);
  ~ReminderService() override;

  std::string_view name() const override { return "reminders"; }
  void start() override;
  void prepare_stop(Deadline deadline) override;
  void stop(Deadline deadline) override;

  /// Membership changed (`active`: the active silos): re-read what this silo keeps.
  void ownership_changed(std::vector<Keeper> active);

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
  bool owns(const ReminderRow& r) const;
  void reload();
  void resync(const std::string& type, const std::string& key, const std::string& name);
  void schedule_reload();
  void arm(Scheduled& s);
  void fire(const std::string& id);
  template <class F>
  void on_thread(F&& f);

  const config::Config& cfg_;
  std::unique_ptr<ReminderTable> table_;
  runtime::Runtime& rt_;
  const std::string self_;
  std::vector<Keeper> keepers_;  // the active silos (service thread only)
  boost::asio::io_context io_{1};
  std::thread thread_;
  boost::asio::steady_timer reload_timer_{io_};
  std::map<std::string, Scheduled> scheduled_;  // only touched on the service thread
  std::atomic<std::size_t> scheduled_count_{0};
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point last_warning_{};
};

}  // namespace silo::reminders
