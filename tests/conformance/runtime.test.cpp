// Conformance: the single-silo grain runtime keeps the guarantees docs/ARCHITECTURE.md promises, observed
// through real grains in a real plugin (tests/plugins/testgrains.*).

#include <set>

#include "fixture.hpp"

using namespace std::chrono_literals;
using conformance::Silo;
using conformance::work;
using silo::StatusCode;
using silo::detail::Caller;

namespace {
using Clock = std::chrono::steady_clock;
std::int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Waits until a turn of Recorder `key` has started (max_active counts turns begun; Stats always interleaves,
// so it answers while that turn runs). An event to wait for, instead of a sleep that guesses how long the
// activation and the start of the turn take on a loaded machine.
bool turn_started(Silo& silo, const std::string& key) {
  return Silo::eventually(
      [&] {
        return silo.run([&](Caller& c) -> silo::Task<test::StatsReply> {
                     co_return co_await test::RecorderRef(&c, key).Stats(test::Empty{});
                   })
                   .max_active() >= 1;
      },
      std::chrono::seconds(10));
}
}  // namespace

TEST_CASE("the first call activates the grain, on_activate runs before any method", "[conformance]") {
  Silo silo;
  const auto reply = silo.run([&](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::RecorderRef(&c, "first").Work(work(0));
  });
  CHECK(reply.activated_first());
  CHECK(reply.calls() == 1);
  CHECK(silo.probe("activations:test.Recorder/first") == 1);
}

TEST_CASE("1,000 concurrent first calls to one id make exactly one activation", "[conformance]") {
  Silo silo;
  std::vector<std::future<test::WorkReply>> calls;
  for (int i = 0; i < 1000; ++i) {
    calls.push_back(silo.spawn(
        [](Caller& c) -> silo::Task<test::WorkReply> {
          co_return co_await test::RecorderRef(&c, "crowd").Work(work(0));
        },
        i));
  }
  for (auto& f : calls)
    REQUIRE(f.get().activated_first());
  CHECK(silo.probe("activations:test.Recorder/crowd") == 1);
  CHECK(silo.rt->activation_count() == 2);  // the recorder and the probe
}

TEST_CASE("a non-reentrant grain never overlaps two requests, even across awaits", "[conformance]") {
  Silo silo;
  std::vector<std::future<test::WorkReply>> calls;
  for (int i = 0; i < 40; ++i) {
    calls.push_back(silo.spawn(
        [](Caller& c) -> silo::Task<test::WorkReply> {
          co_return co_await test::RecorderRef(&c, "serial").Work(work(3));
        },
        i));
  }
  for (auto& f : calls)
    f.get();
  const auto stats = silo.run([](Caller& c) -> silo::Task<test::StatsReply> {
    co_return co_await test::RecorderRef(&c, "serial").Stats(test::Empty{});
  });
  CHECK(stats.calls() == 40);
  CHECK(stats.max_active() == 1);
}

TEST_CASE("a reentrant grain interleaves its requests at awaits", "[conformance]") {
  Silo silo;
  std::vector<std::future<test::WorkReply>> calls;
  for (int i = 0; i < 10; ++i) {
    calls.push_back(silo.spawn(
        [](Caller& c) -> silo::Task<test::WorkReply> {
          co_return co_await test::ReentrantRecorderRef(&c, "r").Work(work(50));
        },
        i));
  }
  for (auto& f : calls)
    f.get();
  const auto stats = silo.run([](Caller& c) -> silo::Task<test::StatsReply> {
    co_return co_await test::ReentrantRecorderRef(&c, "r").Stats(test::Empty{});
  });
  CHECK(stats.max_active() > 1);
}

TEST_CASE("read_only methods interleave with each other but never with writers", "[conformance]") {
  Silo silo;
  std::vector<std::future<test::WorkReply>> calls;
  for (int i = 0; i < 30; ++i) {
    const bool reader = i % 3 != 0;
    calls.push_back(silo.spawn(
        [reader](Caller& c) -> silo::Task<test::WorkReply> {
          auto ref = test::RecorderRef(&c, "rw");
          if (reader) co_return co_await ref.Read(work(20));
          co_return co_await ref.Work(work(5));
        },
        i));
  }
  for (auto& f : calls)
    f.get();
  const auto stats = silo.run([](Caller& c) -> silo::Task<test::StatsReply> {
    co_return co_await test::RecorderRef(&c, "rw").Stats(test::Empty{});
  });
  CHECK(stats.calls() == 30);  // one turn per call
  CHECK(stats.max_readers() > 1);
  CHECK(stats.reader_writer_overlap() == 0);

  // Order, and a writer is not starved: calls started one after the other from one worker reach the
  // activation in that order (one queue per worker thread), all while the first readers still run. FIFO:
  // R1 R2 run together; W1 waits for them, and R3 R4, behind W1, wait for W1 (readers that joined the
  // running ones would pass it, and a steady stream of them would starve it); then W2, then R5. A reply's
  // calls() is the number of turns finished when it finished, so it gives the order turns ended in.
  silo.run([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::RecorderRef(&c, "order").Work(work(0));  // activated before the sequence
  });
  const std::vector<std::pair<const char*, bool>> sequence = {
      {"R1", true}, {"R2", true}, {"W1", false}, {"R3", true}, {"R4", true}, {"W2", false}, {"R5", true}};
  std::vector<std::future<test::WorkReply>> ordered;
  for (const auto& [name, reader] : sequence) {
    ordered.push_back(silo.spawn(
        [reader = reader](Caller& c) -> silo::Task<test::WorkReply> {
          // if/else, not ?: -- GCC 12 evaluates both co_await operands of a conditional expression.
          auto ref = test::RecorderRef(&c, "order");
          if (reader) co_return co_await ref.Read(work(100));
          co_return co_await ref.Work(work(10));
        },
        0));
  }
  std::vector<std::int64_t> ended;
  std::string order;
  for (std::size_t i = 0; i < ordered.size(); ++i) {
    ended.push_back(ordered[i].get().calls() - 1);  // minus the activating call
    order += std::string(sequence[i].first) + " ended " + std::to_string(ended.back()) + "th; ";
  }
  INFO(order);
  CHECK(std::set<std::int64_t>{ended[0], ended[1]} == std::set<std::int64_t>{1, 2});
  CHECK(ended[2] == 3);
  CHECK(std::set<std::int64_t>{ended[3], ended[4]} == std::set<std::int64_t>{4, 5});
  CHECK(ended[5] == 6);
  CHECK(ended[6] == 7);
  const auto after = silo.run([](Caller& c) -> silo::Task<test::StatsReply> {
    co_return co_await test::RecorderRef(&c, "order").Stats(test::Empty{});
  });
  CHECK(after.max_readers() == 2);  // R1 with R2, R3 with R4: readers did share turns
  CHECK(after.reader_writer_overlap() == 0);
}

TEST_CASE("always_interleave methods run while another turn is in progress", "[conformance]") {
  Silo silo;
  // The slow turn only has to outlast the two calls below: 2 s is ample even on a loaded machine, and no
  // assertion depends on how long they take.
  auto slow = silo.spawn([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::RecorderRef(&c, "ai").Work(work(2000));
  });
  REQUIRE(turn_started(silo, "ai"));
  const auto r = silo.run([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::RecorderRef(&c, "ai").Interleaved(work(0));
  });
  CHECK(r.max_active() == 1);                                // the slow turn was in progress
  CHECK(slow.wait_for(0ms) == std::future_status::timeout);  // and this call did not wait for it
  slow.get();
}

TEST_CASE("a stateless worker scales out under load, never beyond max_local", "[conformance]") {
  Silo silo;
  std::vector<std::future<test::WorkReply>> calls;
  for (int i = 0; i < 30; ++i) {
    calls.push_back(silo.spawn(
        [](Caller& c) -> silo::Task<test::WorkReply> {
          co_return co_await test::WorkerRef(&c, "pool").Work(work(30));
        },
        i));
  }
  std::set<std::int64_t> instances;
  for (auto& f : calls)
    instances.insert(f.get().instance());
  CHECK(instances.size() > 1);
  CHECK(instances.size() <= 3);
  CHECK(silo.probe("workers_max") <= 3);
}

TEST_CASE("timers fire as turns and stop at deactivation", "[conformance]") {
  Silo silo;
  silo.run([](Caller& c) -> silo::Task<void> {
    test::TickRequest t;
    t.set_period_ms(20);
    co_await test::RecorderRef(&c, "ticker").StartTimer(t);
  });
  // Keep the grain busy meanwhile: ticks must queue behind turns, never overlap them.
  std::vector<std::future<test::WorkReply>> calls;
  for (int i = 0; i < 10; ++i) {
    calls.push_back(silo.spawn([](Caller& c) -> silo::Task<test::WorkReply> {
      co_return co_await test::RecorderRef(&c, "ticker").Work(work(15));
    }));
  }
  for (auto& f : calls)
    f.get();
  REQUIRE(Silo::eventually([&] { return silo.probe("ticks:ticker") >= 5; }));
  const auto stats = silo.run([](Caller& c) -> silo::Task<test::StatsReply> {
    co_return co_await test::RecorderRef(&c, "ticker").Stats(test::Empty{});
  });
  CHECK(stats.tick_overlap() == 0);

  silo.run([](Caller& c) -> silo::Task<void> {
    co_await test::RecorderRef(&c, "ticker").Deactivate(test::Empty{});
  });
  REQUIRE(Silo::eventually([&] { return silo.probe("deactivations:test.Recorder/ticker") == 1; }));
  const auto ticks = silo.probe("ticks:ticker");
  std::this_thread::sleep_for(150ms);
  CHECK(silo.probe("ticks:ticker") == ticks);
  CHECK(silo.probe("ticks_after_deactivate:ticker") == 0);
}

TEST_CASE("idle activations are collected after collection_age", "[conformance]") {
  silo::config::GrainsConfig grains;
  grains.types["test.Recorder"].collection_age = 300ms;
  silo::runtime::RuntimeOptions options;
  options.collection_age = std::chrono::hours(1);
  Silo silo(options, grains);
  silo.run([](Caller& c) -> silo::Task<void> { co_await test::RecorderRef(&c, "idle").Work(work(0)); });
  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::ReentrantRecorderRef(&c, "idle").Work(work(0)); });
  const auto start = Clock::now();
  REQUIRE(Silo::eventually([&] { return silo.probe("deactivations:test.Recorder/idle") == 1; }, 3s));
  CHECK(ms_since(start) >= 250);
  // The type without the override keeps the 1 h default.
  CHECK(silo.probe("deactivations:test.ReentrantRecorder/idle") == 0);
  // A new call activates it again.
  silo.run([](Caller& c) -> silo::Task<void> { co_await test::RecorderRef(&c, "idle").Work(work(0)); });
  CHECK(silo.probe("activations:test.Recorder/idle") == 2);
}

