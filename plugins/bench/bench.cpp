// The bench grains: Echo answers with its request, Counter keeps a running total.

#include <cstdint>

#include <silo/silo.hpp>

#include "bench.silo.h"

namespace {

// Not named Echo: a member function may not share its class's name.
class EchoImpl final : public bench::EchoGrain {
 public:
  silo::Task<bench::Payload> Echo(const bench::Payload& payload) override { co_return payload; }
};

class CounterImpl final : public bench::CounterGrain {
 public:
  silo::Task<bench::Total> Add(const bench::AddRequest& req) override {
    total_ += req.delta();
    co_return total();
  }

  silo::Task<bench::Total> Get(const bench::Empty&) override { co_return total(); }

 private:
  bench::Total total() const {
    bench::Total t;
    t.set_total(total_);
    return t;
  }
  // In memory only: the total restarts from zero when the activation is collected.
  std::int64_t total_ = 0;
};

}  // namespace

SILO_PLUGIN(bench) {
  registry.add<EchoImpl>();
  registry.add<CounterImpl>();
}
