#include "chaos/workload.hpp"

#include <future>
#include <random>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <silo/error.hpp>

#include "chaosgrains.pb.h"
#include "chaosgrains.silo.h"

namespace silo::chaos {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// Coroutines with by-value parameters rather than capturing lambdas: GCC 12 mishandles temporaries in
// co_await expressions inside lambda coroutines (see silod/cluster/router.cpp).
silo::Task<::chaos::Reply> write_seq(::chaos::RegisterRef ref, std::int64_t seq, milliseconds timeout) {
  ::chaos::WriteRequest req;
  req.set_seq(seq);
  silo::CallOptions o;
  o.timeout = timeout;
  co_return co_await ref.Write(req, o);
}

silo::Task<::chaos::Reply> read_seq(::chaos::RegisterRef ref, milliseconds timeout) {
  silo::CallOptions o;
  o.timeout = timeout;
  co_return co_await ref.Read(::chaos::Empty{}, o);
}

std::string key_of(int g) {
  return "chaos-" + std::to_string(g);
}

}  // namespace

Workload::Workload(WorkloadOptions options) : options_(std::move(options)) {
  for (const auto& g : options_.gateways) {
    silo::ClientOptions o;
    o.gateways = {g};
    o.default_timeout = options_.timeout;
    o.gateway_refresh = milliseconds(0);  // this client enters the cluster through its gateway only
    clients_.push_back(std::make_unique<silo::Client>(std::move(o)));
  }
  logs_.resize(static_cast<std::size_t>(options_.grains));
  for (int g = 0; g < options_.grains; ++g)
    logs_[g].key = key_of(g);
  acked_.assign(logs_.size(), 0);
}

Workload::~Workload() {
  stopping_ = true;
  work_.reset();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

std::int64_t Workload::now_us() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - options_.t0).count();
}

void Workload::start() {
  thread_ = std::thread([this] { io_.run(); });
  for (int g = 0; g < options_.grains; ++g) {
    ++running_;
    asio::co_spawn(io_, grain_loop(g), [this](std::exception_ptr) { --running_; });
  }
}

void Workload::stop() {
  stopping_ = true;
  const auto deadline = Clock::now() + options_.timeout + options_.pause_max + std::chrono::seconds(5);
  while (running_.load() > 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(milliseconds(10));
}

int Workload::pick_gateway(int g, std::int64_t n) const {
  const int count = static_cast<int>(options_.gateways.size());
  for (int i = 0; i < count; ++i) {
    const int k = static_cast<int>((g + n + i) % count);
    if (options_.serving[k].load()) return k;
  }
  return -1;
}

silo::Task<bool> Workload::call(int g, int gateway, Op op) {
  GrainLog& log = logs_[g];
  Sample s;
  s.op = op;
  s.phase = phase_.load();
  s.gateway = gateway;
  if (op == Op::write) s.seq = ++log.last_attempted;
  auto ref = clients_[gateway]->ref<::chaos::RegisterRef>(log.key);
  s.sent_us = now_us();
  try {
    // Run on the chosen client's executor; co_spawn resumes us back on ours.
    auto task = op == Op::write ? write_seq(ref, s.seq, options_.timeout) : read_seq(ref, options_.timeout);
    const ::chaos::Reply r =
        co_await asio::co_spawn(clients_[gateway]->executor(), std::move(task), asio::use_awaitable);
    s.ok = true;
    s.result = r.seq();
    s.previous = r.previous();
    s.activation = r.activation();
    s.pid = r.pid();
  } catch (const silo::Error& e) {
    s.code = static_cast<int>(e.code());
  } catch (const std::exception&) {
    s.code = static_cast<int>(silo::StatusCode::unknown);
  }
  s.done_us = now_us();

  // Live counters for the progress line; the verdict is computed from the logs afterwards.
  std::int64_t& acked = acked_[g];
  if (op == Op::write) {
    if (s.ok) {
      ++progress_.acked;
      if (s.previous < acked) ++progress_.lost;
      acked = std::max(acked, s.seq);
    } else {
      ++progress_.write_failed;
    }
  } else {
    if (s.ok) {
      ++progress_.reads;
      if (s.result < acked) ++progress_.stale;
    } else {
      ++progress_.read_failed;
    }
  }
  log.samples.push_back(s);
  co_return s.ok;
}

silo::Task<void> Workload::grain_loop(int g) {
  asio::steady_timer pause(co_await asio::this_coro::executor);
  std::mt19937_64 rng(options_.seed * 1000003u + static_cast<std::uint64_t>(g));
  const auto spread = static_cast<std::uint64_t>((options_.pause_max - options_.pause_min).count()) + 1;
  // Bounded by stop(): each turn is one call (bounded by its timeout) and one pause.
  for (std::int64_t n = 0; !stopping_.load(); ++n) {
    const int gateway = pick_gateway(g, n);
    milliseconds wait = options_.pause_min + milliseconds(rng() % spread);
    if (gateway < 0) {
      wait = milliseconds(100);  // no gateway takes calls right now
    } else {
      const bool ok = co_await call(g, gateway, rng() % 2 == 0 ? Op::read : Op::write);
      // After a failure, try again soon: the time a grain takes to answer again is measured on these.
      if (!ok) wait = options_.pause_min / 2;
    }
    pause.expires_after(wait);
    co_await pause.async_wait(asio::use_awaitable);
  }
}

silo::Task<void> Workload::final_reads(int g, Clock::time_point deadline) {
  asio::steady_timer pause(co_await asio::this_coro::executor);
  const int count = static_cast<int>(options_.gateways.size());
  // Twice round every gateway: a duplicate activation still alive at the end answers in between the other
  // one's answers, which the analysis sees as interleaving.
  for (int round = 0; round < 2; ++round) {
    for (int gateway = 0; gateway < count; ++gateway) {
      while (!co_await call(g, gateway, Op::read) && Clock::now() < deadline) {
        pause.expires_after(milliseconds(200));
        co_await pause.async_wait(asio::use_awaitable);
      }
    }
  }
}

void Workload::final_check(milliseconds budget) {
  phase_ = Phase::final_check;
  const auto deadline = Clock::now() + budget;
  std::vector<std::future<void>> done;
  for (int g = 0; g < options_.grains; ++g) {
    auto promise = std::make_shared<std::promise<void>>();
    done.push_back(promise->get_future());
    asio::co_spawn(io_, final_reads(g, deadline), [promise](std::exception_ptr) { promise->set_value(); });
  }
  // Each grain makes at most 2 * gateways calls after the deadline passes, each bounded by the timeout.
  const auto hard = deadline + (options_.timeout + milliseconds(300)) * 2 * options_.gateways.size();
  for (auto& f : done)
    f.wait_until(hard);
}

}  // namespace silo::chaos
