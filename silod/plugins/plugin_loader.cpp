#include "plugins/plugin_loader.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <boost/dll/library_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <silo/plugin.hpp>

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
  void add_director(const char* name, PlacementDirector director) override {
    directors.emplace_back(name, director);
  }
  std::vector<std::pair<const GrainTypeInfo*, Factory>> grains;
  std::vector<std::pair<std::string, PlacementDirector>> directors;
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
      return "built against plugin ABI " + version + ", this silod speaks ABI " +
             std::to_string(SILO_ABI_VERSION) + "; rebuild the plugin against SDK " SILO_SDK_VERSION;
    }
    symbol = s;
    return {};
  }
  return "not a silo plugin (no silo_abi_v* symbol); was it built with silo_add_grain_plugin and "
         "SILO_PLUGIN()?";
}

// Loads the library in a forked child first. A library whose static initialisers kill the process (most
// often protobuf aborting because a .proto or symbol it registers is already registered by another plugin)
// then costs a child, not silod. Returns an empty string when the child loaded it and exited normally.
std::string trial_load(const std::string& path) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return {};  // cannot probe: load directly, as without the probe
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return {};
  }
  if (pid == 0) {
    // The child only loads the library and dies however it dies: no handler the host installed (a crash
    // reporter, a test framework) may run or print in it, and its output goes to the pipe only.
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTERM, SIGINT})
      ::signal(sig, SIG_DFL);
    ::dup2(pipefd[1], STDERR_FILENO);
    ::dup2(pipefd[1], STDOUT_FILENO);
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* err = ::dlerror();
      (void)!::write(STDERR_FILENO, err, std::strlen(err));
      ::_exit(3);
    }
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string output;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int status = 0;
  bool exited = false;
  while (!exited) {
    pollfd pfd{pipefd[0], POLLIN, 0};
    if (::poll(&pfd, 1, 50) > 0) {
      char buf[4096];
      const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
      if (n > 0 && output.size() < 65536) output.append(buf, static_cast<std::size_t>(n));
    }
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid)
      exited = true;
    else if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ::close(pipefd[0]);
      return "loading it did not finish within 20 s (a static initialiser blocks)";
    }
  }
  ::close(pipefd[0]);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  // Keep the most telling line: protobuf's conflict report, else the last non-empty line.
  std::string reason;
  std::size_t start = 0;
  while (start < output.size()) {
    std::size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    const std::string line = output.substr(start, end - start);
    if (!line.empty() && (reason.empty() || line.find("conflicts with") != std::string::npos ||
                          line.find("already exists") != std::string::npos)) {
      reason = line;
    }
    start = end + 1;
  }
  const std::string how = WIFSIGNALED(status)
                              ? "kills the process (signal " + std::to_string(WTERMSIG(status)) + ")"
                              : "fails (exit " + std::to_string(WEXITSTATUS(status)) + ")";
  return "loading it " + how + (reason.empty() ? "" : ": " + reason) +
         "; two plugins may not compile the same .proto or declare the same proto names: move shared "
         "interfaces into one library (silo_add_grain_library)";
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

  if (result.error = trial_load(path); !result.error.empty()) return result;

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
  if (collector.grains.empty() && collector.directors.empty()) {
    result.error = "registers no grain types and no placement directors";
    return result;
  }
  for (const auto& [dname, director] : collector.directors) {
    if (rt.find_director(dname)) {
      result.error = "placement director '" + dname + "' is already registered by another plugin";
      return result;
    }
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
  for (auto& [dname, director] : collector.directors) {
    result.grain_types.push_back("director " + dname);
    rt.add_director(dname, director);
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
      for (const auto& t : r.grain_types)
        types += (types.empty() ? "" : ", ") + t;
      spdlog::info("plugins: loaded '{}' from {}: {}", r.name, r.path, types);
    } else if (cfg.required) {
      throw std::runtime_error("plugin '" + r.name + "' (" + (r.path.empty() ? cfg.dir : r.path) +
                               "): " + r.error + " (plugins.required is true)");
    } else {
      spdlog::error("plugins: skipped '{}' ({}): {}", r.name, r.path.empty() ? cfg.dir : r.path, r.error);
    }
    results.push_back(std::move(r));
  }
  for (const runtime::GrainClass* cls : rt.classes()) {
    const char* director = cls->info->placement_director;
    if (director && *director && !rt.find_director(director)) {
      spdlog::warn(
          "plugins: grain type {} asks for placement director '{}', which no loaded plugin registers; it is "
          "placed by its default policy",
          cls->name(), director);
    }
  }
  for (const auto& [type, ignored] : grains.types) {
    if (!rt.find_class(type)) {
      spdlog::warn("plugins: grains.types.{} is configured but no loaded plugin provides that grain type",
                   type);
    }
  }
  return results;
}

std::string check_state_providers(const runtime::Runtime& rt,
                                  const std::function<bool(const std::string&)>& has_provider) {
  for (const runtime::GrainClass* cls : rt.classes()) {
    std::unique_ptr<Grain> probe(cls->factory());
    for (const auto& [provider, name] : detail::GrainAccess::states(*probe)) {
      if (!has_provider(provider)) {
        return std::string("grain type ") + cls->name() + " (plugin '" + cls->plugin + "') keeps state '" +
               name + "' in storage provider '" + provider + "', which is not configured: add storage." +
               provider + " to the YAML";
      }
    }
  }
  return {};
}

}  // namespace silo::plugins
