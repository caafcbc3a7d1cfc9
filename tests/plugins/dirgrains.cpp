// Implementation of dirgrains.proto: a grain whose replies name the activation that ran them.

#include <unistd.h>

#include <chrono>
#include <random>

#include <boost/asio/steady_timer.hpp>
#include <silo/silo.hpp>

#include "dirgrains.silo.h"

namespace {

std::uint64_t random_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t id = 0;
  while (id == 0)
    id = rng();
  return id;
}

class Tracker final : public dirtest::TrackerGrain {
 public:
  silo::Task<dirtest::HitReply> Hit(const dirtest::HitRequest& req) override {
    if (req.sleep_ms() > 0) {
      boost::asio::steady_timer t(co_await boost::asio::this_coro::executor,
                                  std::chrono::milliseconds(req.sleep_ms()));
      co_await t.async_wait(boost::asio::use_awaitable);
    }
    dirtest::HitReply reply;
    reply.set_activation(activation_);
    reply.set_pid(::getpid());
    reply.set_hits(++hits_);
    if (!req.then_call().empty()) {
      try {
        const dirtest::HitReply other = co_await grain<dirtest::TrackerRef>(req.then_call()).Hit({});
        reply.set_called_activation(other.activation());
      } catch (const silo::Error& e) {
        reply.set_called_code(static_cast<int>(e.code()));
        reply.set_called_error(e.what());
      }
    }
    co_return reply;
  }

 private:
  const std::uint64_t activation_ = random_id();
  std::int64_t hits_ = 0;
};

}  // namespace

SILO_PLUGIN(dirgrains) {
  registry.add<Tracker>();
}
