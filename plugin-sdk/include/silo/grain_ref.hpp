#pragma once
/// @file
/// silo::GrainRef: the base of every generated reference (`iot::ThermostatRef`).

#include <memory>
#include <string>
#include <string_view>

#include "silo/detail/context.hpp"

namespace silo {

/// A typed, copyable reference to a grain: (type, key) plus the caller that sends the calls.
/// Obtained from Grain::grain<Ref>(key) or from silo::Client. Holding one activates nothing.
class GrainRef {
 public:
  GrainRef(detail::Caller* caller, std::string key) : caller_(caller), key_(std::move(key)) {}
  /// The grain key.
  const std::string& key() const noexcept { return key_; }

 protected:
  Task<std::unique_ptr<google::protobuf::Message>> invoke(const MethodInfo& method,
                                                          const google::protobuf::Message& request,
                                                          const CallOptions& options) const {
    return caller_->call(method, key_, request, options);
  }

 private:
  detail::Caller* caller_;
  std::string key_;
};

}  // namespace silo
