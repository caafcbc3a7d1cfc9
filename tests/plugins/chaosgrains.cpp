// chaos.Register (chaosgrains.proto): the grain the chaos test writes and reads. Write acknowledges only
// after the durable write; both replies carry the activation's identity.

#include <unistd.h>

#include <random>

#include <silo/silo.hpp>

#include "chaosgrains.silo.h"

namespace {

class Register final : public chaos::RegisterGrain {
 public:
  silo::Task<void> on_activate() override {
    // Drawn per activation, never from the key: two activations of one grain must differ.
    std::random_device random;
    activation_ = (static_cast<std::uint64_t>(random()) << 32) | random();
    co_await state_.read();
  }

  silo::Task<chaos::Reply> Write(const chaos::WriteRequest& req) override {
    const std::int64_t previous = state_->seq();
    state_->set_seq(req.seq());
    co_await state_.write();  // throws (and fails the call) unless stored
    chaos::Reply r = reply();
    r.set_previous(previous);
    co_return r;
  }

  silo::Task<chaos::Reply> Read(const chaos::Empty&) override { co_return reply(); }

 private:
  chaos::Reply reply() const {
    chaos::Reply r;
    r.set_seq(state_->seq());
    r.set_activation(activation_);
    r.set_pid(::getpid());
    return r;
  }

  silo::PersistentState<chaos::State> state_{*this, "pg"};
  std::uint64_t activation_ = 0;
};

}  // namespace

SILO_PLUGIN(chaosgrains) {
  registry.add<Register>();
}
