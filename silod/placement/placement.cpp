#include "placement/placement.hpp"

namespace silo::placement {

std::uint64_t stable_hash(std::string_view s) noexcept {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  // FNV alone clusters similar strings; a final mix spreads them over the ring.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

std::size_t random(std::span<const Site> sites, Rng& rng) {
  return rng() % sites.size();
}

std::optional<std::size_t> prefer_local(std::span<const Site> sites) {
  for (std::size_t i = 0; i < sites.size(); ++i)
    if (sites[i].local) return i;
  return std::nullopt;
}

std::size_t hash(std::string_view grain_id, std::span<const Site> sites) {
  std::size_t best = 0;
  std::uint64_t best_score = 0;
  const std::string id(grain_id);
  for (std::size_t i = 0; i < sites.size(); ++i) {
    const std::uint64_t score = stable_hash(id + "@" + sites[i].silo);
    if (i == 0 || score > best_score) best = i, best_score = score;
  }
  return best;
}

std::size_t activation_count(std::span<const Site> sites, Rng& rng) {
  const std::size_t a = rng() % sites.size();
  const std::size_t b = rng() % sites.size();
  return sites[a].activations <= sites[b].activations ? a : b;
}

}  // namespace silo::placement
