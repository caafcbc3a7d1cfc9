// A plugin whose SILO_PLUGIN body throws after registering a grain type: silod must refuse it with the
// exception's message, register none of its types (all or nothing), and keep running.

#include <stdexcept>

#include <silo/silo.hpp>

#include "sdkgrains.silo.h"

namespace {
class Orphan final : public sdk::OrphanGrain {
 public:
  silo::Task<sdk::Ident> Whoami(const sdk::Empty&) override { co_return sdk::Ident{}; }
};
}  // namespace

SILO_PLUGIN(throwingplugin) {
  registry.add<Orphan>();
  throw std::runtime_error("throwingplugin: deliberate failure after registering sdk.Orphan");
}