TEST_CASE("an exception reaches the caller with its status and message, and the activation keeps serving",
          "[conformance]") {
  Silo silo;
  auto fail = [&](int code, const std::string& message, bool std_exception) {
    return conformance::expect_error([&] {
      silo.run([&](Caller& c) -> silo::Task<void> {
        test::FailRequest req;
        req.set_code(code);
        req.set_message(message);
        req.set_std_exception(std_exception);
        co_await test::RecorderRef(&c, "thrower").Fail(req);
      });
    });
  };
  const auto e1 = fail(static_cast<int>(StatusCode::not_found), "no such sensor", false);
  CHECK(e1.code() == StatusCode::not_found);
  CHECK(std::string(e1.what()) == "no such sensor");
  const auto e2 = fail(0, "disk on fire", true);
  CHECK(e2.code() == StatusCode::unknown);
  CHECK(std::string(e2.what()) == "disk on fire");
  const auto ok = silo.run([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::RecorderRef(&c, "thrower").Work(work(0));
  });
  CHECK(ok.calls() == 1);
  CHECK(silo.probe("activations:test.Recorder/thrower") == 1);
}

TEST_CASE("on_error: DEACTIVATE deactivates the activation after a failed call", "[conformance]") {
  Silo silo;
  silo.run([](Caller& c) -> silo::Task<void> { co_await test::FragileRecorderRef(&c, "f").Work(work(0)); });
  const auto e = conformance::expect_error([&] {
    silo.run([](Caller& c) -> silo::Task<void> {
      test::FailRequest req;
      req.set_code(static_cast<int>(StatusCode::internal));
      req.set_message("corrupt");
      co_await test::FragileRecorderRef(&c, "f").Fail(req);
    });
  });
  CHECK(e.code() == StatusCode::internal);
  REQUIRE(Silo::eventually([&] { return silo.probe("deactivations:test.FragileRecorder/f") == 1; }));
  const auto r = silo.run([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::FragileRecorderRef(&c, "f").Work(work(0));
  });
  CHECK(r.calls() == 1);  // a fresh activation
  CHECK(silo.probe("activations:test.FragileRecorder/f") == 2);
}

