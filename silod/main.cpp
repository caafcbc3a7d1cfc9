// silod: parses flags, reads the configuration, and hands over to the Daemon. Nothing else lives here.

#include <cstring>
#include <iostream>
#include <string>

#include <spdlog/spdlog.h>

#include "app/daemon.hpp"
#include "app/logging.hpp"
#include "config/config.hpp"

namespace {

constexpr const char* usage = R"(usage: silod --config FILE       run a silo
       silod --check-config FILE validate FILE and exit (0: valid, 2: invalid, with the reason)
       silod --version
       silod --help

Signals: SIGTERM/SIGINT stop gracefully (bounded by silo.shutdown_timeout), SIGHUP reopens the log file
and re-reads logging.level. See docs/ARCHITECTURE.md and config/silod.dev.yaml.
)";

}  // namespace

int main(int argc, char* argv[]) {
  std::string config_path;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage;
      return 0;
    }
    if (arg == "--version") {
      std::cout << "silod " << SILO_VERSION << "\n";
      return 0;
    }
    if ((arg == "--config" || arg == "--check-config") && i + 1 < argc) {
      check_only = arg == "--check-config";
      config_path = argv[++i];
      continue;
    }
    if (arg.starts_with("--config=") || arg.starts_with("--check-config=")) {
      check_only = arg.starts_with("--check-config=");
      config_path = arg.substr(arg.find('=') + 1);
      continue;
    }
    std::cerr << "silod: unknown or incomplete argument '" << arg << "'\n" << usage;
    return 2;
  }
  if (config_path.empty()) {
    std::cerr << "silod: --config FILE is required\n" << usage;
    return 2;
  }

  silo::config::Config cfg;
  try {
    cfg = silo::config::load_file(config_path);
  } catch (const silo::config::ConfigError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  if (check_only) {
    std::cout << config_path << ": ok\n";
    return 0;
  }
  try {
    silo::app::setup_logging(cfg.logging);
  } catch (const std::exception& e) {
    std::cerr << "silod: " << e.what() << "\n";
    return 2;
  }
  try {
    silo::app::Daemon daemon(std::move(cfg));
    return daemon.run();
  } catch (const silo::config::ConfigError& e) {
    spdlog::critical("{}", e.what());
    return 2;
  } catch (const std::exception& e) {
    spdlog::critical("silod: {}", e.what());
    return 1;
  }
}
