#include "gateway/gateway.hpp"

#include <chrono>
#include <deque>
#include <thread>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <spdlog/spdlog.h>
#include <silo/asio.hpp>

#include "gateway/reflection.hpp"
#include "messaging/batched_stream.hpp"
#include "runtime/runtime.hpp"
#include "runtime/shard.hpp"
#include "silo/gateway.grpc.pb.h"
#include "silo/wire/frames.hpp"

namespace silo::gateway {

namespace asio = boost::asio;
namespace gw = silo::gateway;
using runtime::Reply;
using Clock = std::chrono::steady_clock;

bool split_method_path(std::string_view path, std::string_view& service, std::string_view& method) {
  if (path.size() < 4 || path[0] != '/') return false;
  const auto slash = path.find('/', 1);
  if (slash == std::string_view::npos || slash == 1 || slash + 1 >= path.size()) return false;
  service = path.substr(1, slash - 1);
  method = path.substr(slash + 1);
  return method.find('/') == std::string_view::npos;
}

namespace {

grpc::Status to_grpc(StatusCode code, const std::string& message) {
  return grpc::Status(static_cast<grpc::StatusCode>(code), message);
}

// Every failed plain gRPC call says whether it ran, in trailing metadata (documented in ARCHITECTURE.md,
// "Gateway"): "not-run" when the gateway refused it before it reached a grain (safe to resend anywhere),
// "may-have-run" otherwise (it ran, or it may have: resend only what is idempotent).
constexpr const char* kOutcomeKey = "silo-outcome";
const char* outcome_text(bool not_run) {
  return not_run ? "not-run" : "may-have-run";
}

bool parse(grpc::ByteBuffer& buffer, google::protobuf::Message& out) {
  grpc::ProtoBufferReader reader(&buffer);
  return out.ParseFromZeroCopyStream(&reader);
}
bool parse(const std::string& bytes, google::protobuf::Message& out) {
  return out.ParseFromString(bytes);
}
std::size_t payload_size(const grpc::ByteBuffer& b) {
  return b.Length();
}
std::size_t payload_size(const std::string& b) {
  return b.size();
}

// Why a path has no route: an unknown service, or a known one without that method.
std::string no_route_message(const GatewayServer& gw, std::string_view path) {
  std::string_view service, method;
  if (!split_method_path(path, service, method)) {
    return "malformed method path '" + std::string(path) + "' (expected /package.Service/Method)";
  }
  std::string loaded;
  bool service_known = false;
  for (const auto* cls : gw.runtime().classes()) {
    loaded += (loaded.empty() ? "" : ", ") + std::string(cls->name());
    if (service == cls->name()) service_known = true;
  }
  if (service_known) return "grain service " + std::string(service) + " has no method " + std::string(method);
  return "unknown grain service " + std::string(service) +
         " (this silo serves: " + (loaded.empty() ? "none" : loaded) + "); is its plugin in plugins.load?";
}

// Runs one grain call on the worker that owns the grain: parses the payload there (CPU work stays off
// gRPC's threads), calls the grain, and hands the outcome to `done(reply, not_run)` on that worker.
template <class Payload, class Done>
void run_call(GatewayServer& gw, const Route& route, std::string key, Payload payload, CallOptions options,
              Done done) {
  runtime::Runtime& rt = gw.runtime();
  runtime::Shard& shard = rt.shard_for(*route.cls, key);
  asio::co_spawn(
      shard.io(),
      [&rt, &shard, route, key = std::move(key), payload = std::move(payload), options,
       done = std::move(done)]() mutable -> Task<void> {
        Reply reply;
        bool not_run = false;
        std::unique_ptr<google::protobuf::Message> request(route.method->request_prototype->New());
        if (!parse(payload, *request)) {
          not_run = true;
          reply = Reply::failure(StatusCode::invalid_argument,
                                 "cannot parse the request of " + std::string(route.cls->name()) + "/" +
                                     route.method->name + " as " + request->GetTypeName() + " (" +
                                     std::to_string(payload_size(payload)) + " bytes)");
        } else {
          try {
            reply.response =
                co_await rt.call(shard, {}, *route.method, std::move(key), std::move(request), options);
          } catch (const runtime::NotRunError& e) {
            // Refused before it reached the grain (e.g. by another silo): safe to send again.
            reply = Reply::failure(e.code(), e.what());
            not_run = true;
          } catch (const Error& e) {
            reply = Reply::failure(e.code(), e.what());
          } catch (const std::exception& e) {
            reply = Reply::failure(StatusCode::internal, e.what());
          }
        }
        done(std::move(reply), not_run);
      },
      [](std::exception_ptr e) {
        if (e) spdlog::error("gateway: a call coroutine failed unexpectedly");
      });
}

// One plain gRPC call to a grain method: /pkg.Service/Method with the key in `silo-key`.
class UnaryCall final : public grpc::ServerGenericBidiReactor {
 public:
  UnaryCall(GatewayServer& gw, grpc::GenericCallbackServerContext* ctx) : gw_(gw), ctx_(ctx) {
    route_ = gw.route(ctx->method());
    if (!route_) {
      refuse(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, no_route_message(gw, ctx->method())));
      return;
    }
    const auto& md = ctx->client_metadata();
    const auto it = md.find("silo-key");
    if (it == md.end() || it->second.empty()) {
      refuse(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "missing grain key: send it in the 'silo-key' request metadata"));
      return;
    }
    key_.assign(it->second.data(), it->second.size());
    if (gw.draining()) {
      refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, "silo is shutting down; retry on another gateway"));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      refuse(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
      return;
    }
    // Checked as late as possible, just before the call goes to the grain: a silo resumed after SIGSTOP
    // must not run what it read while it was frozen.
    if (const std::string why = gw_.fenced(); !why.empty()) {
      refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, why + "; not run, retry on another gateway"));
      return;
    }
    CallOptions options;
    const auto deadline = ctx_->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::system_clock::now());
      if (left.count() <= 0) {
        refuse(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed before the call started"));
        return;
      }
      options.timeout = left;
    }
    run_call(gw_, *route_, std::move(key_), std::move(request_), options,
             [this](Reply r, bool not_run) { finish(std::move(r), not_run); });
  }

  void OnDone() override { delete this; }

 private:
  // A failure that never reached a grain.
  void refuse(const grpc::Status& status) {
    ctx_->AddTrailingMetadata(kOutcomeKey, outcome_text(true));
    Finish(status);
  }

  void finish(Reply r, bool not_run) {
    if (r.code != StatusCode::ok) {
      ctx_->AddTrailingMetadata(kOutcomeKey, outcome_text(not_run));
      Finish(to_grpc(r.code, r.error));
      return;
    }
    bool own = false;
    const auto s =
        grpc::SerializationTraits<google::protobuf::Message>::Serialize(*r.response, &response_, &own);
    if (!s.ok()) {
      ctx_->AddTrailingMetadata(kOutcomeKey, outcome_text(false));
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "cannot serialize the response: " + s.error_message()));
      return;
    }
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  GatewayServer& gw_;
  grpc::GenericCallbackServerContext* ctx_;
  const Route* route_ = nullptr;
  std::string key_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

