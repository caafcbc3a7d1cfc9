// Implementation of remindergrains.proto. State on the "pg" provider: the tests run real silods sharing a
// PostgreSQL, and the count must be the same whichever silo the activation runs on.

#include <silo/silo.hpp>

#include "remindergrains.silo.h"

namespace {

class Ticker final : public testreminders::TickerGrain {
 public:
  silo::Task<void> on_activate() override { co_await state_.read(); }

  silo::Task<testreminders::Empty> Start(const testreminders::StartRequest& req) override {
    state_->set_stop_after(req.stop_after());
    co_await state_.write();
    co_await register_reminder(req.name(), std::chrono::milliseconds(0),
                               std::chrono::milliseconds(req.period_ms()));
    co_return testreminders::Empty{};
  }

  silo::Task<testreminders::TickCount> Ticks(const testreminders::Empty&) override {
    testreminders::TickCount out;
    out.set_ticks(state_->ticks());
    co_return out;
  }

  silo::Task<void> on_reminder(const silo::ReminderTick& tick) override {
    state_->set_ticks(state_->ticks() + 1);
    co_await state_.write();
    // Unregistering from inside the tick: no later tick may follow.
    if (state_->stop_after() > 0 && state_->ticks() >= state_->stop_after())
      co_await unregister_reminder(tick.name);
  }

 private:
  silo::PersistentState<testreminders::TickerState> state_{*this, "pg"};
};

}  // namespace

SILO_PLUGIN(remindergrains) {
  registry.add<Ticker>();
}
