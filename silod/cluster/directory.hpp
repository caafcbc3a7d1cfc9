#pragma once
// The grain directory: a one-hop DHT. Grain ids hash onto a ring of the active silos (virtual nodes); the
// silo owning an id's range holds id -> activation (silo + per-activation id). Single activation holds by
// construction:
//  - every request names the sender's membership view version; an owner answers registrations only under
//    its own, identical view, so a registration is confirmed by the id's owner under the current view;
//  - on every view change an owner forgets the ids it no longer owns and waits until every live silo has
//    re-registered its activations with it ("recovery") before it accepts a new registration;
//  - an entry names an activation, so a late unregister of an old activation cannot delete a newer one;
//  - an entry's holder counts as long as it is live (active or shutting down): a draining silo keeps its
//    grains until they are gone; only a silo declared dead gives them up.
// Every silo also caches locations it learned; a stale entry is corrected by forwarding and by the
// `location` of responses.

#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "cluster/silo_address.hpp"
#include "placement/placement.hpp"
#include "silo/internal.pb.h"

namespace silo::cluster {

using placement::stable_hash;  // the ring and hash placement must agree on every silo

/// One activation: its silo and an id unique within that silo's lifetime.
struct ActivationRef {
  std::string silo;  // SiloAddress::str()
  std::uint64_t activation = 0;
  bool operator==(const ActivationRef&) const = default;
  bool empty() const noexcept { return silo.empty(); }
};

class Directory {
 public:
  explicit Directory(SiloAddress self);

  /// A new membership view: `active` silos own ring ranges; `live` ones (active or shutting down) may hold
  /// activations. Forgets entries of ids this silo no longer owns and of silos no longer live, and starts
  /// recovery: new registrations wait until every live silo re-registered under `version` (unless it is
  /// the next version and neither set changed). Returns false (and changes nothing) when `version` is the
  /// current one.
  bool update(std::int64_t version, const std::vector<SiloAddress>& active,
              const std::vector<SiloAddress>& live);
  std::int64_t version() const;

  /// The silo owning `grain_id`'s directory entry. Empty when no silo is active.
  SiloAddress owner(std::string_view grain_id) const;
  bool clustered() const;  // more than one live silo

  // The partition this silo owns (what the Directory rpc serves).
  enum class Result { ok, stale_view, recovering };
  struct Registered {
    Result result = Result::ok;
    ActivationRef holder;  // ok: the activation that holds the id now (`who` when it won)
  };
  /// Registers `who` for `grain_id` under view `view`: first writer wins while its silo is live; the same
  /// silo replaces its own older activation (a silo holds one activation per id at a time).
  Registered register_local(const std::string& grain_id, const ActivationRef& who, std::int64_t view,
                            bool recovery);
  ActivationRef lookup_local(const std::string& grain_id) const;
  /// Removes the entry only if it still names `who`.
  void unregister_local(const std::string& grain_id, const ActivationRef& who);
  /// `silo` has re-registered all its activations with this silo under `view`.
  void recovered(const std::string& silo, std::int64_t view);
  bool recovering() const;
  internal::DirectoryReply handle(const internal::DirectoryRequest& request);

  // The location cache.
  std::optional<SiloAddress> cached(const std::string& grain_id) const;
  void cache(const std::string& grain_id, const SiloAddress& silo);
  void uncache(const std::string& grain_id);

  bool is_live(const std::string& silo) const;
  std::size_t partition_size() const;

 private:
  SiloAddress owner_locked(std::string_view grain_id) const;
  bool recovering_locked() const;

  SiloAddress self_;
  mutable std::mutex mutex_;
  std::int64_t version_ = 0;
  std::vector<std::pair<std::uint64_t, SiloAddress>> ring_;  // sorted by hash
  std::vector<std::string> owners_;                          // SiloAddress::str() of the active silos, sorted
  std::unordered_set<std::string> live_;                     // SiloAddress::str() of the live silos
  std::set<std::pair<std::string, std::int64_t>> reported_;  // (silo, view) re-registrations received
  std::unordered_map<std::string, ActivationRef> partition_;  // grain id -> activation
  std::unordered_map<std::string, SiloAddress> cache_;
};

}  // namespace silo::cluster
