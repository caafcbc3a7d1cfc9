#pragma once
/// @file
/// Grain type metadata. protoc-gen-silo generates one GrainTypeInfo per grain service from the
/// `(silo.grain)` and `(silo.method)` options; the runtime reads it, grain authors rarely need to.

#include <cstdint>
#include <span>

namespace google::protobuf {
class Message;
class ServiceDescriptor;
}  // namespace google::protobuf

namespace silo {

/// Where a new activation goes (see docs/ARCHITECTURE.md, "Placement").
enum class Placement : std::uint8_t {
  default_,
  random,
  prefer_local,
  hash,
  activation_count,
  stateless_worker
};

/// What happens to an activation whose method threw.
enum class OnError : std::uint8_t { keep, deactivate };

struct GrainTypeInfo;

/// One rpc of a grain service.
struct MethodInfo {
  const char* name;                                     ///< "SetTarget"
  int index;                                            ///< position in the service
  const google::protobuf::Message* request_prototype;   ///< default instance of the request type
  const google::protobuf::Message* response_prototype;  ///< default instance of the response type
  bool read_only;            ///< interleaves with other read_only calls, never with writers
  bool always_interleave;    ///< interleaves with everything
  bool one_way;              ///< callers never wait for an answer
  std::uint32_t timeout_ms;  ///< 0: grains.call_timeout
  const GrainTypeInfo* type;
};

/// One grain service, e.g. "iot.Thermostat".
struct GrainTypeInfo {
  const char* name;  ///< full proto name of the service
  const google::protobuf::ServiceDescriptor* (*descriptor)();
  Placement placement;
  const char* placement_director;   ///< custom director name, "" for none
  bool reentrant;                   ///< turns interleave at awaits
  bool call_chain_reentrancy;       ///< a call that comes back along its own call chain runs at once
  bool stateless_worker;            ///< several local activations per id, never in the directory
  std::uint32_t max_local;          ///< stateless workers: cap per silo (0: number of worker threads)
  std::uint32_t collection_age_ms;  ///< 0: grains.collection_age
  OnError on_error;
  std::span<const MethodInfo> methods;
};

}  // namespace silo
