#pragma once
// Loads grain plugins (Boost.DLL): checks each library's ABI record from its symbol table before loading
// it, runs its SILO_PLUGIN registration, and adds its grain classes to the runtime.

#include <functional>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace silo::runtime {
class Runtime;
}

namespace silo::plugins {

struct LoadResult {
  std::string name;  // as listed in plugins.load
  std::string path;  // the file, when found
  bool ok = false;
  std::string error;  // why it was refused
  std::vector<std::string> grain_types;
};

/// Finds `name` in `dir`: NAME.so, libNAME.so, or NAME itself when it is a path. Empty when not found.
std::string resolve_plugin_path(const std::string& dir, const std::string& name);

/// Loads one plugin and registers its grain classes. Never throws: failures come back in the result.
LoadResult load_plugin(const std::string& name, const std::string& path, const config::GrainsConfig& grains,
                       runtime::Runtime& rt);

/// Checks that every PersistentState of every loaded grain type names a configured storage provider
/// (`has_provider`). Constructs one instance per type to find out. Returns "" or the first problem.
std::string check_state_providers(const runtime::Runtime& rt,
                                  const std::function<bool(const std::string&)>& has_provider);

/// Loads every plugin of `cfg.load`, logging one line per plugin. Throws std::runtime_error when a plugin
/// fails and cfg.required is set.
std::vector<LoadResult> load_plugins(const config::PluginsConfig& cfg, const config::GrainsConfig& grains,
                                     runtime::Runtime& rt);

}  // namespace silo::plugins
