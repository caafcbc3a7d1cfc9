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
  /// Used by generated methods. Not a coroutine itself: everything the call needs is moved into the
  /// coroutine's frame before it returns, so the Task stays valid after the ref and the request are gone
  /// (`client.spawn(client.ref<R>("k").Method(Req{}))` is safe).
  template <class Response>
  Task<Response> call_as(const MethodInfo& method, std::unique_ptr<google::protobuf::Message> request,
                         const CallOptions& options) const {
    return run<Response>(caller_, key_, method, std::move(request), options);
  }

 private:
  template <class Response>
  static Task<Response> run(detail::Caller* caller, std::string key, const MethodInfo& method,
                            std::unique_ptr<google::protobuf::Message> request, CallOptions options) {
    auto response = co_await caller->call(method, std::move(key), std::move(request), options);
    co_return std::move(static_cast<Response&>(*response));
  }

  detail::Caller* caller_;
  std::string key_;
};

}  // namespace silo