class GenericService final : public grpc::CallbackGenericService {
 public:
  explicit GenericService(GatewayServer& gw) : gw_(gw) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new UnaryCall(gw_, ctx);
  }

 private:
  GatewayServer& gw_;
};

}  // namespace

// The C++ client's batched stream: many calls in flight, results written in batches. Results arrive on
// worker threads; reads and writes complete on gRPC's threads; a mutex orders the two.
class StreamReactor final
    : public messaging::BatchedServerStream<StreamReactor, gw::ClientFrame, gw::ServerFrame, gw::Result> {
 public:
  explicit StreamReactor(GatewayServer& gw)
      : BatchedServerStream(gw.config().gateway.max_message_size), gw_(gw) {
    gw_.add_stream(this);
    // Initial metadata at once: the client takes it as proof that this gateway accepted the stream, and
    // only resends calls elsewhere when a stream failed before that (so they never reached a silo).
    StartSendInitialMetadata();
    // A client that connects while the gateway drains must hear it at once, or it would keep this
    // stream (and the shutdown) waiting.
    if (gw_.draining()) drain();
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or the stream broke)
      std::lock_guard lock(mutex_);
      reading_done_ = true;
      maybe_finish_locked();
      return;
    }
    {
      std::lock_guard lock(mutex_);
      outstanding_ += in_.calls_size();
    }
    for (auto& call : *in_.mutable_calls())
      start_call(call);
    in_.Clear();
    StartRead(&in_);
  }

  void OnDone() override {
    gw_.remove_stream(this);
    delete this;
  }

  /// Tells the client to send new calls elsewhere (gateway shutting down).
  void drain() {
    std::lock_guard lock(mutex_);
    draining_ = true;
    flush_locked();
  }

 private:
  void start_call(gw::Call& call) {
    const std::uint64_t id = call.id();
    const Route* route = gw_.route(call.method());
    if (!route)
      return complete(id, call.one_way(),
                      Reply::failure(StatusCode::unimplemented, no_route_message(gw_, call.method())), true);
    if (call.key().empty()) {
      return complete(id, call.one_way(), Reply::failure(StatusCode::invalid_argument, "missing grain key"),
                      true);
    }
    std::string fenced;
    if (gw_.draining() || !(fenced = gw_.fenced()).empty()) {
      // Not run: the client resends it to another gateway (retry_elsewhere), so a rolling restart loses
      // no call, and a fenced silo's calls go where the cluster's view is current.
      Reply r = Reply::failure(StatusCode::unavailable,
                               (fenced.empty() ? std::string("silo is shutting down") : fenced) +
                                   "; not run, retry on another gateway");
      r.location = "retry";
      return complete(id, call.one_way(), std::move(r), true);
    }
    CallOptions options;
    options.timeout = std::chrono::milliseconds(call.timeout_ms());
    options.one_way = call.one_way();
    const bool one_way = call.one_way();
    run_call(gw_, *route, std::move(*call.mutable_key()), std::move(*call.mutable_payload()), options,
             [this, id, one_way](Reply r, bool not_run) { complete(id, one_way, std::move(r), not_run); });
  }

  void complete(std::uint64_t id, bool one_way, Reply r, bool not_run = false) {
    std::lock_guard lock(mutex_);
    --outstanding_;
    if (!one_way && !broken_) {
      gw::Result result;
      result.set_id(id);
      if (r.code == StatusCode::ok) {
        const std::size_t size = r.response->ByteSizeLong();
        if (wire::fits(size, gw_.config().gateway.max_message_size)) {
          r.response->SerializeToString(result.mutable_payload());
        } else {
          result.set_code(static_cast<int>(StatusCode::resource_exhausted));
          result.set_error("response of " + std::to_string(size) +
                           " bytes exceeds gateway.max_message_size (" +
                           std::to_string(gw_.config().gateway.max_message_size) + ")");
        }
      } else {
        result.set_code(static_cast<int>(r.code));
        result.set_error(std::move(r.error));
        result.set_retry_elsewhere(r.location == "retry");
        result.set_not_run(not_run);
      }
      push_locked(std::move(result));
    }
    maybe_finish_locked();
  }

  friend class messaging::BatchedServerStream<StreamReactor, gw::ClientFrame, gw::ServerFrame, gw::Result>;
  google::protobuf::RepeatedPtrField<gw::Result>* frame_items(gw::ServerFrame& out) {
    return out.mutable_results();
  }
  bool announce_locked(gw::ServerFrame& out) {
    if (!draining_ || drain_sent_) return false;
    out.set_draining(true);
    drain_sent_ = true;
    return true;
  }
  // Completions of calls in flight reference this stream: it may finish only when none is left.
  bool can_cancel_locked() const { return outstanding_ == 0; }
  bool can_end_locked() const { return reading_done_ && outstanding_ == 0; }

  GatewayServer& gw_;
  gw::ClientFrame in_;
  std::int64_t outstanding_ = 0;
  bool reading_done_ = false;
  bool draining_ = false, drain_sent_ = false;
};

