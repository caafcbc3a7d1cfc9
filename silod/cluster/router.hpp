#pragma once
// The cluster side of a call: where a grain lives (location cache, directory), where a new one goes
// (placement), and how requests and replies cross to other silos (messenger). Implements runtime::Router.

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cluster/directory.hpp"
#include "cluster/grain_locator.hpp"
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
  bool fenced() const override;
  void route(runtime::Shard& from, runtime::RequestPtr request) override;
  void register_activation(runtime::Shard& shard, const runtime::GrainClass& cls, const std::string& key,
                           runtime::Clock::time_point deadline,
                           std::function<void(Registration)> done) override;
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
  /// Why requests from `sender` must not run here (declared dead, or superseded by a newer generation of
  /// its address in this silo's view), or empty.
  std::string refuse_sender(const std::string& sender);
  void reregister(std::int64_t version, const std::vector<SiloAddress>& active);
  void send_recovery(SiloAddress owner, std::shared_ptr<internal::DirectoryRequest> request,
                     std::shared_ptr<std::vector<std::pair<const runtime::GrainClass*, std::string>>> grains);
  void lose(const runtime::GrainClass& cls, const std::string& key, const std::string& holder);
  Task<void> register_loop(runtime::Shard& shard, std::string id, ActivationRef me,
                           runtime::Clock::time_point deadline, std::function<void(Registration)> done);
  Task<std::optional<internal::DirectoryReply>> ask(runtime::Shard& shard, SiloAddress owner,
                                                    internal::DirectoryRequest request,
                                                    runtime::Clock::duration timeout);
  ActivationRef identity(const std::string& grain_id, bool fresh);
  void forget(const std::string& grain_id, std::uint64_t activation);

  const config::Config& cfg_;
  runtime::Runtime& rt_;
  messaging::Messenger& messenger_;
  SiloAddress self_;
  Directory directory_;
  GrainLocator locator_;               // after directory_: it refers to it
  std::mutex mutex_;                   // guards the view below
  std::vector<Candidate> candidates_;  // active silos, for placement
  std::vector<std::string> ring_members_;
  std::unordered_map<std::string, SiloStatus> last_status_;          // by silo, as of the previous view
  std::unordered_map<std::string, std::string> refused_senders_;     // by silo: why its requests don't run
  std::unordered_map<std::string, std::int64_t> newest_generation_;  // by endpoint, in the view
  // The id of each local activation in the directory (one per grain id on this silo at a time).
  std::mutex ids_mutex_;
  std::unordered_map<std::string, std::uint64_t> local_ids_;
  std::uint64_t next_activation_ = 1;
};

/// "type/key": the directory's name for a grain.
std::string grain_id(const runtime::GrainClass& cls, const std::string& key);

}  // namespace silo::cluster
