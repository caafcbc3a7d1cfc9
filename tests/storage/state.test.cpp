// Durable grain state through the runtime: silo::PersistentState on the memory provider and on PostgreSQL,
// observed through real grains (tests/plugins/stategrains.*) in in-process silos.

#include "fixture.hpp"

using namespace std::chrono_literals;
using silo::StatusCode;
using silo::detail::Caller;
using storage_test::expect_error;
using storage_test::Silo;

namespace {

teststate::AddRequest add(std::int64_t delta) {
  teststate::AddRequest r;
  r.set_delta(delta);
  return r;
}

// The calls of one counter type (MemoryCounterRef or PgCounterRef) on one silo, run from the test thread.
template <class Ref>
struct Counter {
  Silo& silo;
  std::string key;

  teststate::Total add(std::int64_t delta) {
    return silo.run([&](Caller& c) -> silo::Task<teststate::Total> {
      co_return co_await Ref(&c, key).Add(::add(delta));
    });
  }
  teststate::Total stale_write(std::int64_t delta) {
    return silo.run([&](Caller& c) -> silo::Task<teststate::Total> {
      co_return co_await Ref(&c, key).StaleWrite(::add(delta));
    });
  }
  teststate::Total get() {
    return silo.run(
        [&](Caller& c) -> silo::Task<teststate::Total> { co_return co_await Ref(&c, key).Get({}); });
  }
  teststate::Total clear() {
    return silo.run(
        [&](Caller& c) -> silo::Task<teststate::Total> { co_return co_await Ref(&c, key).Clear({}); });
  }
  void deactivate() {
    silo.run([&](Caller& c) -> silo::Task<void> { co_await Ref(&c, key).Deactivate({}); });
    REQUIRE(silo.wait_until_no_activations());
  }
};

template <class Ref>
void survives_deactivation(Silo& silo) {
  Counter<Ref> counter{silo, "survivor"};
  auto t = counter.get();
  CHECK(t.total() == 0);
  CHECK(t.etag() == 0);
  CHECK_FALSE(t.exists());

  counter.add(2);
  t = counter.add(3);
  CHECK(t.total() == 5);
  CHECK(t.etag() == 2);
  CHECK(t.exists());

  counter.deactivate();
  t = counter.get();  // a new activation, which read the stored state
  CHECK(t.total() == 5);
  CHECK(t.etag() == 2);
  CHECK(t.exists());

  t = counter.clear();
  CHECK(t.total() == 0);
  CHECK(t.etag() == 0);
  CHECK_FALSE(t.exists());
  counter.deactivate();
  t = counter.get();
  CHECK(t.total() == 0);
  CHECK_FALSE(t.exists());

  t = counter.add(7);  // stored afresh after the clear, on top of its tombstone (version 3)
  CHECK(t.total() == 7);
  CHECK(t.etag() == 4);  // versions never restart: an etag from before the clear stays stale
}

template <class Ref>
void stale_write_is_refused(Silo& silo) {
  Counter<Ref> counter{silo, "stale"};
  counter.add(1);  // version 1; the activation's snapshot still holds version 0
  const auto e = expect_error([&] { counter.stale_write(5); });
  CHECK(e.code() == StatusCode::aborted);
  CHECK_THAT(e.what(),
             Catch::Contains("inconsistent state: ") &&
                 Catch::Contains("/stale state 'state' is at version 1, this activation read version 0"));
  REQUIRE(silo.wait_until_no_activations());  // the activation that saw stale state is gone
  const auto t = counter.get();
  CHECK(t.total() == 1);
  CHECK(t.etag() == 1);
}

// An activation that read the state before another one cleared it and wrote it afresh holds a stale etag:
// its write must be refused, not overwrite the newer state.
template <class Ref>
void stale_write_after_clear_is_refused(Silo& silo) {
  Counter<Ref> counter{silo, "cleared"};
  counter.add(1);
  counter.deactivate();
  counter.get();  // a new activation: its snapshot holds total 1, read now
  counter.clear();
  const auto fresh = counter.add(5);  // stored afresh after the clear: total 5
  const auto e = expect_error([&] { counter.stale_write(100); });
  CHECK(e.code() == StatusCode::aborted);
  REQUIRE(silo.wait_until_no_activations());
  const auto t = counter.get();
  CHECK(t.total() == 5);
  CHECK(t.etag() == fresh.etag());
}

}  // namespace

