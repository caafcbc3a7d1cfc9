#pragma once
// spdlog set-up: text or JSON lines to stderr or a file. Re-applied on SIGHUP (reopens the file, so
// logrotate can move it away, and picks up a new level).

#include "config/config.hpp"

namespace silo::app {

/// Installs the default logger. Throws std::runtime_error when the log file cannot be opened.
void setup_logging(const config::LoggingConfig& cfg);

}  // namespace silo::app
