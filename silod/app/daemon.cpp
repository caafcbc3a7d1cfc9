#include "app/daemon.hpp"

#include <csignal>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <silo/asio.hpp>

#include "app/logging.hpp"
#include "app/sd_notify.hpp"
#include "gateway/gateway.hpp"
#include "plugins/plugin_loader.hpp"
#include "runtime/runtime.hpp"

namespace silo::app {

namespace {

class PluginsComponent final : public Component {
 public:
  PluginsComponent(const config::Config& cfg, runtime::Runtime& rt) : cfg_(cfg), rt_(rt) {}
  std::string_view name() const override { return "plugins"; }
  void start() override { plugins::load_plugins(cfg_.plugins, cfg_.grains, rt_); }
  void stop(Deadline) override {}  // libraries stay loaded until exit (see plugin_loader.cpp)

 private:
  const config::Config& cfg_;
  runtime::Runtime& rt_;
};

class GrainsComponent final : public Component {
 public:
  explicit GrainsComponent(runtime::Runtime& rt) : rt_(rt) {}
  std::string_view name() const override { return "grains"; }
  void start() override { rt_.start(); }
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
    : cfg_(std::move(cfg)), runtime_(std::make_unique<runtime::Runtime>(runtime_options(cfg_))) {
  components_.push_back(std::make_unique<PluginsComponent>(cfg_, *runtime_));
  components_.push_back(std::make_unique<GrainsComponent>(*runtime_));
  if (cfg_.gateway.enabled) components_.push_back(std::make_unique<gateway::GatewayServer>(cfg_, *runtime_));
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
  std::vector<Component*> started;
  const auto stop_started = [&](Component::Deadline deadline) {
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
