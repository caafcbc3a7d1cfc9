#include <silo/silo.hpp>

#include "dupgrains.silo.h"

namespace {
class DupProbe final : public test::ProbeGrain {
 public:
  silo::Task<test::DupReply> Get(const test::DupRequest&) override { co_return test::DupReply{}; }
};
}  // namespace

SILO_PLUGIN(dupgrains) { registry.add<DupProbe>(); }