TEST_CASE("a failing on_activate fails the waiting calls and the silo keeps serving", "[conformance]") {
  Silo silo;
  const auto e = conformance::expect_error([&] {
    silo.run([](Caller& c) -> silo::Task<void> { co_await test::FailsToActivateRef(&c, "x").Work(work(0)); });
  });
  CHECK(e.code() == StatusCode::failed_precondition);
  CHECK(std::string(e.what()).find("activation of test.FailsToActivate/x failed") != std::string::npos);
  // The failure is answered before the activation leaves its shard (another thread): wait for that, bounded.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (silo.rt->activation_count() != 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(silo.rt->activation_count() == 0);
  silo.run([](Caller& c) -> silo::Task<void> { co_await test::RecorderRef(&c, "after").Work(work(0)); });
}

TEST_CASE("a call without an answer in time fails with DEADLINE_EXCEEDED and is not resent",
          "[conformance]") {
  Silo silo;
  // The turns take 2 s, so a caller that waited for the reply instead of its deadline would see >= 2 s. The
  // upper bounds (1.2 s on 100-200 ms deadlines) leave a loaded machine 1 s of scheduling delay and still
  // tell the two apart; the lower bound is exact (a deadline never fires early).
  auto start = Clock::now();
  // The method's own timeout option (200ms).
  const auto e = conformance::expect_error([&] {
    silo.run([](Caller& c) -> silo::Task<void> { co_await test::TimeoutsRef(&c, "t").Slow(work(2000)); });
  });
  CHECK(e.code() == StatusCode::deadline_exceeded);
  CHECK(ms_since(start) >= 190);
  CHECK(ms_since(start) < 1200);
  // CallOptions override it.
  start = Clock::now();
  const auto e2 = conformance::expect_error([&] {
    silo.run([](Caller& c) -> silo::Task<void> {
      co_await test::RecorderRef(&c, "t2").Work(work(2000), silo::CallOptions{.timeout = 100ms});
    });
  });
  CHECK(e2.code() == StatusCode::deadline_exceeded);
  CHECK(ms_since(start) >= 90);
  CHECK(ms_since(start) < 1200);
  // A call with time to wait behind the slow turn (no sleep guessing when that turn ends) counts the turns:
  // the timed-out call ran exactly once, never resent.
  const auto r = silo.run([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::TimeoutsRef(&c, "t").Slow(work(0), silo::CallOptions{.timeout = 10s});
  });
  CHECK(r.calls() == 2);
}

