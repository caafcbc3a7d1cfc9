#pragma once
// What the multi-silod tests ask a running silod from outside, as siloctl does (the gateway's admin rpcs),
// and the small helpers they all share. One copy: these were written again by every cluster suite.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "silo/gateway.grpc.pb.h"

namespace silo::test {

/// A cluster id no other test case, nor another test process, uses: PREFIX-WHAT-PID-MS-N. Each test case
/// gets its own, so cases never see each other's rows in the shared database.
inline std::string unique_cluster(const std::string& prefix, const std::string& what) {
  static std::atomic<int> counter{0};
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  return prefix + "-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(ms) + "-" +
         std::to_string(counter++);
}

/// The last `n` characters of `text` (a silod's log in a failure message).
inline std::string tail(const std::string& text, std::size_t n = 5000) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

/// The membership view of the silo behind `gateway` (Gateway.Status), or nothing if it did not answer in 2 s.
inline std::optional<silo::gateway::ClusterStatus> cluster_status(const std::string& gateway) {
  auto stub =
      silo::gateway::Gateway::NewStub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  silo::gateway::ClusterStatus out;
  if (!stub->Status(&ctx, silo::gateway::StatusRequest{}, &out).ok()) return std::nullopt;
  return out;
}

/// Activations of `grain_type` on the silo behind `gateway` (what `siloctl grains` shows), -1 on failure.
inline std::int64_t activations_of(const std::string& gateway, const std::string& grain_type) {
  auto stub =
      silo::gateway::Gateway::NewStub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  silo::gateway::GrainStats out;
  if (!stub->Grains(&ctx, silo::gateway::GrainsRequest{}, &out).ok()) return -1;
  std::int64_t n = 0;
  for (const auto& c : out.counts())
    if (c.grain_type() == grain_type) n += c.activations();
  return n;
}

}  // namespace silo::test
