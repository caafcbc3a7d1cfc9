#include <silo/silo.hpp>

#include "conflictgrains.silo.h"

namespace {
class ConflictingProbe final : public test::ProbeGrain {
 public:
  silo::Task<test::DupReply> Get(const test::DupRequest&) override { co_return test::DupReply{}; }
};
}  // namespace

SILO_PLUGIN(conflictgrains) {
  registry.add<ConflictingProbe>();
}