namespace {

class AdminService final : public gw::Gateway::CallbackService {
 public:
  explicit AdminService(GatewayServer& gw) : gw_(gw), started_(std::chrono::system_clock::now()) {}

  grpc::ServerBidiReactor<gw::ClientFrame, gw::ServerFrame>* Connect(grpc::CallbackServerContext*) override {
    return new StreamReactor(gw_);
  }

  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* ctx, const gw::StatusRequest*,
                                   gw::ClusterStatus* out) override {
    const auto& cfg = gw_.config();
    out->set_cluster_id(cfg.cluster.id);
    out->set_answered_by(cfg.silo.name);
    if (gw_.cluster_view()) {
      for (auto& s : gw_.cluster_view()())
        *out->add_silos() = std::move(s);
      auto* reactor = ctx->DefaultReactor();
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    auto* silo = out->add_silos();
    silo->set_name(cfg.silo.name);
    silo->set_address(
        config::Endpoint{cfg.silo.advertise_host.value_or(cfg.silo.listen.host), cfg.silo.listen.port}.str());
    silo->set_gateway(
        config::Endpoint{cfg.gateway.listen.host, static_cast<std::uint16_t>(gw_.port())}.str());
    silo->set_status(gw_.draining() ? "shutting_down" : "active");
    const auto started_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(started_.time_since_epoch()).count();
    silo->set_generation(started_ms);
    silo->set_started_unix_ms(started_ms);
    silo->set_activations(static_cast<std::int64_t>(gw_.runtime().activation_count()));
    for (const auto* cls : gw_.runtime().classes())
      silo->add_grain_types(cls->name());
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Grains(grpc::CallbackServerContext* ctx, const gw::GrainsRequest*,
                                   gw::GrainStats* out) override {
    for (const auto& [type, n] : gw_.runtime().activation_counts()) {
      auto* c = out->add_counts();
      c->set_silo(gw_.config().silo.name);
      c->set_grain_type(type);
      c->set_activations(static_cast<std::int64_t>(n));
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  GatewayServer& gw_;
  std::chrono::system_clock::time_point started_;
};

}  // namespace

struct GatewayServer::Services {
  explicit Services(GatewayServer& gw) : generic(gw), admin(gw) {}
  GenericService generic;
  AdminService admin;
  std::unique_ptr<grpc::Service> reflection;
};

GatewayServer::GatewayServer(const config::Config& cfg, runtime::Runtime& rt) : cfg_(cfg), rt_(rt) {}

GatewayServer::~GatewayServer() = default;

const Route* GatewayServer::route(std::string_view path) const {
  // Heterogeneous lookup would avoid this copy; the table is small and the copy is short (SSO).
  const auto it = routes_.find(std::string(path));
  return it == routes_.end() ? nullptr : &it->second;
}

void GatewayServer::add_stream(StreamReactor* s) {
  std::lock_guard lock(streams_mutex_);
  streams_.insert(s);
}

void GatewayServer::remove_stream(StreamReactor* s) {
  std::lock_guard lock(streams_mutex_);
  streams_.erase(s);
}

void GatewayServer::start() {
  std::vector<std::string> listed;
  for (const auto* cls : rt_.classes()) {
    listed.emplace_back(cls->name());
    for (const auto& m : cls->info->methods) {
      std::string path = "/";
      path.append(cls->name()).append("/").append(m.name);
      routes_.emplace(std::move(path), Route{cls, &m});
    }
  }
  listed.emplace_back("silo.gateway.Gateway");
  listed.emplace_back("grpc.health.v1.Health");
  listed.emplace_back("grpc.reflection.v1alpha.ServerReflection");

  services_ = std::make_unique<Services>(*this);
  services_->reflection = make_reflection_service(listed);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  const std::string address = cfg_.gateway.listen.str();
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
  const int max = static_cast<int>(std::min<std::size_t>(cfg_.gateway.max_message_size, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max);
  builder.SetMaxSendMessageSize(max);
  builder.RegisterService(&services_->admin);
  builder.RegisterService(services_->reflection.get());
  builder.RegisterCallbackGenericService(&services_->generic);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    server_.reset();
    throw std::runtime_error(
        "gateway.listen " + address +
        ": cannot listen (address in use or not local?); pick another port or stop the other "
        "process");
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("gateway: listening on {}:{} ({} grain methods, max message {} bytes)",
               cfg_.gateway.listen.host, port_, routes_.size(), cfg_.gateway.max_message_size);
}

void GatewayServer::prepare_stop(Deadline deadline) {
  if (!server_) return;
  draining_.store(true, std::memory_order_release);
  server_->GetHealthCheckService()->SetServingStatus(false);
  {
    std::lock_guard lock(streams_mutex_);
    spdlog::info("gateway: draining {} client streams", streams_.size());
    for (auto* s : streams_)
      s->drain();
  }
  // Give clients a moment to move to another gateway and let calls in flight finish, then cancel the rest.
  const auto wait_until = std::min(deadline, Clock::now() + std::chrono::seconds(5));
  while (Clock::now() < wait_until) {
    {
      std::lock_guard lock(streams_mutex_);
      if (streams_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void GatewayServer::stop(Deadline deadline) {
  if (!server_) return;
  if (!draining()) prepare_stop(deadline);
  const auto left = std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline - Clock::now());
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::max(left, std::chrono::system_clock::duration(0)));
  server_.reset();
  spdlog::info("gateway: stopped");
}

}  // namespace silo::gateway
