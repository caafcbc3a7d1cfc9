#include "app/daemon.hpp"

#include <csignal>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <silo/asio.hpp>

#include "app/logging.hpp"
#include "app/sd_notify.hpp"
#include "cluster/membership.hpp"
#include "cluster/router.hpp"
#include "gateway/gateway.hpp"
#include "messaging/messenger.hpp"
#include "plugins/plugin_loader.hpp"
#include "reminders/reminder_service.hpp"
#include "runtime/runtime.hpp"
#include "storage/provider.hpp"

namespace silo::app {

namespace {

class StorageComponent final : public Component {
 public:
  explicit StorageComponent(storage::Registry& registry) : registry_(registry) {}
  std::string_view name() const override { return "storage"; }
  void start() override { registry_.start(); }
  void stop(Deadline) override { registry_.stop(); }

 private:
  storage::Registry& registry_;
};

class PluginsComponent final : public Component {
 public:
  PluginsComponent(const config::Config& cfg, runtime::Runtime& rt, const storage::Registry& storage)
      : cfg_(cfg), rt_(rt), storage_(storage) {}
  std::string_view name() const override { return "plugins"; }
  void start() override {
    plugins::load_plugins(cfg_.plugins, cfg_.grains, rt_);
    const std::string problem = plugins::check_state_providers(
        rt_, [this](const std::string& name) { return storage_.find(name) != nullptr; });
    if (!problem.empty()) throw std::runtime_error(problem);
  }
  void stop(Deadline) override {}  // libraries stay loaded until exit (see plugin_loader.cpp)

 private:
  const config::Config& cfg_;
  runtime::Runtime& rt_;
  const storage::Registry& storage_;
};

class GrainsComponent final : public Component {
 public:
  explicit GrainsComponent(runtime::Runtime& rt) : rt_(rt) {}
  std::string_view name() const override { return "grains"; }
  void start() override { rt_.start(); }
  void prepare_stop(Deadline deadline) override { rt_.drain(deadline); }
  void stop(Deadline deadline) override { rt_.stop(deadline); }

