// What durable state promises when a write fails or a state is cleared, against a real PostgreSQL
// (pg_virtualenv): no turn runs on state whose write failed, one bad write in a group-commit batch fails
// alone, and versions never go back (a clear keeps a tombstone), so an etag from before a clear stays stale.
// Failing writes are injected for real: a trigger on silo_grain_state raises for one chosen key and payload.

#include <latch>

#include "fixture.hpp"

using namespace std::chrono_literals;
using silo::StatusCode;
using silo::detail::Caller;
using silo::storage::Outcome;
using silo::storage::StateKey;
using storage_test::expect_error;
using storage_test::Silo;

namespace {

teststate::AddRequest add(std::int64_t delta) {
  teststate::AddRequest r;
  r.set_delta(delta);
  return r;
}

std::string counter_bytes(std::int64_t total) {
  teststate::CounterState s;
  s.set_total(total);
  return s.SerializeAsString();
}

// Makes every write of `payload` to grain key `key` fail inside PostgreSQL (SQLSTATE P0001), as a full disk
// or a constraint would, until destroyed.
struct InjectedFailure {
  InjectedFailure(std::string key, const std::string& payload) : key(std::move(key)) {
    static int counter = 0;
    name = "silo_fail_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    auto conn = storage_test::sql();
    pqxx::work tx(*conn);
    tx.exec(
        "CREATE FUNCTION " + name + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.grain_key = " +
        tx.quote(this->key) + " AND NEW.payload = " + tx.quote(pqxx::binarystring(payload)) +
        "::bytea THEN RAISE EXCEPTION 'injected failure for %', NEW.grain_key; END IF; RETURN NEW; END $$");
    tx.exec("CREATE TRIGGER " + name +
            " BEFORE INSERT OR UPDATE ON silo_grain_state FOR EACH ROW EXECUTE "
            "FUNCTION " +
            name + "()");
    tx.commit();
  }
  ~InjectedFailure() {
    try {
      auto conn = storage_test::sql();
      pqxx::work tx(*conn);
      tx.exec("DROP TRIGGER IF EXISTS " + name + " ON silo_grain_state");
      tx.exec("DROP FUNCTION IF EXISTS " + name + "()");
      tx.commit();
    } catch (const std::exception&) {
    }
  }
  std::string key;
  std::string name;
};

// The stored total and version of a PgCounter, straight from the table.
std::pair<std::int64_t, std::int64_t> stored(const std::string& cluster, const std::string& key) {
  auto conn = storage_test::sql();
  pqxx::nontransaction tx(*conn);
  const auto r = tx.exec_params(
      "SELECT payload, version FROM silo_grain_state WHERE cluster_id = $1 AND grain_type = "
      "'teststate.PgCounter' AND grain_key = $2 AND state_name = 'state'",
      cluster, key);
  REQUIRE(r.size() == 1);
  teststate::CounterState s;
  REQUIRE(s.ParseFromString(pqxx::binarystring(r[0][0]).str()));
  return {s.total(), r[0][1].as<std::int64_t>()};
}

}  // namespace

TEST_CASE("a failed state write: no queued call runs on the unsaved state", "[storage][guarantees]") {
  storage_test::require_postgres();
  const std::string cluster = "failed-write-" + storage_test::run_id();
  Silo silo(cluster);
  const std::string key = "poisoned";
  auto add_to = [&](std::int64_t delta) {
    return silo.spawn([key, delta](Caller& c) -> silo::Task<teststate::Total> {
      co_return co_await teststate::PgCounterRef(&c, key).Add(add(delta));
    });
  };
  REQUIRE(add_to(1).get().total() == 1);  // stored: 1 at version 1

  InjectedFailure fail(key, counter_bytes(11));  // the write of 1 + 10 fails
  // Add(100) queues behind Add(10), whose turn waits on its (failing) write: both from one worker, in order.
  auto first = add_to(10);
  auto second = add_to(100);
  const auto e = expect_error([&] { first.get(); });
  CHECK(e.code() == StatusCode::internal);
  CHECK_THAT(e.what(), Catch::Contains("injected failure for poisoned"));

  // The queued call either did not run (a retryable UNAVAILABLE) or ran on the state as stored (1), never on
  // the unsaved 11: stored 111 is the defect.
  std::int64_t expected = 1;
  try {
    const auto t = second.get();
    CHECK(t.total() == 101);
    expected = 101;
  } catch (const silo::Error& err) {
    CHECK(err.code() == StatusCode::unavailable);
  }
  CHECK(stored(cluster, key).first == expected);
  // And the grain serves what is stored.
  const auto now = silo.run([key](Caller& c) -> silo::Task<teststate::Total> {
    co_return co_await teststate::PgCounterRef(&c, key).Get({});
  });
  CHECK(now.total() == expected);
}

