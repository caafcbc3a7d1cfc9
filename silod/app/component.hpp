#pragma once
// A part of the daemon with a name (its YAML section) and start/stop. The daemon starts components in
// order and stops them in reverse, so shutdown mirrors start-up.

#include <chrono>
#include <string_view>

namespace silo::app {

class Component {
 public:
  using Deadline = std::chrono::steady_clock::time_point;
  virtual ~Component() = default;
  virtual std::string_view name() const = 0;
  /// Throws on failure; the daemon then stops what already started and exits non-zero.
  virtual void start() = 0;
  /// First phase of shutdown, called on every started component (in reverse order) before any stop():
  /// stop taking new work and hand off what can be handed off (drain clients, leave the cluster's
  /// placement, deactivate grains) while everything else still runs.
  virtual void prepare_stop(Deadline deadline) {}
  /// Must return by `deadline`, abandoning what is left.
  virtual void stop(Deadline deadline) = 0;
};

}  // namespace silo::app
