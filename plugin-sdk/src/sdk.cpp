// The SDK's out-of-line pieces, in libsilo_sdk.so (which also holds silo/options.proto's generated code,
// so that descriptor is registered exactly once per process).

#include <string>

#include <google/protobuf/message.h>

#include "silo/detail/context.hpp"
#include "silo/error.hpp"
#include "silo/plugin.hpp"

namespace silo {

Error::~Error() = default;

std::string_view to_string(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::ok:
      return "OK";
    case StatusCode::cancelled:
      return "CANCELLED";
    case StatusCode::unknown:
      return "UNKNOWN";
    case StatusCode::invalid_argument:
      return "INVALID_ARGUMENT";
    case StatusCode::deadline_exceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::not_found:
      return "NOT_FOUND";
    case StatusCode::already_exists:
      return "ALREADY_EXISTS";
    case StatusCode::permission_denied:
      return "PERMISSION_DENIED";
    case StatusCode::resource_exhausted:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::failed_precondition:
      return "FAILED_PRECONDITION";
    case StatusCode::aborted:
      return "ABORTED";
    case StatusCode::out_of_range:
      return "OUT_OF_RANGE";
    case StatusCode::unimplemented:
      return "UNIMPLEMENTED";
    case StatusCode::internal:
      return "INTERNAL";
    case StatusCode::unavailable:
      return "UNAVAILABLE";
    case StatusCode::data_loss:
      return "DATA_LOSS";
    case StatusCode::unauthenticated:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

namespace detail {

void parse_request(const Invocation& inv, google::protobuf::Message& out) {
  if (!out.ParseFromArray(inv.request_bytes.data(), static_cast<int>(inv.request_bytes.size()))) {
    throw Error(StatusCode::invalid_argument, std::string("cannot parse the request of ") +
                                                  inv.method->type->name + "/" + inv.method->name + " as " +
                                                  out.GetTypeName() + " (" +
                                                  std::to_string(inv.request_bytes.size()) + " bytes)");
  }
}

const char* plugin_entry_error(const char* what) noexcept {
  static thread_local std::string message;
  try {
    message = what;
  } catch (...) {
    return "out of memory";
  }
  return message.c_str();
}

}  // namespace detail
}  // namespace silo
