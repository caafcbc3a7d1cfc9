#include "cluster/directory.hpp"

#include <algorithm>

namespace silo::cluster {

namespace {
constexpr int virtual_nodes = 30;
constexpr std::size_t max_cache = 1'000'000;  // beyond this the cache starts over (cheap and bounded)
}  // namespace

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

Directory::Directory(SiloAddress self) : self_(std::move(self)) {
  ring_.emplace_back(stable_hash(self_.str()), self_);
  active_.insert(self_.str());
  active_count_ = 1;
}

void Directory::update(const std::vector<SiloAddress>& active) {
  std::vector<std::pair<std::uint64_t, SiloAddress>> ring;
  for (const auto& a : active) {
    for (int i = 0; i < virtual_nodes; ++i)
      ring.emplace_back(stable_hash(a.str() + "#" + std::to_string(i)), a);
  }
  std::sort(ring.begin(), ring.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::unordered_set<std::string> alive;
  for (const auto& a : active)
    alive.insert(a.str());
  std::lock_guard lock(mutex_);
  ring_ = std::move(ring);
  active_ = std::move(alive);
  active_count_ = active.size();
  std::erase_if(partition_, [this](const auto& e) { return !active_.count(e.second); });
  std::erase_if(cache_, [this](const auto& e) { return !active_.count(e.second.str()); });
}

SiloAddress Directory::owner(std::string_view grain_id) const {
  const std::uint64_t h = stable_hash(grain_id);
  std::lock_guard lock(mutex_);
  if (ring_.empty()) return {};
  auto it = std::lower_bound(ring_.begin(), ring_.end(), h,
                             [](const auto& e, std::uint64_t v) { return e.first < v; });
  if (it == ring_.end()) it = ring_.begin();
  return it->second;
}

bool Directory::clustered() const {
  std::lock_guard lock(mutex_);
  return active_count_ > 1;
}

std::string Directory::register_local(const std::string& grain_id, const std::string& silo) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = partition_.try_emplace(grain_id, silo);
  // A holder that is no longer active (dead, or shutting down and deactivating everything) gives way: the
  // grain must move rather than be forwarded back to a silo that only places it elsewhere again.
  if (!inserted && it->second != silo && !active_.count(it->second)) it->second = silo;
  return it->second;
}

std::string Directory::lookup_local(const std::string& grain_id) const {
  std::lock_guard lock(mutex_);
  auto it = partition_.find(grain_id);
  return it == partition_.end() || !active_.count(it->second) ? std::string() : it->second;
}

void Directory::unregister_local(const std::string& grain_id, const std::string& silo) {
  std::lock_guard lock(mutex_);
  auto it = partition_.find(grain_id);
  if (it != partition_.end() && it->second == silo) partition_.erase(it);
}

internal::DirectoryReply Directory::handle(const internal::DirectoryRequest& request) {
  internal::DirectoryReply reply;
  for (int i = 0; i < request.grain_ids_size(); ++i) {
    const std::string& id = request.grain_ids(i);
    switch (request.op()) {
      case internal::DirectoryRequest::LOOKUP:
        reply.add_silos(lookup_local(id));
        break;
      case internal::DirectoryRequest::REGISTER:
        reply.add_silos(register_local(id, i < request.silos_size() ? request.silos(i) : request.from()));
        break;
      case internal::DirectoryRequest::UNREGISTER:
        unregister_local(id, i < request.silos_size() ? request.silos(i) : request.from());
        reply.add_silos("");
        break;
      default:
        reply.add_silos("");
    }
  }
  return reply;
}

std::optional<SiloAddress> Directory::cached(const std::string& grain_id) const {
  std::lock_guard lock(mutex_);
  auto it = cache_.find(grain_id);
  if (it == cache_.end()) return std::nullopt;
  return it->second;
}

void Directory::cache(const std::string& grain_id, const SiloAddress& silo) {
  std::lock_guard lock(mutex_);
  if (!active_.count(silo.str())) return;
  if (cache_.size() >= max_cache) cache_.clear();
  cache_[grain_id] = silo;
}

void Directory::uncache(const std::string& grain_id) {
  std::lock_guard lock(mutex_);
  cache_.erase(grain_id);
}

bool Directory::is_active(const std::string& silo) const {
  std::lock_guard lock(mutex_);
  return active_.count(silo) > 0;
}

std::size_t Directory::partition_size() const {
  std::lock_guard lock(mutex_);
  return partition_.size();
}

}  // namespace silo::cluster
