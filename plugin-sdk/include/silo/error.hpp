#pragma once
/// @file
/// Status codes and silo::Error, the exception type that carries a status to the caller.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace silo {

/// Status codes, numerically identical to gRPC's so they cross the gateway unchanged.
enum class StatusCode : std::uint8_t {
  ok = 0,
  cancelled = 1,
  unknown = 2,
  invalid_argument = 3,
  deadline_exceeded = 4,
  not_found = 5,
  already_exists = 6,
  permission_denied = 7,
  resource_exhausted = 8,
  failed_precondition = 9,
  aborted = 10,
  out_of_range = 11,
  unimplemented = 12,
  internal = 13,
  unavailable = 14,
  data_loss = 15,
  unauthenticated = 16,
};

/// "DEADLINE_EXCEEDED", ... (gRPC's spelling).
std::string_view to_string(StatusCode code) noexcept;

/// Thrown by a grain to fail a call with a specific status; thrown by a call to a grain that failed.
/// Any other exception a grain throws reaches its caller as StatusCode::unknown with its what().
class __attribute__((visibility("default"))) Error : public std::runtime_error {
 public:
  Error(StatusCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ~Error() override;  // out of line: the type_info lives in libsilo_sdk.so, shared by silod and plugins
  /// The status code the caller sees.
  StatusCode code() const noexcept { return code_; }

 private:
  StatusCode code_;
};

}  // namespace silo