TEST_CASE("a call cycle among non-reentrant grains fails fast with an error naming the cycle",
          "[conformance]") {
  Silo silo;
  const auto start = Clock::now();
  const auto e = conformance::expect_error([&] {
    silo.run([](Caller& c) -> silo::Task<void> {
      test::CycleRequest req;
      req.add_path("b");
      req.add_path("a");
      co_await test::CycleRef(&c, "a").Call(req);
    });
  });
  CHECK(e.code() == StatusCode::aborted);
  CHECK_THAT(std::string(e.what()),
             Catch::Contains("deadlock: call cycle test.Cycle/a -> test.Cycle/b -> test.Cycle/a"));
  CHECK(ms_since(start) < 5000);  // detected, not timed out (the call timeout is 30 s; margin for load)
  CHECK(conformance::logged("deadlock refused"));
  // A longer cycle, and a self-call.
  const auto e3 = conformance::expect_error([&] {
    silo.run([](Caller& c) -> silo::Task<void> {
      test::CycleRequest req;
      req.add_path("q");
      req.add_path("r");
      req.add_path("p");
      co_await test::CycleRef(&c, "p").Call(req);
    });
  });
  CHECK_THAT(std::string(e3.what()),
             Catch::Contains("test.Cycle/p -> test.Cycle/q -> test.Cycle/r -> test.Cycle/p"));
  // A chain without a cycle works.
  const auto ok = silo.run([](Caller& c) -> silo::Task<test::CycleReply> {
    test::CycleRequest req;
    req.add_path("y");
    req.add_path("z");
    co_return co_await test::CycleRef(&c, "x").Call(req);
  });
  CHECK(ok.visited_size() == 3);
}

