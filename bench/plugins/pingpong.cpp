// Bench-only grains (see pingpong.proto). The Pinger times each call itself, so the in-silo latency is what
// a grain sees, with no client in the way.

#include <cstdint>

#include <silo/persistent_state.hpp>
#include <silo/silo.hpp>

#include "pingpong.silo.h"
#include "stats.hpp"

namespace {

class PingerImpl final : public benchpp::PingerGrain {
 public:
  silo::Task<benchpp::RunResult> Run(const benchpp::RunRequest& req) override {
    auto ponger = grain<benchpp::PongerRef>(req.ponger());
    bench::Histogram h;
    benchpp::Ball ping;
    for (std::uint32_t i = 0; i < req.calls(); ++i) {
      ping.set_seq(i);
      const auto start = bench::Clock::now();
      ping = co_await ponger.Ping(ping);
      if (req.record()) h.record(start, bench::Clock::now());
    }
    benchpp::RunResult out;
    out.set_calls(req.calls());
    for (unsigned b = 0; b < bench::Histogram::buckets; ++b) {
      if (const auto n = h.count(b)) {
        out.mutable_latency()->add_index(b);
        out.mutable_latency()->add_count(n);
      }
    }
    co_return out;
  }
};

class PongerImpl final : public benchpp::PongerGrain {
 public:
  silo::Task<benchpp::Ball> Ping(const benchpp::Ball& ping) override { co_return ping; }
};

class TrivialImpl final : public benchpp::TrivialGrain {
 public:
  silo::Task<benchpp::Empty> Touch(const benchpp::Empty&) override { co_return benchpp::Empty{}; }
};

class DurableImpl final : public benchpp::DurableGrain {
 public:
  silo::Task<void> on_activate() override { co_await state_.read(); }
  silo::Task<benchpp::Total> Add(const benchpp::AddRequest& req) override {
    state_->set_total(state_->total() + req.delta());
    co_await state_.write();
    co_return *state_;
  }

 private:
  silo::PersistentState<benchpp::Total> state_{*this, "default"};
};

}  // namespace

SILO_PLUGIN(pingpong) {
  registry.add<PingerImpl>();
  registry.add<PongerImpl>();
  registry.add<TrivialImpl>();
  registry.add<DurableImpl>();
}
