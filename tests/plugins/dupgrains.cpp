// Registers test.Probe from the same interface library as testgrains: silod must refuse the second
// registration of a grain type.
#include <silo/silo.hpp>

#include "testgrains.silo.h"

namespace {
class DupProbe final : public test::ProbeGrain {
 public:
  silo::Task<test::ProbeReply> Get(const test::ProbeRequest&) override { co_return test::ProbeReply{}; }
};
}  // namespace

SILO_PLUGIN(dupgrains) {
  registry.add<DupProbe>();
}
