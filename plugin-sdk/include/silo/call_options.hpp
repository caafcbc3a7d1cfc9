#pragma once
/// @file
/// Per-call options, the last parameter of every generated reference method.

#include <chrono>

namespace silo {

/// Options for one call to a grain.
struct CallOptions {
  /// Time the caller waits for the answer. Zero: the method's `timeout` option, else `grains.call_timeout`.
  /// A call that gets no answer in time fails with StatusCode::deadline_exceeded; it is never resent.
  std::chrono::milliseconds timeout{0};
  /// Fire and forget: the call returns once it is queued, with a default-constructed response.
  bool one_way = false;
};

}  // namespace silo