TEST_CASE("call_chain_reentrancy lets a call that comes back along its chain run", "[conformance]") {
  Silo silo;
  const auto r = silo.run([](Caller& c) -> silo::Task<test::CycleReply> {
    test::CycleRequest req;
    req.add_path("b");
    req.add_path("a");
    co_return co_await test::ChainReentrantRef(&c, "a").Call(req);
  });
  REQUIRE(r.visited_size() == 3);
  CHECK(r.visited(0) == "a");
  CHECK(r.visited(1) == "b");
  CHECK(r.visited(2) == "a");
}

TEST_CASE("a turn that blocks its worker is reported with grain id and method, one that only awaits is not",
          "[conformance]") {
  silo::runtime::RuntimeOptions options;
  options.turn_warning = 100ms;
  Silo silo(options);
  // Blocked for 1 s, ten times the warning: the watchdog thread has 900 ms to notice even when the machine
  // is loaded.
  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::RecorderRef(&c, "slowpoke").Work(work(0, 1000)); });
  CHECK(conformance::logged("has been blocked for"));
  CHECK(conformance::logged("grain test.Recorder/slowpoke: turn test.Recorder/slowpoke.Work blocked worker"));
  // 400 ms of awaiting (other grains, storage, timers) blocks nobody: no warning.
  silo.run([](Caller& c) -> silo::Task<void> { co_await test::RecorderRef(&c, "patient").Work(work(400)); });
  CHECK_FALSE(conformance::logged("grain test.Recorder/patient: turn"));
}

TEST_CASE("stopping the runtime deactivates every activation", "[conformance]") {
  {
    Silo silo;
    for (int i = 0; i < 10; ++i) {
      silo.run([i](Caller& c) -> silo::Task<void> {
        co_await test::RecorderRef(&c, "stop-" + std::to_string(i)).Work(work(0));
      });
    }
    CHECK(silo.rt->activation_count() == 10);
  }
  Silo fresh;  // the plugin stays loaded: its counters survive the first runtime
  for (int i = 0; i < 10; ++i) {
    CHECK(fresh.probe("deactivations:test.Recorder/stop-" + std::to_string(i)) == 1);
  }
}

TEST_CASE("calls during shutdown that need a new activation fail with UNAVAILABLE", "[conformance]") {
  Silo silo;
  // The busy turn keeps the shutdown draining while the latecomer calls; 2 s is ample even on a loaded
  // machine, and the order of events is waited for, not slept for.
  auto busy = silo.spawn([](Caller& c) -> silo::Task<test::WorkReply> {
    co_return co_await test::RecorderRef(&c, "busy").Work(work(2000));
  });
  REQUIRE(turn_started(silo, "busy"));
  std::thread stopper([&] { silo.rt->stop(Clock::now() + 10s); });
  REQUIRE(Silo::eventually([&] { return silo.rt->stopping(); }));
  const auto e = conformance::expect_error([&] {
    silo.run(
        [](Caller& c) -> silo::Task<void> { co_await test::RecorderRef(&c, "latecomer").Work(work(0)); });
  });
  CHECK(e.code() == StatusCode::unavailable);
  CHECK(busy.wait_for(0ms) == std::future_status::timeout);  // refused while the shutdown still drained
  CHECK(busy.get().calls() == 1);                            // the call in flight finished
  stopper.join();
}
