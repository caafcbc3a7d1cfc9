#include "plugins/plugin_loader.hpp"

#include <filesystem>
#include <memory>
#include <stdexcept>

#include <silo/plugin.hpp>
#include <boost/dll/library_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <spdlog/spdlog.h>

#include "runtime/grain_class.hpp"
#include "runtime/runtime.hpp"

namespace silo::plugins {

namespace fs = std::filesystem;
namespace dll = boost::dll;

namespace {

// Libraries are never unloaded: their generated protobuf code registered descriptors in the process-wide
// pool, and grain instances run their code. Keeping them here makes that explicit.
std::vector<std::shared_ptr<dll::shared_library>>& loaded_libraries() {
  static auto* libs = new std::vector<std::shared_ptr<dll::shared_library>>();
  return *libs;
}

class Collector final : public PluginRegistry {
 public:
  void add_grain(const GrainTypeInfo& type, Factory factory) override { grains.emplace_back(&type, factory); }
  std::vector<std::pair<const GrainTypeInfo*, Factory>> grains;
};

Placement placement_from_name(const std::string& s) {
  if (s == "prefer_local") return Placement::prefer_local;
  if (s == "hash") return Placement::hash;
  if (s == "activation_count") return Placement::activation_count;
  if (s == "stateless_worker") return Placement::stateless_worker;
  return Placement::random;
}

// Reads the ABI version from the name of the exported record (silo_abi_vN) without loading the library.
std::string check_abi_symbol(const std::string& path, std::string& symbol) {
  std::vector<std::string> symbols;
  try {
    dll::library_info info(path);
    symbols = info.symbols();
  } catch (const std::exception& e) {
    return std::string("not a loadable shared object: ") + e.what();
  }
  const std::string prefix = "silo_abi_v";
  for (const auto& s : symbols) {
    if (s.rfind(prefix, 0) != 0) continue;
    const std::string version = s.substr(prefix.size());
    if (version != std::to_string(SILO_ABI_VERSION)) {
      return "built against plugin ABI " + version + ", this silod speaks ABI " + std::to_string(SILO_ABI_VERSION) +
             "; rebuild the plugin against SDK " SILO_SDK_VERSION;
    }
    symbol = s;
    return {};
  }
  return "not a silo plugin (no silo_abi_v* symbol); was it built with silo_add_grain_plugin and SILO_PLUGIN()?";
}

}  // namespace

std::string resolve_plugin_path(const std::string& dir, const std::string& name) {
  std::vector<fs::path> candidates;
  if (name.find('/') != std::string::npos || name.ends_with(".so")) {
    fs::path p(name);
    candidates.push_back(p.is_absolute() ? p : fs::path(dir) / p);
  } else {
    candidates.push_back(fs::path(dir) / (name + ".so"));
    candidates.push_back(fs::path(dir) / ("lib" + name + ".so"));
  }
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return c.string();
  }
  return {};
}

LoadResult load_plugin(const std::string& name, const std::string& path, const config::GrainsConfig& grains,
                       runtime::Runtime& rt) {
  LoadResult result;
  result.name = name;
  result.path = path;
  std::string symbol;
  if (result.error = check_abi_symbol(path, symbol); !result.error.empty()) return result;

  std::shared_ptr<dll::shared_library> lib;
  try {
    lib = std::make_shared<dll::shared_library>(path, dll::load_mode::rtld_now | dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    result.error = std::string("cannot load: ") + e.what() + " (missing dependency or undefined symbol?)";
    return result;
  }
  loaded_libraries().push_back(lib);
  const auto& abi = lib->get<const detail::PluginAbi>(symbol);
  if (abi.magic != detail::plugin_magic || abi.record_size != sizeof(detail::PluginAbi)) {
    result.error = "corrupt ABI record (magic or size mismatch)";
    return result;
  }
  if (!lib->has("silo_plugin_entry")) {
    result.error = "has an ABI record but no silo_plugin_entry; was SILO_PLUGIN() used?";
    return result;
  }
  Collector collector;
  if (const char* err = lib->get_alias<detail::PluginEntry>("silo_plugin_entry")(collector)) {
    result.error = std::string("registration failed: ") + err;
    return result;
  }
  if (collector.grains.empty()) {
    result.error = "registers no grain types";
    return result;
  }
  // All or nothing: a plugin with one duplicate grain type is refused whole.
  for (const auto& [info, factory] : collector.grains) {
    if (const auto* existing = rt.find_class(info->name)) {
      result.error = std::string("grain type ") + info->name + " is already registered by plugin '" +
                     existing->plugin + "'; remove one of them from plugins.load";
      return result;
    }
  }
  for (const auto& [info, factory] : collector.grains) {
    auto cls = std::make_unique<runtime::GrainClass>();
    cls->info = info;
    cls->factory = factory;
    cls->plugin = abi.name;
    cls->library = lib;
    cls->collection_age = std::chrono::milliseconds(info->collection_age_ms);
    cls->max_local = info->max_local;
    cls->placement = info->placement == Placement::default_ ? placement_from_name(grains.default_placement)
                                                            : info->placement;
    if (auto it = grains.types.find(info->name); it != grains.types.end()) {
      if (it->second.collection_age) cls->collection_age = *it->second.collection_age;
      if (it->second.max_local) cls->max_local = *it->second.max_local;
      if (it->second.placement) cls->placement = placement_from_name(*it->second.placement);
    }
    result.grain_types.push_back(info->name);
    rt.add_class(std::move(cls));
  }
  result.ok = true;
  return result;
}

std::vector<LoadResult> load_plugins(const config::PluginsConfig& cfg, const config::GrainsConfig& grains,
                                     runtime::Runtime& rt) {
  std::vector<LoadResult> results;
  for (const auto& name : cfg.load) {
    LoadResult r;
    const std::string path = resolve_plugin_path(cfg.dir, name);
    if (path.empty()) {
      r.name = name;
      r.error = "no " + name + ".so or lib" + name + ".so in " + cfg.dir + "; build it or fix plugins.dir";
    } else {
      r = load_plugin(name, path, grains, rt);
    }
    if (r.ok) {
      std::string types;
      for (const auto& t : r.grain_types) types += (types.empty() ? "" : ", ") + t;
      spdlog::info("plugins: loaded '{}' from {}: {}", r.name, r.path, types);
    } else if (cfg.required) {
      throw std::runtime_error("plugin '" + r.name + "' (" + (r.path.empty() ? cfg.dir : r.path) +
                               "): " + r.error + " (plugins.required is true)");
    } else {
      spdlog::error("plugins: skipped '{}' ({}): {}", r.name, r.path.empty() ? cfg.dir : r.path, r.error);
    }
    results.push_back(std::move(r));
  }
  for (const auto& [type, ignored] : grains.types) {
    if (!rt.find_class(type)) {
      spdlog::warn("plugins: grains.types.{} is configured but no loaded plugin provides that grain type", type);
    }
  }
  return results;
}

}  // namespace silo::plugins
