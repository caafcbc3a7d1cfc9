// The smallest useful grain: hello.Greeter counts how often it was greeted (in memory).
#include <silo/silo.hpp>
#include "hello.silo.h"
namespace {
class Greeter final : public hello::GreeterGrain {
 public:
  silo::Task<hello::Greeting> Greet(const hello::Name& n) override {
    hello::Greeting g;
    g.set_text("hello " + n.name() + " from " + key());
    g.set_count(++count_);
    co_return g;
  }

 private:
  std::int64_t count_ = 0;
};
}  // namespace
SILO_PLUGIN(hello) {
  registry.add<Greeter>();
}
