#pragma once
// The cluster side of a call: where a grain lives (location cache, directory), where a new one goes
// (placement), and how requests and replies cross to other silos (messenger). Implements runtime::Router.

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cluster/directory.hpp"
#include "cluster/membership_table.hpp"
#include "config/config.hpp"
#include "messaging/messenger.hpp"
#include "runtime/router.hpp"

namespace silo::runtime {
class Runtime;
}

namespace silo::cluster {

class ClusterRouter final : public runtime::Router {
 public:
  ClusterRouter(const config::Config& cfg, runtime::Runtime& rt, messaging::Messenger& messenger,
                SiloAddress self);
  ~ClusterRouter() override;

  /// Membership changed (called on the membership thread).
  void on_view(const MembershipSnapshot& view);
  /// The handlers the messenger calls.
  messaging::Handlers handlers();

  // runtime::Router
  bool clustered() const override { return directory_.clustered(); }
  void route(runtime::Shard& from, runtime::RequestPtr request) override;
  void register_activation(runtime::Shard& shard, const runtime::GrainClass& cls, const std::string& key,
                           std::function<void(std::string holder)> done) override;
  void unregister_activation(const runtime::GrainClass& cls, const std::string& key) override;
  void forward(runtime::Shard& from, runtime::RequestPtr request, const std::string& silo) override;
  bool place_elsewhere(runtime::Shard& from, runtime::RequestPtr& request) override;

  Directory& directory() noexcept { return directory_; }
  const SiloAddress& self() const noexcept { return self_; }

 private:
  struct Candidate {
    SiloAddress address;
    std::vector<std::string> grain_types;
    std::int64_t activations = 0;
  };
  void send_to(runtime::Shard& from, runtime::RequestPtr request, const SiloAddress& target);
  void relay(runtime::Shard& from, runtime::RequestPtr request, const SiloAddress& target);
  Task<void> relay_call(runtime::Shard& from, runtime::RequestPtr original, runtime::RequestPtr copy,
                        SiloAddress target);
  bool place(const runtime::GrainClass& cls, const std::string& key, bool exclude_self, SiloAddress& out);
  void on_request(internal::Envelope env, std::shared_ptr<messaging::ResponseSink> sink);
  void on_response(internal::Envelope env);
  void reregister(const std::vector<SiloAddress>& active);

  const config::Config& cfg_;
  runtime::Runtime& rt_;
  messaging::Messenger& messenger_;
  SiloAddress self_;
  Directory directory_;
  std::mutex mutex_;                   // guards the view below
  std::vector<Candidate> candidates_;  // active silos, for placement
  std::vector<std::string> ring_members_;
  std::unordered_map<std::string, SiloStatus> last_status_;  // by silo, as of the previous view
};

/// "type/key": the directory's name for a grain.
std::string grain_id(const runtime::GrainClass& cls, const std::string& key);

}  // namespace silo::cluster
