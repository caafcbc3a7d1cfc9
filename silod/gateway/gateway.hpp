#pragma once
// The gateway component: clients' entry to the silo's grains over gRPC. It serves
//   - every grain rpc as a plain gRPC method /<package>.<Service>/<Method> (grain key in `silo-key`),
//   - silo.gateway.GatewayServer/Connect, the batched stream of the C++ client,
//   - silo.gateway.GatewayServer/Status and /Grains for siloctl,
//   - server reflection (grpc.reflection.v1alpha) and the standard health service.
// gRPC's threads only move bytes: each call is handed to the worker that owns its grain by a post.

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "app/component.hpp"
#include "config/config.hpp"
#include "runtime/message.hpp"
#include "silo/gateway.pb.h"

namespace grpc {
class Server;
}

namespace silo::runtime {
class Runtime;
}

namespace silo::gateway {

class StreamReactor;

/// A grain method as the gateway addresses it.
struct Route {
  const runtime::GrainClass* cls;
  const MethodInfo* method;
};

class GatewayServer final : public app::Component {
 public:
  GatewayServer(const config::Config& cfg, runtime::Runtime& rt);
  ~GatewayServer() override;
  std::string_view name() const override { return "gateway"; }
  void start() override;
  void prepare_stop(Deadline deadline) override;
  void stop(Deadline deadline) override;
  /// The cluster's view for Status (null: this silo alone).
  void set_cluster_view(std::function<std::vector<gateway::SiloInfo>()> view) {
    cluster_view_ = std::move(view);
  }
  const std::function<std::vector<gateway::SiloInfo>()>& cluster_view() const { return cluster_view_; }
  /// Why this silo must not serve grain calls now (empty: it may), from the membership's lease. Calls
  /// refused for it are answered UNAVAILABLE, "not run". Null: never fenced (a single silo).
  void set_fence(std::function<std::string()> why_fenced) { fence_ = std::move(why_fenced); }
  std::string fenced() const { return fence_ ? fence_() : std::string(); }

  /// The port actually bound (differs from the configured one when that is 0).
  int port() const noexcept { return port_; }

  // Used by the reactors (gateway.cpp).
  const Route* route(std::string_view path) const;
  bool draining() const noexcept { return draining_.load(std::memory_order_acquire); }
  runtime::Runtime& runtime() noexcept { return rt_; }
  const runtime::Runtime& runtime() const noexcept { return rt_; }
  const config::Config& config() const noexcept { return cfg_; }
  void add_stream(StreamReactor* s);
  void remove_stream(StreamReactor* s);

 private:
  struct Services;
  const config::Config& cfg_;
  runtime::Runtime& rt_;
  std::unordered_map<std::string, Route> routes_;  // "/pkg.Svc/Method"
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> draining_{false};
  std::mutex streams_mutex_;
  std::set<StreamReactor*> streams_;
  std::function<std::vector<gateway::SiloInfo>()> cluster_view_;
  std::function<std::string()> fence_;
};

/// Parses "/pkg.Service/Method" into its parts; false when malformed.
bool split_method_path(std::string_view path, std::string_view& service, std::string_view& method);

}  // namespace silo::gateway
