#pragma once
// silod's process: assembles the components for a configuration, runs them until SIGTERM/SIGINT, handles
// SIGHUP, and talks to systemd.

#include <memory>
#include <vector>

#include "app/component.hpp"
#include "config/config.hpp"

namespace silo::runtime {
class Runtime;
}
namespace silo::storage {
class Registry;
}
namespace silo::cluster {
class ClusterRouter;
}
namespace silo::reminders {
class ReminderService;
}

namespace silo::app {

class Daemon {
 public:
  explicit Daemon(config::Config cfg);
  ~Daemon();
  /// Runs until a stop signal. Returns the process exit code.
  int run();

 private:
  void reload_logging();

  config::Config cfg_;
  std::unique_ptr<storage::Registry> storage_;
  std::unique_ptr<runtime::Runtime> runtime_;
  std::unique_ptr<cluster::ClusterRouter> router_;
  reminders::ReminderService* reminders_ = nullptr;  // owned by components_
  std::vector<std::unique_ptr<Component>> components_;
};

}  // namespace silo::app