TEST_CASE("grain state survives deactivation, and clear removes it", "[storage]") {
  storage_test::require_postgres();
  Silo silo;
  SECTION("memory provider") {
    survives_deactivation<teststate::MemoryCounterRef>(silo);
  }
  SECTION("postgres provider") {
    survives_deactivation<teststate::PgCounterRef>(silo);
  }
}

TEST_CASE("a write with a stale etag fails with ABORTED and deactivates the activation", "[storage]") {
  storage_test::require_postgres();
  Silo silo;
  SECTION("memory provider") {
    stale_write_is_refused<teststate::MemoryCounterRef>(silo);
  }
  SECTION("postgres provider") {
    stale_write_is_refused<teststate::PgCounterRef>(silo);
  }
}

// Issue 10 item 5: clear() used to delete the row, so versions restarted at 1 and the snapshot's etag (1,
// read before the clear) matched the state written afresh, which the stale write then overwrote.
TEST_CASE("a write with an etag read before clear() fails with ABORTED", "[storage]") {
  storage_test::require_postgres();
  Silo silo;
  SECTION("memory provider") {
    stale_write_after_clear_is_refused<teststate::MemoryCounterRef>(silo);
  }
  SECTION("postgres provider") {
    stale_write_after_clear_is_refused<teststate::PgCounterRef>(silo);
  }
}

TEST_CASE(
    "two silos activating one grain: the second writer loses, its activation goes, the winner's state stays",
    "[storage]") {
  storage_test::require_postgres();
  // Two silos of one cluster sharing one table: a duplicate activation, as after a membership split.
  const std::string cluster = "race-" + storage_test::run_id();
  Silo a(cluster), b(cluster);
  Counter<teststate::PgCounterRef> on_a{a, "contested"}, on_b{b, "contested"};

  on_a.add(1);                     // version 1
  CHECK(on_b.get().total() == 1);  // b's activation has read version 1 too
  const auto won = on_a.add(10);   // a writes first: version 2
  CHECK(won.etag() == 2);
  const auto e = expect_error([&] { on_b.add(100); });
  CHECK(e.code() == StatusCode::aborted);
  CHECK_THAT(e.what(),
             Catch::Contains("inconsistent state: teststate.PgCounter/contested state 'state' is at "
                             "version 2, this activation read version 1"));
  REQUIRE(b.wait_until_no_activations());

  // The stored row is the winner's.
  {
    auto conn = storage_test::sql();
    pqxx::nontransaction tx(*conn);
    const auto r = tx.exec_params(
        "SELECT payload, version FROM silo_grain_state WHERE cluster_id = $1 AND grain_type = "
        "'teststate.PgCounter' AND grain_key = 'contested' AND state_name = 'state'",
        cluster);
    REQUIRE(r.size() == 1);
    CHECK(r[0][1].as<std::int64_t>() == 2);
    teststate::CounterState stored;
    REQUIRE(stored.ParseFromString(pqxx::binarystring(r[0][0]).str()));
    CHECK(stored.total() == 11);
  }
  // b's next call activates afresh and sees the winner's total.
  auto t = on_b.get();
  CHECK(t.total() == 11);
  CHECK(t.etag() == 2);

  // Now both activations hold version 2 and write at the same moment: exactly one wins.
  auto fa = a.spawn([](Caller& c) -> silo::Task<teststate::Total> {
    co_return co_await teststate::PgCounterRef(&c, "contested").Add(add(1000));
  });
  auto fb = b.spawn([](Caller& c) -> silo::Task<teststate::Total> {
    co_return co_await teststate::PgCounterRef(&c, "contested").Add(add(2000));
  });
  int wins = 0;
  std::int64_t winner_total = 0;
  for (auto* f : {&fa, &fb}) {
    try {
      winner_total = f->get().total();
      ++wins;
    } catch (const silo::Error& err) {
      CHECK(err.code() == StatusCode::aborted);
    }
  }
  CHECK(wins == 1);
  CHECK((winner_total == 1011 || winner_total == 2011));
  REQUIRE(storage_test::eventually([&] { return a.rt->activation_count() + b.rt->activation_count() == 1; }));
  CHECK(on_a.get().total() == winner_total);
  CHECK(on_b.get().total() == winner_total);
}
