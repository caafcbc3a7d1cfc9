// Implementations of stategrains.proto: one counter, instantiated on two storage providers.

#include <silo/silo.hpp>

#include "stategrains.silo.h"

namespace {

// `Base` is the generated grain base; `provider` names the storage provider the counter uses.
template <class Base, const char* provider>
class Counter final : public Base {
 public:
  silo::Task<void> on_activate() override {
    co_await state_.read();
    co_await snapshot_.read();
  }

  silo::Task<teststate::Total> Add(const teststate::AddRequest& req) override {
    state_->set_total(state_->total() + req.delta());
    co_await state_.write();
    co_return view(state_);
  }

  silo::Task<teststate::Total> Get(const teststate::Empty&) override { co_return view(state_); }

  silo::Task<teststate::Total> Clear(const teststate::Empty&) override {
    co_await state_.clear();
    co_return view(state_);
  }

  silo::Task<teststate::Empty> Deactivate(const teststate::Empty&) override {
    this->deactivate_on_idle();
    co_return teststate::Empty{};
  }

  // The race of a duplicate activation, within one activation: snapshot_ still holds what was read at
  // activation, so once state_ has been written its etag is stale and this write must be refused.
  silo::Task<teststate::Total> StaleWrite(const teststate::AddRequest& req) override {
    snapshot_->set_total(snapshot_->total() + req.delta());
    co_await snapshot_.write();
    co_return view(snapshot_);
  }

 private:
  using State = silo::PersistentState<teststate::CounterState>;
  static teststate::Total view(const State& s) {
    teststate::Total t;
    t.set_total(s->total());
    t.set_etag(s.etag());
    t.set_exists(s.exists());
    return t;
  }

  State state_{*this, provider};
  State snapshot_{*this, provider};  // the same stored record, read once at activation
};

constexpr char memory_provider[] = "default";
constexpr char pg_provider[] = "pg";

}  // namespace

SILO_PLUGIN(stategrains) {
  registry.add<Counter<teststate::MemoryCounterGrain, memory_provider>>();
  registry.add<Counter<teststate::PgCounterGrain, pg_provider>>();
}
