#pragma once
// The grain directory: a one-hop DHT. Grain ids hash onto a ring of the active silos (virtual nodes); the
// silo owning an id's range holds id -> activation silo. Registration is first-writer-wins while the
// registered silo lives, which resolves concurrent activations of one id to one. Every silo also caches
// locations it learned; a stale entry is corrected by forwarding and by the `location` of responses.

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cluster/silo_address.hpp"
#include "silo/internal.pb.h"

namespace silo::cluster {

/// FNV-1a: stable across processes and builds (the ring must agree on every silo).
std::uint64_t stable_hash(std::string_view s) noexcept;

class Directory {
 public:
  explicit Directory(SiloAddress self);

  /// Rebuilds the ring from the active silos and forgets entries and cache lines of every other silo: only
  /// an active silo holds grains (a shutting-down one is deactivating its own).
  void update(const std::vector<SiloAddress>& active);

  /// The silo owning `grain_id`'s directory entry. Empty when no silo is active.
  SiloAddress owner(std::string_view grain_id) const;
  bool clustered() const;  // more than one active silo

  // The partition this silo owns (what the Directory rpc serves).
  /// Registers `silo` unless an active silo holds the id already; returns the silo that holds it now.
  std::string register_local(const std::string& grain_id, const std::string& silo);
  std::string lookup_local(const std::string& grain_id) const;
  void unregister_local(const std::string& grain_id, const std::string& silo);
  internal::DirectoryReply handle(const internal::DirectoryRequest& request);

  // The location cache.
  std::optional<SiloAddress> cached(const std::string& grain_id) const;
  void cache(const std::string& grain_id, const SiloAddress& silo);
  void uncache(const std::string& grain_id);

  bool is_active(const std::string& silo) const;
  std::size_t partition_size() const;

 private:
  SiloAddress self_;
  mutable std::mutex mutex_;
  std::vector<std::pair<std::uint64_t, SiloAddress>> ring_;  // sorted by hash
  std::unordered_set<std::string> active_;                   // SiloAddress::str() of the active silos
  std::unordered_map<std::string, std::string> partition_;   // grain id -> silo str
  std::unordered_map<std::string, SiloAddress> cache_;
  std::size_t active_count_ = 0;
};

}  // namespace silo::cluster
