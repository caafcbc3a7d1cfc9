#pragma once
/// @file
/// silo::Logger: a grain's log, written by the silo's logger with the grain id in every line.

#include <string_view>

#include "silo/detail/context.hpp"

namespace silo {

/// Returned by Grain::logger(). Cheap to copy; valid while the activation lives.
class Logger {
 public:
  explicit Logger(detail::ActivationContext* ctx) : ctx_(ctx) {}
  void trace(std::string_view m) const { write(LogLevel::trace, m); }
  void debug(std::string_view m) const { write(LogLevel::debug, m); }
  void info(std::string_view m) const { write(LogLevel::info, m); }
  void warn(std::string_view m) const { write(LogLevel::warn, m); }
  void error(std::string_view m) const { write(LogLevel::error, m); }
  /// True when a message at `level` would be written: test it before building an expensive message.
  bool enabled(LogLevel level) const { return ctx_ && ctx_->log_enabled(level); }

 private:
  void write(LogLevel level, std::string_view m) const {
    if (ctx_) ctx_->log(level, m);
  }
  detail::ActivationContext* ctx_;
};

}  // namespace silo
