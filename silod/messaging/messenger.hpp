#pragma once
// Silo-to-silo messaging: a gRPC server on silo.listen (silo.internal.Silo) and one outbound stream per
// peer. Requests and one-way calls travel in batches; a response returns on the stream its request came
// on. When a stream breaks, the calls waiting on it fail at once with UNAVAILABLE instead of waiting for
// their deadline; so do the calls to a peer the membership declares dead.
// Every outbound call names its target incarnation (`silo-to` metadata); the inbound side refuses calls
// for another generation and, while the lease says this silo is fenced, every grain request and directory
// rpc, marking those refusals "not run" (`silo-outcome: not-run`, Envelope.not_run). It also refuses
// requests from a sender its membership view holds dead (Handlers::refuse_sender), and a fenced silo sends
// no request (checked as each batch is written).

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "app/component.hpp"
#include "cluster/silo_address.hpp"
#include "config/config.hpp"
#include "silo/internal.pb.h"

namespace grpc {
class Server;
}

namespace silo::cluster {
class Lease;
}

namespace silo::messaging {

/// The metadata key naming the silo a call is meant for (SiloAddress::str()), and the trailing metadata
/// key a refusal carries ("not-run"; the gateway also sends "may-have-run").
inline constexpr const char* kTargetKey = "silo-to";
inline constexpr const char* kOutcomeKey = "silo-outcome";

namespace in = silo::internal;

/// Where the response to a request received from a peer goes (the stream it came on). Safe to use after
/// the stream is gone: the response is then dropped (the caller's side failed the call already).
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  virtual void send(in::Envelope response) = 0;
};

/// What the messenger hands to the rest of the silo.
struct Handlers {
  /// A request (or one-way call) from a peer. `sink` is null for one-way calls.
  std::function<void(in::Envelope request, std::shared_ptr<ResponseSink> sink)> on_request;
  /// The response to a call this silo sent (matched by id).
  std::function<void(in::Envelope response)> on_response;
  /// Why requests from `sender` (SiloAddress::str(), from the stream's first batch) must not run, or
  /// empty: the receiver's membership view holds it dead or superseded by a newer generation. Asked once
  /// per inbound batch.
  std::function<std::string(const std::string& sender)> refuse_sender;
  /// A Directory rpc from a peer; must answer synchronously.
  std::function<in::DirectoryReply(const in::DirectoryRequest&)> on_directory;
  /// This silo's load, for Ping replies.
  std::function<std::int64_t()> activations;
};

class Messenger final : public app::Component {
 public:
  Messenger(const config::Config& cfg, cluster::SiloAddress self);
  ~Messenger() override;
  std::string_view name() const override { return "messaging"; }
  void set_handlers(Handlers h) { handlers_ = std::move(h); }
  /// Whether this silo may serve (owned by the membership agent); null: always.
  void set_lease(cluster::Lease* lease) { lease_ = lease; }
  cluster::Lease* lease() const noexcept { return lease_; }
  void start() override;
  void stop(Deadline deadline) override;

  const cluster::SiloAddress& self() const noexcept { return self_; }

  /// Sends a request or one-way call to `peer`. Thread-safe. If the request cannot be sent or its stream
  /// breaks before the response, on_response receives a response with code UNAVAILABLE.
  void send(const cluster::SiloAddress& peer, in::Envelope request);

  /// Probes `peer`; `done(ok)` runs on a gRPC thread.
  void ping(const cluster::SiloAddress& peer, std::chrono::milliseconds timeout,
            std::function<void(bool)> done);

  /// A directory rpc to `peer`; `done` runs on a gRPC thread (ok=false: unreachable or refused).
  void directory(const cluster::SiloAddress& peer, in::DirectoryRequest request,
                 std::chrono::milliseconds timeout, std::function<void(bool ok, in::DirectoryReply)> done);

  /// The membership declared `peer` dead: drop its link and fail what waits on it.
  void peer_dead(const cluster::SiloAddress& peer);
  /// `peer` left gracefully (shutting_down -> dead): let what waits on it finish, then close.
  void peer_left(const cluster::SiloAddress& peer);

  std::size_t max_message() const noexcept { return cfg_.gateway.max_message_size; }

  /// Used by the server side.
  const Handlers& handlers() const noexcept { return handlers_; }

 private:
  class PeerLink;
  struct Services;
  std::shared_ptr<PeerLink> link(const cluster::SiloAddress& peer, std::string* why);
  void forget(PeerLink* link, bool never_connected);
  void defer(std::shared_ptr<void> object);
  void collect_locked();
  void fail(in::Envelope request, const std::string& why);

  const config::Config& cfg_;
  cluster::SiloAddress self_;
  Handlers handlers_;
  cluster::Lease* lease_ = nullptr;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<PeerLink>> links_;  // by SiloAddress::str()
  std::unordered_map<PeerLink*, std::weak_ptr<PeerLink>> open_;       // every link whose OnDone has not run
  // Finished links and unary calls are released on our threads a second after they finish: gRPC aborts
  // when the last reference to a channel is dropped on its own callback thread, and may still be tearing
  // a call down right after its last callback returned.
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::shared_ptr<void>>> deferred_;
  std::unordered_map<void*, std::shared_ptr<void>> inflight_;                         // unary calls in flight
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> failed_at_;  // last failed connect
  void* adopt(std::shared_ptr<void> call);
  void retire(void* call);
  bool closing_ = false;   // stop() began: links close when idle
  bool stopping_ = false;  // the server is down: no new links
};

}  // namespace silo::messaging