 private:
  runtime::Runtime& rt_;
};

runtime::RuntimeOptions runtime_options(const config::Config& cfg) {
  runtime::RuntimeOptions o;
  o.threads = cfg.silo.threads;
  o.collection_age = cfg.grains.collection_age;
  o.turn_warning = cfg.grains.turn_warning;
  o.call_timeout = cfg.grains.call_timeout;
  return o;
}

}  // namespace

Daemon::Daemon(config::Config cfg)
    : cfg_(std::move(cfg)),
      storage_(std::make_unique<storage::Registry>(cfg_.storage, cfg_.cluster.id)),
      runtime_(std::make_unique<runtime::Runtime>(runtime_options(cfg_))) {
  runtime_->set_storage(storage_.get());
  components_.push_back(std::make_unique<StorageComponent>(*storage_));
  components_.push_back(std::make_unique<PluginsComponent>(cfg_, *runtime_, *storage_));
  components_.push_back(std::make_unique<GrainsComponent>(*runtime_));
  cluster::MembershipAgent* membership = nullptr;
  if (cfg_.membership.provider == "postgres") {
    // A cluster: silo-to-silo messaging, the directory and placement (router), and the membership agent.
    const auto& listen = cfg_.silo.listen;
    const bool wildcard = listen.host == "0.0.0.0" || listen.host == "::" || listen.host.empty();
    if (wildcard && !cfg_.silo.advertise_host) {
      throw config::ConfigError(cfg_.source +
                                ": silo.advertise_host: required when silo.listen binds all "
                                "interfaces (" +
                                listen.str() + "): other silos must know where to call");
    }
    const auto generation = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    cluster::SiloAddress self{cfg_.silo.advertise_host.value_or(listen.host), listen.port, generation};
    auto messenger = std::make_unique<messaging::Messenger>(cfg_, self);
    router_ = std::make_unique<cluster::ClusterRouter>(cfg_, *runtime_, *messenger, self);
    messenger->set_handlers(router_->handlers());
    runtime_->set_router(router_.get());
    std::string gateway;
    if (cfg_.gateway.enabled) {
      const auto& g = cfg_.gateway.listen;
      const bool any = g.host == "0.0.0.0" || g.host == "::" || g.host.empty();
      gateway = config::Endpoint{any ? self.host : g.host, g.port}.str();
    }
    auto agent = std::make_unique<cluster::MembershipAgent>(
        cfg_, cluster::make_postgres_table(cfg_.membership.dsn, cfg_.cluster.id), *messenger, *runtime_, self,
        gateway, [this](const cluster::MembershipSnapshot& view) {
          router_->on_view(view);
          if (reminders_) {
            std::vector<reminders::Keeper> active;
            for (const auto& row : view.rows)
              if (row.status == cluster::SiloStatus::active)
                active.push_back({row.address.str(), row.grain_types});
            reminders_->ownership_changed(std::move(active));
          }
        });
    membership = agent.get();
    components_.push_back(std::move(messenger));
    components_.push_back(std::move(agent));
  }
  {
    // Reminders: kept by one of the active silos that load the grain type (alone: all of them).
    auto table = cfg_.reminders.provider == "postgres"
                     ? reminders::make_postgres_reminder_table(cfg_.reminders.dsn, cfg_.cluster.id)
                     : reminders::make_memory_reminder_table();
    auto service = std::make_unique<reminders::ReminderService>(
        cfg_, std::move(table), *runtime_, router_ ? router_->self().str() : std::string());
    reminders_ = service.get();
    runtime_->set_reminders(reminders_);
    components_.push_back(std::move(service));
  }
  if (cfg_.gateway.enabled) {
    auto gw = std::make_unique<gateway::GatewayServer>(cfg_, *runtime_);
    if (membership) {
      gw->set_fence(
          [membership] { return membership->fenced() ? membership->lease().why() : std::string(); });
      gw->set_cluster_view([membership] {
        std::vector<gateway::SiloInfo> out;
        for (const auto& row : membership->view().rows) {
          gateway::SiloInfo s;
          s.set_name(row.name);
          s.set_address(row.address.endpoint());
          s.set_gateway(row.gateway);
          s.set_status(cluster::to_string(row.status));
          s.set_generation(row.address.generation);
          s.set_activations(row.activations);
          for (const auto& t : row.grain_types)
            s.add_grain_types(t);
          s.set_started_unix_ms(row.start_ms);
          out.push_back(std::move(s));
        }
        return out;
      });
    }
    components_.push_back(std::move(gw));
  }
}

Daemon::~Daemon() = default;

void Daemon::reload_logging() {
  if (cfg_.source.empty()) return;
  try {
    const config::Config fresh = config::load_file(cfg_.source);
    cfg_.logging = fresh.logging;
  } catch (const std::exception& e) {
    spdlog::error("SIGHUP: keeping the current log settings: {}", e.what());
  }
  try {
    setup_logging(cfg_.logging);
    spdlog::info("SIGHUP: log reopened ({}), level {}",
                 cfg_.logging.file.empty() ? "stderr" : cfg_.logging.file, cfg_.logging.level);
  } catch (const std::exception& e) {
    spdlog::error("SIGHUP: {}", e.what());
  }
}

int Daemon::run() {
  namespace asio = boost::asio;
  // Install the signal handlers before anything starts, so an early SIGTERM still stops us cleanly.
  asio::io_context control;
  asio::signal_set stop_signals(control, SIGTERM, SIGINT);
  asio::signal_set hup(control, SIGHUP);

  spdlog::info("silod {} starting: silo '{}' in cluster '{}', config {}", SILO_VERSION, cfg_.silo.name,
               cfg_.cluster.id, cfg_.source.empty() ? "(built-in)" : cfg_.source);
  sd_notify("STATUS=starting");
  if (cfg_.metrics.enabled) {
    spdlog::warn(
        "metrics.enabled is set, but this version of silod does not serve metrics yet; use siloctl status "
        "and siloctl grains meanwhile");
  }
  std::vector<Component*> started;
  const auto stop_started = [&](Component::Deadline deadline) {
    // Two phases, both in reverse start order: first every component drains (clients move away, the
    // cluster stops placing grains here, grains deactivate) while the others still run; then they stop.
    for (auto it = started.rbegin(); it != started.rend(); ++it) {
      try {
        (*it)->prepare_stop(deadline);
      } catch (const std::exception& e) {
        spdlog::error("draining {} failed: {}", (*it)->name(), e.what());
      }
    }
    for (auto it = started.rbegin(); it != started.rend(); ++it) {
      spdlog::info("stopping {}", (*it)->name());
      try {
        (*it)->stop(deadline);
      } catch (const std::exception& e) {
        spdlog::error("stopping {} failed: {}", (*it)->name(), e.what());
      }
    }
  };
  for (auto& c : components_) {
    spdlog::info("starting {}", c->name());
    try {
      c->start();
    } catch (const std::exception& e) {
      spdlog::critical("{}: {}", c->name(), e.what());
      stop_started(std::chrono::steady_clock::now() + cfg_.silo.shutdown_timeout);
      spdlog::critical("silod failed to start; fix the error above and start it again");
      return 1;
    }
    started.push_back(c.get());
  }
  const std::string status = "serving: " + std::to_string(runtime_->classes().size()) + " grain types";
  spdlog::info("silod ready: silo '{}', {}", cfg_.silo.name, status);
  sd_notify("READY=1\nSTATUS=" + status);

  int received = 0;
  stop_signals.async_wait([&](boost::system::error_code ec, int signo) {
    if (ec) return;
    received = signo;
    hup.cancel();
  });
  std::function<void(boost::system::error_code, int)> on_hup = [&](boost::system::error_code ec, int) {
    if (ec) return;
    reload_logging();
    hup.async_wait(on_hup);
  };
  hup.async_wait(on_hup);
  control.run();

  spdlog::info("received {}: stopping (shutdown_timeout {} ms)", received == SIGINT ? "SIGINT" : "SIGTERM",
               cfg_.silo.shutdown_timeout.count());
  // A second signal kills the process at once: an operator's way out of a stuck shutdown.
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
  sd_notify("STOPPING=1\nSTATUS=stopping");
  stop_started(std::chrono::steady_clock::now() + cfg_.silo.shutdown_timeout);
  spdlog::info("silod stopped");
  spdlog::default_logger()->flush();
  return 0;
}

}  // namespace silo::app
