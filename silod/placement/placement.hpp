#pragma once
// Placement policies: where a new activation of a grain goes. Each policy is one function over the sites
// (silos that loaded the grain type; never empty) and returns the index of its choice. The cluster router
// (cluster/router.cpp) collects the sites, lets a plugin's director choose first, then applies the grain
// type's policy.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>

namespace silo::placement {

/// FNV-1a with a final mix: stable across processes and builds (every silo must agree on it).
std::uint64_t stable_hash(std::string_view s) noexcept;

struct Site {
  std::string silo;              // SiloAddress::str()
  std::int64_t activations = 0;  // the load the silo published with its last heartbeat
  bool local = false;            // the silo placing the grain
};

using Rng = std::mt19937_64;

/// Uniformly at random (the default).
std::size_t random(std::span<const Site> sites, Rng& rng);
/// The local silo when it is a site; none otherwise (the caller falls back to random).
std::optional<std::size_t> prefer_local(std::span<const Site> sites);
/// Rendezvous hashing of the grain id: stable while the set of sites is, and only the keys of a site that
/// leaves move.
std::size_t hash(std::string_view grain_id, std::span<const Site> sites);
/// The less loaded of two random choices (power of two choices).
std::size_t activation_count(std::span<const Site> sites, Rng& rng);

}  // namespace silo::placement