TEST_CASE("group commit: one bad write fails alone, the rest of its batch is stored",
          "[storage][guarantees]") {
  storage_test::require_postgres();
  const std::string cluster = "isolation-" + storage_test::run_id();
  auto pg = silo::storage::make_postgres_provider(storage_test::pg_config(true, 1), cluster, "iso");
  pg->start();
  auto key = [](const std::string& k) { return StateKey{"test.Thing", k, "state"}; };

  // Created first: CREATE TRIGGER waits for the transactions writing the table, such as the blocked one
  // below.
  InjectedFailure fail("bad", "poison");
  // One worker, held up by a row lock, so every write queued meanwhile goes into its next batch together.
  REQUIRE(storage_test::write(*pg, key("blocker"), "b1", 0).ok());
  auto lock_conn = storage_test::sql();
  auto lock_tx = std::make_unique<pqxx::work>(*lock_conn);
  lock_tx->exec_params(
      "SELECT 1 FROM silo_grain_state WHERE cluster_id = $1 AND grain_key = 'blocker' FOR UPDATE", cluster);
  std::promise<Outcome> blocked;
  pg->write(key("blocker"), "b2", 1, [&](Outcome o) { blocked.set_value(std::move(o)); });
  std::this_thread::sleep_for(200ms);  // the worker is now waiting on the lock inside its transaction

  constexpr int good = 200;
  std::vector<Outcome> outcomes(good + 1);
  std::latch done(good + 1);
  for (int i = 0; i <= good; ++i) {
    const bool bad = i == good / 2;
    pg->write(key(bad ? "bad" : "good" + std::to_string(i)), bad ? "poison" : "v" + std::to_string(i), 0,
              [&outcomes, &done, i](Outcome o) {
                outcomes[i] = std::move(o);
                done.count_down();
              });
  }
  lock_tx->commit();
  REQUIRE(blocked.get_future().get().ok());
  done.wait();

  for (int i = 0; i <= good; ++i) {
    INFO("write " << i << ": " << outcomes[i].error);
    if (i == good / 2) {
      CHECK(outcomes[i].code == StatusCode::internal);
      CHECK_THAT(outcomes[i].error, Catch::Contains("injected failure for bad"));
    } else {
      CHECK(outcomes[i].ok());
      CHECK(outcomes[i].etag == 1);
    }
  }
  for (int i = 0; i <= good; ++i) {
    if (i == good / 2) continue;
    const Outcome o = storage_test::read(*pg, key("good" + std::to_string(i)));
    CHECK(o.etag == 1);
    CHECK(o.data == "v" + std::to_string(i));
  }
  CHECK(storage_test::read(*pg, key("bad")).etag == 0);
  pg->stop();
}

TEST_CASE("clear keeps versions monotonic: an etag from before the clear is refused after it",
          "[storage][guarantees]") {
  storage_test::require_postgres();
  const std::string cluster = "clear-" + storage_test::run_id();
  auto pg = silo::storage::make_postgres_provider(storage_test::pg_config(), cluster, "clr");
  pg->start();
  auto mem = silo::storage::make_memory_provider();
  for (silo::storage::Provider* p : {pg.get(), mem.get()}) {
    INFO((p == mem.get() ? "memory" : "postgres"));
    const StateKey k{"test.Thing", "cleared", "state"};
    REQUIRE(storage_test::write(*p, k, "v1", 0).ok());  // a stale holder keeps etag 1 from here
    REQUIRE(storage_test::write(*p, k, "v2", 1).ok());
    const Outcome c = storage_test::clear(*p, k, 2);
    REQUIRE(c.ok());
    CHECK(c.etag > 2);  // the tombstone's version
    const Outcome r = storage_test::read(*p, k);
    CHECK(r.etag == c.etag);
    CHECK(r.data.empty());
    // Writing from "nothing stored" would skip over the clear: the writer must hold the tombstone's version.
    CHECK(storage_test::write(*p, k, "from-zero", 0).code == StatusCode::aborted);
    const Outcome w = storage_test::write(*p, k, "v3", c.etag);
    REQUIRE(w.ok());
    CHECK(w.etag == c.etag + 1);
    for (std::uint64_t stale : {std::uint64_t(0), std::uint64_t(1), std::uint64_t(2), c.etag}) {
      INFO("stale etag " << stale);
      CHECK(storage_test::write(*p, k, "stale", stale).code == StatusCode::aborted);
      CHECK(storage_test::clear(*p, k, stale).code == StatusCode::aborted);
    }
    CHECK(storage_test::read(*p, k).data == "v3");
  }
  pg->stop();
}

namespace {

template <class Ref>
void stale_holder_after_clear(Silo& silo, const std::string& key) {
  auto add_to = [&](std::int64_t delta) {
    return silo.run(
        [&](Caller& c) -> silo::Task<teststate::Total> { co_return co_await Ref(&c, key).Add(add(delta)); });
  };
  add_to(1);  // version 1
  silo.run([&](Caller& c) -> silo::Task<void> { co_await Ref(&c, key).Deactivate({}); });
  REQUIRE(silo.wait_until_no_activations());
  // A new activation: both of its states read version 1; `snapshot_` keeps that etag (the stale holder).
  CHECK(add_to(5).total() == 6);  // version 2
  const auto cleared =
      silo.run([&](Caller& c) -> silo::Task<teststate::Total> { co_return co_await Ref(&c, key).Clear({}); });
  CHECK_FALSE(cleared.exists());
  CHECK(cleared.etag() == 0);
  CHECK(add_to(7).total() == 7);  // stored afresh after the clear
  const auto e = expect_error([&] {
    silo.run([&](Caller& c) -> silo::Task<teststate::Total> {
      co_return co_await Ref(&c, key).StaleWrite(add(100));
    });
  });
  CHECK(e.code() == StatusCode::aborted);
  REQUIRE(silo.wait_until_no_activations());
  const auto t =
      silo.run([&](Caller& c) -> silo::Task<teststate::Total> { co_return co_await Ref(&c, key).Get({}); });
  CHECK(t.total() == 7);  // not 101: the stale holder did not overwrite the state written after the clear
  CHECK(t.exists());
}

}  // namespace

TEST_CASE("a grain holding an etag from before a clear cannot overwrite what was written after it",
          "[storage][guarantees]") {
  storage_test::require_postgres();
  Silo silo("clear-grain-" + storage_test::run_id());
  SECTION("memory provider") {
    stale_holder_after_clear<teststate::MemoryCounterRef>(silo, "after-clear");
  }
  SECTION("postgres provider") {
    stale_holder_after_clear<teststate::PgCounterRef>(silo, "after-clear");
  }
}
