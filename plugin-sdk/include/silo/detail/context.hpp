#pragma once
// The narrow interfaces between the SDK (compiled into plugins) and the runtime (silod, the client).
// Only virtual functions cross the plugin boundary, so plugins never depend on the runtime's layout.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "silo/call_options.hpp"
#include "silo/reminder.hpp"
#include "silo/task.hpp"
#include "silo/types.hpp"

namespace google::protobuf {
class Message;
}

namespace silo {

enum class LogLevel : std::uint8_t { trace, debug, info, warn, error, critical };

namespace detail {

/// A grain state as stored: its serialized message and version.
struct StoredState {
  std::string data;
  std::uint64_t etag = 0;  // 0: nothing stored
};

/// Sends calls to grains. Implemented by an activation (grain-to-grain calls carry its call chain) and
/// by the client library.
class Caller {
 public:
  /// Calls `method` of grain (method.type, key), taking ownership of the request. The result is a message
  /// of the method's response type (a default instance for one-way calls). Failures throw silo::Error.
  virtual Task<std::unique_ptr<google::protobuf::Message>> call(
      const MethodInfo& method, std::string key, std::unique_ptr<google::protobuf::Message> request,
      CallOptions options) = 0;

 protected:
  ~Caller() = default;
};

/// What a grain sees of its activation. Implemented by silod's runtime.
class ActivationContext : public Caller {
 public:
  virtual const std::string& key() const = 0;
  virtual const GrainTypeInfo& type() const = 0;
  virtual std::uint64_t register_timer(std::function<Task<void>()> callback, std::chrono::milliseconds due,
                                       std::chrono::milliseconds period) = 0;
  virtual void cancel_timer(std::uint64_t id) = 0;
  virtual void deactivate_on_idle() = 0;
  virtual void log(LogLevel level, std::string_view message) = 0;
  virtual bool log_enabled(LogLevel level) const = 0;

  /// Durable state of this grain (see silo::PersistentState). `provider` names a `storage:` entry of the
  /// silo's YAML. Etags are versions: 0 means "not stored". A write or clear whose etag is stale throws
  /// silo::Error(aborted) and deactivates this activation (a duplicate activation can never overwrite
  /// newer state). An unreachable store throws silo::Error(unavailable); nothing is half-written.
  virtual Task<StoredState> read_state(const std::string& provider, const std::string& name) = 0;
  virtual Task<std::uint64_t> write_state(const std::string& provider, const std::string& name,
                                          std::string data, std::uint64_t etag) = 0;
  virtual Task<void> clear_state(const std::string& provider, const std::string& name,
                                 std::uint64_t etag) = 0;

  /// Reminders of this grain (see silo/reminder.hpp). Registering an existing name replaces it.
  virtual Task<void> register_reminder(std::string name, std::chrono::milliseconds due,
                                       std::chrono::milliseconds period) = 0;
  virtual Task<void> unregister_reminder(std::string name) = 0;
  virtual Task<std::vector<ReminderInfo>> list_reminders() = 0;

 protected:
  ~ActivationContext() = default;
};

/// A decoded call handed to a grain's generated dispatch.
struct Invocation {
  const MethodInfo* method = nullptr;
  /// The request: `request` when the caller is local, else `request_bytes` (serialized protobuf).
  const google::protobuf::Message* request = nullptr;
  std::string_view request_bytes;
  /// Set by dispatch: the response message.
  std::unique_ptr<google::protobuf::Message> response;
};

/// Parses bytes into `out` or throws silo::Error(invalid_argument) naming the method.
void parse_request(const Invocation& inv, google::protobuf::Message& out);

}  // namespace detail
}  // namespace silo
