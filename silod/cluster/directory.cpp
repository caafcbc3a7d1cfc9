#include "cluster/directory.hpp"

#include <algorithm>

namespace silo::cluster {

namespace {
constexpr int virtual_nodes = 30;
constexpr std::size_t max_cache = 1'000'000;  // beyond this the cache starts over (cheap and bounded)
}  // namespace

Directory::Directory(SiloAddress self) : self_(std::move(self)) {
  ring_.emplace_back(stable_hash(self_.str()), self_);
  owners_.push_back(self_.str());
  live_.insert(self_.str());
  reported_.emplace(self_.str(), version_);
}

bool Directory::update(std::int64_t version, const std::vector<SiloAddress>& active,
                       const std::vector<SiloAddress>& live) {
  std::vector<std::pair<std::uint64_t, SiloAddress>> ring;
  for (const auto& a : active) {
    for (int i = 0; i < virtual_nodes; ++i)
      ring.emplace_back(stable_hash(a.str() + "#" + std::to_string(i)), a);
  }
  std::sort(ring.begin(), ring.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::unordered_set<std::string> alive;
  for (const auto& a : live)
    alive.insert(a.str());
  std::vector<std::string> owners;
  for (const auto& a : active)
    owners.push_back(a.str());
  std::sort(owners.begin(), owners.end());
  std::lock_guard lock(mutex_);
  if (version == version_) return false;
  // The next version with the same owners and holders (a suspicion vote, say): nothing moved, and no
  // version was skipped in which something could have, so the partition stays complete without waiting
  // for re-registrations (a silo that cannot read the table meanwhile does not stall registrations).
  const bool unchanged =
      version == version_ + 1 && owners == owners_ && alive == live_ && !recovering_locked();
  version_ = version;
  ring_ = std::move(ring);
  owners_ = std::move(owners);
  live_ = std::move(alive);
  std::erase_if(reported_, [version](const auto& r) { return r.second < version; });
  if (unchanged) {
    for (const auto& s : live_)
      reported_.emplace(s, version);
  }
  // An entry is kept only while this silo owns its id and its holder is live: a range that comes back
  // later (a silo left and returned) must be rebuilt from re-registrations, never from what it held then.
  std::erase_if(partition_, [this](const auto& e) {
    return !live_.count(e.second.silo) || !(owner_locked(e.first) == self_);
  });
  std::erase_if(cache_, [this](const auto& e) { return !live_.count(e.second.str()); });
  return true;
}

std::int64_t Directory::version() const {
  std::lock_guard lock(mutex_);
  return version_;
}

SiloAddress Directory::owner(std::string_view grain_id) const {
  std::lock_guard lock(mutex_);
  return owner_locked(grain_id);
}

SiloAddress Directory::owner_locked(std::string_view grain_id) const {
  if (ring_.empty()) return {};
  const std::uint64_t h = stable_hash(grain_id);
  auto it = std::lower_bound(ring_.begin(), ring_.end(), h,
                             [](const auto& e, std::uint64_t v) { return e.first < v; });
  if (it == ring_.end()) it = ring_.begin();
  return it->second;
}

bool Directory::clustered() const {
  std::lock_guard lock(mutex_);
  return live_.size() > 1;
}

bool Directory::recovering_locked() const {
  for (const auto& s : live_)
    if (!reported_.count({s, version_})) return true;
  return false;
}

bool Directory::recovering() const {
  std::lock_guard lock(mutex_);
  return recovering_locked();
}

void Directory::recovered(const std::string& silo, std::int64_t view) {
  std::lock_guard lock(mutex_);
  if (view >= version_) reported_.emplace(silo, view);  // early reports count once this silo gets there
}

Directory::Registered Directory::register_local(const std::string& grain_id, const ActivationRef& who,
                                                std::int64_t view, bool recovery) {
  std::lock_guard lock(mutex_);
  if (view != version_ || !(owner_locked(grain_id) == self_)) return {Result::stale_view, {}};
  // Until every live silo re-registered, an id missing here may still be held somewhere.
  if (!recovery && recovering_locked()) return {Result::recovering, {}};
  auto [it, inserted] = partition_.try_emplace(grain_id, who);
  // Same silo: its previous activation is gone (one per id per silo). A holder that is not live any more
  // was declared dead (or left) in this view and serves nothing: the id is free.
  if (!inserted && (it->second.silo == who.silo || !live_.count(it->second.silo))) it->second = who;
  return {Result::ok, it->second};
}

ActivationRef Directory::lookup_local(const std::string& grain_id) const {
  std::lock_guard lock(mutex_);
  auto it = partition_.find(grain_id);
  return it == partition_.end() || !live_.count(it->second.silo) ? ActivationRef{} : it->second;
}

void Directory::unregister_local(const std::string& grain_id, const ActivationRef& who) {
  std::lock_guard lock(mutex_);
  auto it = partition_.find(grain_id);
  if (it != partition_.end() && it->second == who) partition_.erase(it);
}

internal::DirectoryReply Directory::handle(const internal::DirectoryRequest& request) {
  internal::DirectoryReply reply;
  reply.set_view(version());
  const bool registering = request.op() == internal::DirectoryRequest::REGISTER;
  if (registering && request.view() != reply.view()) {
    reply.set_status(internal::DirectoryReply::STALE_VIEW);
    return reply;
  }
  for (int i = 0; i < request.grain_ids_size(); ++i) {
    const std::string& id = request.grain_ids(i);
    const ActivationRef who{i < request.silos_size() ? request.silos(i) : request.from(),
                            i < request.activations_size() ? request.activations(i) : 0};
    ActivationRef out;
    switch (request.op()) {
      case internal::DirectoryRequest::LOOKUP:
        out = lookup_local(id);
        break;
      case internal::DirectoryRequest::REGISTER: {
        const Registered r = register_local(id, who, request.view(), request.recovery());
        if (r.result != Result::ok) {
          // One answer for the batch: the sender retries all of it under the next view.
          internal::DirectoryReply refused;
          refused.set_view(reply.view());
          refused.set_status(r.result == Result::recovering ? internal::DirectoryReply::RECOVERING
                                                            : internal::DirectoryReply::STALE_VIEW);
          return refused;
        }
        out = r.holder;
        break;
      }
      case internal::DirectoryRequest::UNREGISTER:
        unregister_local(id, who);
        break;
      default:
        break;
    }
    reply.add_silos(out.silo);
    reply.add_activations(out.activation);
  }
  if (registering && request.recovery()) recovered(request.from(), request.view());
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
  if (!live_.count(silo.str())) return;
  if (cache_.size() >= max_cache) cache_.clear();
  cache_[grain_id] = silo;
}

void Directory::uncache(const std::string& grain_id) {
  std::lock_guard lock(mutex_);
  cache_.erase(grain_id);
}

bool Directory::is_live(const std::string& silo) const {
  std::lock_guard lock(mutex_);
  return live_.count(silo) > 0;
}

std::size_t Directory::partition_size() const {
  std::lock_guard lock(mutex_);
  return partition_.size();
}

}  // namespace silo::cluster
