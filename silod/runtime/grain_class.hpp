#pragma once
// A grain type as loaded in this silo: the plugin's metadata and factory plus the YAML overrides.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <silo/grain.hpp>
#include <silo/types.hpp>

namespace silo::runtime {

struct GrainClass {
  const GrainTypeInfo* info = nullptr;
  Grain* (*factory)() = nullptr;
  std::string plugin;             // the plugin that registered it, for log lines
  std::shared_ptr<void> library;  // keeps the plugin loaded while any instance may exist
  std::chrono::milliseconds collection_age{0};
  std::uint32_t max_local = 1;  // stateless workers per silo
  Placement placement = Placement::random;

  const char* name() const { return info->name; }
};

}  // namespace silo::runtime
