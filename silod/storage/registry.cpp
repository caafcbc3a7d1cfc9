#include <spdlog/spdlog.h>

#include "storage/provider.hpp"

namespace silo::storage {

Registry::Registry(const std::map<std::string, config::StorageProviderConfig>& cfg,
                   const std::string& cluster_id) {
  for (const auto& [name, pc] : cfg) {
    if (pc.provider == "memory")
      providers_.emplace(name, make_memory_provider());
    else if (pc.provider == "postgres")
      providers_.emplace(name, make_postgres_provider(pc, cluster_id, name));
    else
      throw config::ConfigError("storage." + name + ".provider: unknown provider '" + pc.provider + "'");
  }
  if (!providers_.count("default")) providers_.emplace("default", make_memory_provider());
}

Provider* Registry::find(const std::string& name) const {
  auto it = providers_.find(name);
  return it == providers_.end() ? nullptr : it->second.get();
}

void Registry::start() {
  for (auto& [name, p] : providers_) {
    p->start();
    spdlog::info("storage: provider '{}' ready", name);
  }
}

void Registry::stop() {
  for (auto& [name, p] : providers_)
    p->stop();
}

std::string Registry::names() const {
  std::string out;
  for (const auto& [name, p] : providers_)
    out += (out.empty() ? "" : ", ") + name;
  return out;
}

}  // namespace silo::storage
