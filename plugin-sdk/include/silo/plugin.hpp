#pragma once
/// @file
/// Plugin registration: one SILO_PLUGIN block per plugin library.
///
/// ```cpp
/// SILO_PLUGIN(iot) {
///   registry.add<Thermostat>();
///   registry.add<Home>();
/// }
/// ```

#include <cstdint>
#include <span>
#include <string_view>

#include <boost/config.hpp>
#include <boost/dll/alias.hpp>

#include "silo/grain.hpp"
#include "silo/types.hpp"
#include "silo/version.hpp"

namespace silo {

/// A silo a new activation may be placed on (see PlacementDirector).
struct PlacementCandidate {
  std::string_view silo;     ///< "host:port@generation"
  std::int64_t activations;  ///< its load, as last published
  bool local;                ///< the silo deciding
};

/// A custom placement policy: returns the index of the chosen candidate (out of range: the default
/// policy decides). Named by a grain type's `(silo.grain) = { placement_director: "name" }`. Called on a
/// worker thread of the silo that places the grain, so it must be fast and must not block.
using PlacementDirector = std::size_t (*)(std::string_view grain_type, std::string_view key,
                                          std::span<const PlacementCandidate> candidates);

/// Handed to a plugin's SILO_PLUGIN block; the plugin adds its grain classes to it.
class PluginRegistry {
 public:
  using Factory = Grain* (*)();

  /// Registers grain class G (derived from a generated `...Grain` base). Each grain type may be
  /// registered by one plugin only: silod refuses a second one.
  template <class G>
  void add() {
    add_grain(G::static_grain_type(), []() -> Grain* { return new G(); });
  }

  virtual void add_grain(const GrainTypeInfo& type, Factory factory) = 0;
  /// Registers a placement director under `name` (unique across plugins).
  virtual void add_director(const char* name, PlacementDirector director) = 0;

 protected:
  ~PluginRegistry() = default;
};

namespace detail {

inline constexpr std::uint32_t plugin_magic = 0x4f4c4953;  // "SILO"

/// The record silod reads, before calling into the plugin, to check that it can load it.
struct PluginAbi {
  std::uint32_t magic;
  std::uint32_t abi_version;
  std::uint32_t record_size;
  std::uint32_t glibcxx;  // libstdc++ release the plugin was built with
  const char* name;
  const char* sdk_version;
  const char* compiler;
};

/// The entry point's type: registers the plugin's grains; returns nullptr or an error message.
using PluginEntry = const char*(PluginRegistry&) noexcept;

const char* plugin_entry_error(const char* what) noexcept;

}  // namespace detail
}  // namespace silo

#ifndef SILO_PLUGIN_ABI_VERSION
#define SILO_PLUGIN_ABI_VERSION SILO_ABI_VERSION  // tests override it to build a mismatched plugin
#endif
#define SILO_PP_CAT2(a, b) a##b
#define SILO_PP_CAT(a, b) SILO_PP_CAT2(a, b)
#define SILO_PP_STR2(x) #x
#define SILO_PP_STR(x) SILO_PP_STR2(x)
/// The ABI record's symbol carries the ABI version in its name (silo_abi_v1), so silod reads the
/// version from the symbol table without loading the library.
#define SILO_ABI_SYMBOL SILO_PP_CAT(silo_abi_v, SILO_PLUGIN_ABI_VERSION)

/// Declares the plugin `NAME` and opens the body of its registration function, which receives
/// `silo::PluginRegistry& registry`. Exceptions thrown in the body are reported by silod, not propagated.
#define SILO_PLUGIN(NAME)                                                            \
  extern "C" BOOST_SYMBOL_EXPORT const ::silo::detail::PluginAbi SILO_ABI_SYMBOL;    \
  extern "C" BOOST_SYMBOL_EXPORT const ::silo::detail::PluginAbi SILO_ABI_SYMBOL = { \
      ::silo::detail::plugin_magic,                                                  \
      SILO_PLUGIN_ABI_VERSION,                                                       \
      sizeof(::silo::detail::PluginAbi),                                             \
      __GLIBCXX__,                                                                   \
      SILO_PP_STR(NAME),                                                             \
      SILO_SDK_VERSION,                                                              \
      __VERSION__};                                                                  \
  static void silo_plugin_body_(::silo::PluginRegistry& registry);                   \
  namespace {                                                                        \
  const char* silo_plugin_entry_(::silo::PluginRegistry& registry) noexcept {        \
    try {                                                                            \
      silo_plugin_body_(registry);                                                   \
      return nullptr;                                                                \
    } catch (const std::exception& e) {                                              \
      return ::silo::detail::plugin_entry_error(e.what());                           \
    } catch (...) {                                                                  \
      return ::silo::detail::plugin_entry_error("unknown exception");                \
    }                                                                                \
  }                                                                                  \
  }                                                                                  \
  BOOST_DLL_ALIAS(silo_plugin_entry_, silo_plugin_entry)                             \
  static void silo_plugin_body_(::silo::PluginRegistry& registry)
