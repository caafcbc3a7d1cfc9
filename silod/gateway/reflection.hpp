#pragma once
// grpc.reflection.v1alpha served from protobuf's generated pool, which holds every loaded plugin's protos.
// Lists the grain services (served generically, so the stock reflection plugin would not list them).

#include <memory>
#include <string>
#include <vector>

namespace grpc {
class Service;
}

namespace silo::gateway {

/// A reflection service listing `services`; register it with the server builder.
std::unique_ptr<grpc::Service> make_reflection_service(std::vector<std::string> services);

}  // namespace silo::gateway
