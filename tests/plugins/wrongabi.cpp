// A plugin built against another plugin ABI (SILO_PLUGIN_ABI_VERSION=999 via the build): silod must refuse
// it from its symbol table, before running any of its code.
#include <cstdlib>

#include <silo/silo.hpp>

namespace {
// Would abort the process if silod ever ran this library's static initialisers.
[[maybe_unused]] const int poison = [] {
  if (std::getenv("SILO_TEST_FAIL_IF_LOADED")) std::abort();
  return 0;
}();
}  // namespace

SILO_PLUGIN(wrongabi) {}
