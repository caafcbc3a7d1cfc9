// The membership table contract, run against the in-memory table and a real PostgreSQL (pg_virtualenv,
// which tests/run.sh provides). Postgres cases fail, rather than skip, without one: a skipped database
// test reads as a pass.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include <pqxx/pqxx>
#include "pg_server.hpp"

#include "cluster/membership_table.hpp"

using namespace silo::cluster;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// Each test gets its own cluster id, so cases never see each other's rows in the shared database.
std::string unique_cluster(const std::string& what) {
  static std::atomic<int> counter{0};
  return "test-" + what + "-" + std::to_string(getpid()) + "-" + std::to_string(unix_ms_now()) + "-" +
         std::to_string(counter++);
}

void require_postgres() {
  silo::test::require_postgres("silo_membership_tests");
}

// "Another silo" of the local table is the same table from another thread: it is single-process.
struct LocalStore {
  static constexpr bool is_postgres = false;
  std::shared_ptr<MembershipTable> table = make_local_table();
  std::shared_ptr<MembershipTable> open() { return table; }
};

// "Another silo" of the postgres table is another instance with its own connections.
struct PostgresStore {
  static constexpr bool is_postgres = true;
  std::string cluster;
  PostgresStore() {
    require_postgres();
    cluster = unique_cluster("pg");
  }
  std::shared_ptr<MembershipTable> open() { return open_cluster(cluster); }
  static std::shared_ptr<MembershipTable> open_cluster(const std::string& id, const std::string& dsn = "") {
    std::shared_ptr<MembershipTable> t = make_postgres_table(dsn, id);
    t->init();
    return t;
  }
};

MembershipRow make_row(const std::string& host, std::uint16_t port, std::int64_t generation,
                       SiloStatus status = SiloStatus::active, std::int64_t alive_ms = 0) {
  MembershipRow r;
  r.address = SiloAddress{host, port, generation};
  r.name = "silo-" + std::to_string(port);
  r.host_name = "box-" + host;
  r.status = status;
  r.start_ms = generation;
  r.i_am_alive_ms = alive_ms;
  return r;
}

void check_same(const MembershipRow& got, const MembershipRow& want) {
  INFO("row " << want.address.str());
  CHECK(got.address == want.address);
  CHECK(got.name == want.name);
  CHECK(got.host_name == want.host_name);
  CHECK(got.status == want.status);
  CHECK(got.gateway == want.gateway);
  REQUIRE(got.suspicions.size() == want.suspicions.size());
  for (std::size_t i = 0; i < want.suspicions.size(); ++i) {
    CHECK(got.suspicions[i].voter == want.suspicions[i].voter);
    CHECK(got.suspicions[i].at_ms == want.suspicions[i].at_ms);
  }
  CHECK(got.start_ms == want.start_ms);
  CHECK(got.i_am_alive_ms == want.i_am_alive_ms);
  CHECK(got.grain_types == want.grain_types);
  CHECK(got.activations == want.activations);
}

// Writes with the current version, as the membership agent does.
void write(MembershipTable& t, const MembershipRow& row) {
  REQUIRE(t.write_row(row, t.read_all().version));
}

}  // namespace

TEMPLATE_TEST_CASE("membership table: every field of a row round-trips", "[cluster]", LocalStore,
                   PostgresStore) {
  TestType store;
  auto table = store.open();
  REQUIRE(table->read_all().version == 0);
  REQUIRE(table->read_all().rows.empty());

  MembershipRow v6 = make_row("::1", 11111, 1700000000123, SiloStatus::active, 1700000001999);
  v6.name = "silo 'a' \"quoted\"";
  v6.host_name = "höst-ä";
  v6.gateway = "[::1]:30000";
  v6.suspicions = {{"10.0.0.2:11111@1700000000001", 1700000000456}, {"::1:11112@5", 1}};
  v6.grain_types = {"Counter", "with,comma", "with \"quote\"", "back\\slash", "{braces}", "NULL", "", "ünï"};
  v6.activations = 1234567890123;
  MembershipRow plain = make_row("10.0.0.1", 1, 0, SiloStatus::joining, 0);
  MembershipRow dead = make_row("silo-b.example", 65535, 42, SiloStatus::dead, 999);
  dead.suspicions = {{"10.0.0.1:1@0", 5}};

  REQUIRE(table->write_row(v6, 0));
  REQUIRE(table->write_row(plain, 1));
  REQUIRE(table->write_row(dead, 2));

  MembershipSnapshot snap = table->read_all();
  CHECK(snap.version == 3);
  REQUIRE(snap.rows.size() == 3);
  // Ordered by host bytes, port, generation in both implementations.
  check_same(snap.rows[0], plain);
  check_same(snap.rows[1], v6);
  check_same(snap.rows[2], dead);
  REQUIRE(snap.find(v6.address) != nullptr);
  CHECK(snap.find(SiloAddress{"::1", 11111, 1}) == nullptr);

  SECTION("a write replaces the row with the same address and generation") {
    v6.status = SiloStatus::shutting_down;
    v6.suspicions.clear();
    v6.grain_types = {"Other"};
    v6.gateway.clear();
    REQUIRE(table->write_row(v6, 3));
    snap = table->read_all();
    CHECK(snap.version == 4);
    REQUIRE(snap.rows.size() == 3);
    check_same(*snap.find(v6.address), v6);
  }
  SECTION("another generation on the same endpoint is another silo") {
    MembershipRow restarted = v6;
    restarted.address.generation += 1;
    REQUIRE(table->write_row(restarted, 3));
    CHECK(table->read_all().rows.size() == 4);
  }
  SECTION("another silo sees the rows") {
    auto other = store.open();
    snap = other->read_all();
    CHECK(snap.version == 3);
    CHECK(snap.rows.size() == 3);
  }
}

TEMPLATE_TEST_CASE("membership table: two writers with the same expected version, exactly one wins",
                   "[cluster]", LocalStore, PostgresStore) {
  TestType store;
  auto a = store.open();
  auto b = store.open();
  for (int round = 0; round < 10; ++round) {
    const std::int64_t version = a->read_all().version;
    MembershipRow row_a = make_row("10.0.0.1", 11111, round);
    MembershipRow row_b = make_row("10.0.0.2", 11111, round);
    std::latch start(2);
    bool won_a = false;
    bool won_b = false;
    std::thread ta([&] {
      start.arrive_and_wait();
      won_a = a->write_row(row_a, version);
    });
    std::thread tb([&] {
      start.arrive_and_wait();
      won_b = b->write_row(row_b, version);
    });
    ta.join();
    tb.join();
    INFO("round " << round);
    REQUIRE(won_a != won_b);
    MembershipSnapshot snap = a->read_all();
    CHECK(snap.version == version + 1);
    // The loser wrote nothing at all.
    CHECK((snap.find(row_a.address) != nullptr) == won_a);
    CHECK((snap.find(row_b.address) != nullptr) == won_b);
    // A stale version keeps failing; the re-read one succeeds.
    CHECK_FALSE((won_a ? b : a)->write_row(won_a ? row_b : row_a, version));
    CHECK((won_a ? b : a)->write_row(won_a ? row_b : row_a, snap.version));
  }
  CHECK(a->read_all().version == 20);
  CHECK(a->read_all().rows.size() == 20);
}

TEMPLATE_TEST_CASE("membership table: heartbeat refreshes i_am_alive and load without a version bump",
                   "[cluster]", LocalStore, PostgresStore) {
  TestType store;
  auto table = store.open();
  MembershipRow row = make_row("10.0.0.1", 11111, 7, SiloStatus::active, 1000);
  MembershipRow other = make_row("10.0.0.2", 11111, 7, SiloStatus::active, 1000);
  write(*table, row);
  write(*table, other);
  table->heartbeat(row.address, 1700000000777, 99);
  MembershipSnapshot snap = table->read_all();
  CHECK(snap.version == 2);
  CHECK(snap.find(row.address)->i_am_alive_ms == 1700000000777);
  CHECK(snap.find(row.address)->activations == 99);
  CHECK(snap.find(other.address)->i_am_alive_ms == 1000);  // only that silo's row
  CHECK(snap.find(other.address)->activations == 0);
  // A heartbeat for a silo without a row (cleaned up) changes nothing.
  table->heartbeat(SiloAddress{"10.0.0.9", 1, 1}, 5, 5);
  CHECK(table->read_all().rows.size() == 2);
  CHECK(table->read_all().version == 2);
}

TEMPLATE_TEST_CASE("membership table: cleanup_defunct deletes only dead rows older than the age", "[cluster]",
                   LocalStore, PostgresStore) {
  TestType store;
  auto table = store.open();
  const std::int64_t now = unix_ms_now();
  MembershipRow dead_old = make_row("10.0.0.1", 11111, 1, SiloStatus::dead, now - 2 * 3600 * 1000);
  MembershipRow dead_recent = make_row("10.0.0.1", 11111, 2, SiloStatus::dead, now - 60 * 1000);
  MembershipRow active_old = make_row("10.0.0.2", 11111, 1, SiloStatus::active, now - 2 * 3600 * 1000);
  MembershipRow stopping_old =
      make_row("10.0.0.3", 11111, 1, SiloStatus::shutting_down, now - 2 * 3600 * 1000);
  for (const auto& r : {dead_old, dead_recent, active_old, stopping_old})
    write(*table, r);
  REQUIRE(table->read_all().version == 4);

  CHECK(table->cleanup_defunct(1h) == 1);
  MembershipSnapshot snap = table->read_all();
  CHECK(snap.version == 5);
  CHECK(snap.rows.size() == 3);
  CHECK(snap.find(dead_old.address) == nullptr);
  CHECK(snap.find(dead_recent.address) != nullptr);

  // Nothing to delete: no bump, so no silo re-reads for nothing.
  CHECK(table->cleanup_defunct(1h) == 0);
  CHECK(table->read_all().version == 5);
  CHECK(table->cleanup_defunct(30s) == 1);
  CHECK(table->read_all().version == 6);
}

TEMPLATE_TEST_CASE("membership table: wait_for_change wakes on another silo's write and times out otherwise",
                   "[cluster]", LocalStore, PostgresStore) {
  TestType store;
  auto listener = store.open();
  auto writer = store.open();
  write(*writer, make_row("10.0.0.1", 11111, 1));
  listener->wait_for_change(50ms);  // starts listening (postgres) / consumes the write above (local)
  CHECK_FALSE(listener->wait_for_change(100ms));

  Clock::time_point written;
  std::thread t([&] {
    std::this_thread::sleep_for(200ms);
    written = Clock::now();
    write(*writer, make_row("10.0.0.2", 11111, 1));
  });
  const bool woke = listener->wait_for_change(5s);
  const Clock::time_point woke_at = Clock::now();
  t.join();
  REQUIRE(woke);
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(woke_at - written).count() < 1000);

  // Times out with nothing new; heartbeats are not changes.
  writer->heartbeat(SiloAddress{"10.0.0.1", 11111, 1}, unix_ms_now(), 3);
  auto start = Clock::now();
  CHECK_FALSE(listener->wait_for_change(300ms));
  CHECK(ms_since(start) >= 250);

  // A cleanup that deleted rows is a change.
  write(*writer, make_row("10.0.0.3", 11111, 1, SiloStatus::dead, 1));
  CHECK(listener->wait_for_change(2s));
  CHECK(writer->cleanup_defunct(1h) == 1);
  CHECK(listener->wait_for_change(2s));
  CHECK_FALSE(listener->wait_for_change(100ms));
}

TEST_CASE("postgres membership: rows of another cluster id are invisible", "[cluster]") {
  require_postgres();
  auto a = PostgresStore::open_cluster(unique_cluster("a"));
  auto b = PostgresStore::open_cluster(unique_cluster("b"));
  MembershipRow dead = make_row("10.0.0.1", 11111, 1, SiloStatus::dead, 1);
  b->wait_for_change(50ms);  // listening
  write(*a, dead);
  CHECK(a->read_all().version == 1);
  CHECK(b->read_all().version == 0);
  CHECK(b->read_all().rows.empty());
  CHECK_FALSE(b->wait_for_change(300ms));  // a's notification is not b's change

  b->heartbeat(dead.address, 12345, 7);
  CHECK(a->read_all().rows.at(0).i_am_alive_ms == 1);
  CHECK(b->cleanup_defunct(1ms) == 0);
  CHECK(a->read_all().rows.size() == 1);
  // Versions are per cluster: b's first write expects 0 although a is at 1.
  CHECK(b->write_row(make_row("10.0.0.1", 11111, 1), 0));
  CHECK(a->read_all().version == 1);
  CHECK(a->read_all().rows.at(0).status == SiloStatus::dead);
  CHECK(b->read_all().rows.at(0).status == SiloStatus::active);
}

TEST_CASE("postgres membership: migrations are idempotent, also when silos start together", "[cluster]") {
  require_postgres();
  SECTION("init twice, and a second table") {
    auto t = PostgresStore::open_cluster(unique_cluster("init"));
    t->init();
    write(*t, make_row("10.0.0.1", 11111, 1));
    PostgresStore::open_cluster(unique_cluster("init"))->init();
    CHECK(t->read_all().rows.size() == 1);
    pqxx::connection c{""};
    pqxx::nontransaction tx(c);
    CHECK(tx.exec("SELECT count(*) FROM silo_schema_migrations WHERE component = 'membership'")[0][0]
              .as<int>() == 1);
  }
  SECTION("concurrently on a fresh database, next to the storage component") {
    const std::string db = "silo_membership_migrate_" + std::to_string(getpid());
    {
      pqxx::connection admin{""};
      pqxx::nontransaction tx(admin);
      tx.exec("DROP DATABASE IF EXISTS " + tx.quote_name(db));
      tx.exec("CREATE DATABASE " + tx.quote_name(db));
    }
    const std::string dsn = "dbname=" + db;
    constexpr int silos = 4;
    std::latch start(silos + 1);
    std::vector<std::string> errors(silos + 1);
    std::vector<std::thread> threads;
    for (int i = 0; i < silos; ++i) {
      threads.emplace_back([&, i] {
        try {
          auto t = make_postgres_table(dsn, "fresh");
          start.arrive_and_wait();
          t->init();
          t->read_all();
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
    // The storage component creates the shared migrations table its own way, under its own lock.
    threads.emplace_back([&] {
      try {
        pqxx::connection c{dsn};
        start.arrive_and_wait();
        pqxx::work tx(c);
        tx.exec("SET LOCAL client_min_messages = warning");
        tx.exec(
            "CREATE TABLE IF NOT EXISTS silo_schema_migrations (component text NOT NULL, version integer NOT "
            "NULL, applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))");
        tx.exec("INSERT INTO silo_schema_migrations (component, version) VALUES ('storage', 1)");
        tx.commit();
      } catch (const std::exception& e) {
        // Losing this race is the storage component's business; the membership side must not care.
        WARN("storage-like creator: " << e.what());
      }
    });
    for (auto& t : threads)
      t.join();
    for (int i = 0; i < silos; ++i) {
      INFO("silo " << i);
      CHECK(errors[i].empty());
    }
    {
      pqxx::connection c{dsn};
      pqxx::nontransaction tx(c);
      CHECK(tx.exec("SELECT count(*) FROM silo_schema_migrations WHERE component = 'membership'")[0][0]
                .as<int>() == 1);
      CHECK(tx.exec("SELECT count(*) FROM silo_membership_version WHERE cluster_id = 'fresh'")[0][0]
                .as<int>() == 1);
    }
    pqxx::connection admin{""};
    pqxx::nontransaction tx(admin);
    tx.exec("DROP DATABASE " + tx.quote_name(db) + " WITH (FORCE)");
  }
}

// [pg_outage]: it terminates every silod-membership backend on the server, so under ctest -j2 it would cut
// the membership connections of whatever test runs beside it (seen: "rows of another cluster id" failed).
TEST_CASE("postgres membership: connections dropped by the server are re-established",
          "[cluster][pg_outage]") {
  require_postgres();
  const std::string cluster = unique_cluster("drop");
  auto table = PostgresStore::open_cluster(cluster);
  auto listener = PostgresStore::open_cluster(cluster);
  CHECK(listener->wait_for_change(50ms));  // opens the LISTEN connection: "re-read", as after any (re)connect
  CHECK_FALSE(listener->wait_for_change(50ms));
  write(*table, make_row("10.0.0.1", 11111, 1));
  REQUIRE(listener->wait_for_change(2s));

  {
    pqxx::connection admin{""};
    pqxx::nontransaction tx(admin);
    auto killed = tx.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'silod-membership' AND pid <> pg_backend_pid()");
    REQUIRE(killed.size() >= 2);
  }

  // The first call may learn of the loss (TableUnavailable); the next one reconnects.
  std::optional<MembershipSnapshot> snap;
  for (int attempt = 0; attempt < 2 && !snap; ++attempt) {
    try {
      snap = table->read_all();
    } catch (const TableUnavailable& e) {
      CHECK_THAT(e.what(), Catch::Contains("unreachable") && Catch::Contains("resume when it is back"));
    }
  }
  REQUIRE(snap);
  CHECK(snap->rows.size() == 1);

  // The listener notices without throwing or spinning, and reports "maybe changed" once it is back,
  // since notifications sent meanwhile are lost.
  bool back = false;
  for (int i = 0; i < 5 && !back; ++i) {
    auto start = Clock::now();
    back = listener->wait_for_change(300ms);
    if (!back) CHECK(ms_since(start) >= 250);
  }
  REQUIRE(back);
  CHECK_FALSE(listener->wait_for_change(100ms));
  write(*table, make_row("10.0.0.2", 11111, 1));
  CHECK(listener->wait_for_change(2s));
}

TEST_CASE("postgres membership: an unreachable server throws TableUnavailable promptly", "[cluster]") {
  // Nothing listens on port 1; needs no PostgreSQL at all.
  auto dsn =
      GENERATE(as<std::string>{}, "host=127.0.0.1 port=1 dbname=silo", "postgresql://127.0.0.1:1/silo");
  INFO("dsn " << dsn);
  auto table = make_postgres_table(dsn, "unreachable");
  CHECK(table->describe() == "PostgreSQL at 127.0.0.1:1/silo");
  const std::string expected = "PostgreSQL at 127.0.0.1:1 unreachable: ";
  auto start = Clock::now();
  try {
    table->init();
    FAIL("init() succeeded against a port where nothing listens");
  } catch (const TableUnavailable& e) {
    CHECK_THAT(e.what(), Catch::StartsWith(expected) && Catch::Contains("Connection refused") &&
                             Catch::EndsWith("; membership changes resume when it is back"));
  }
  CHECK_THROWS_WITH(table->read_all(), Catch::StartsWith(expected));
  CHECK_THROWS_AS(table->write_row(make_row("10.0.0.1", 11111, 1), 0), TableUnavailable);
  CHECK_THROWS_AS(table->heartbeat(SiloAddress{"10.0.0.1", 11111, 1}, 1, 1), TableUnavailable);
  CHECK_THROWS_AS(table->cleanup_defunct(1h), TableUnavailable);
  CHECK(ms_since(start) < 5000);

  // The listener neither throws nor spins.
  start = Clock::now();
  CHECK_FALSE(table->wait_for_change(200ms));
  CHECK(ms_since(start) >= 150);
}

TEST_CASE("membership: status and silo address text forms", "[cluster]") {
  for (SiloStatus s :
       {SiloStatus::joining, SiloStatus::active, SiloStatus::shutting_down, SiloStatus::dead}) {
    SiloStatus parsed = SiloStatus::joining;
    CHECK(parse_status(to_string(s), parsed));
    CHECK(parsed == s);
  }
  CHECK(std::string(to_string(SiloStatus::shutting_down)) == "shutting_down");
  SiloStatus out;
  CHECK_FALSE(parse_status("Active", out));
  CHECK_FALSE(parse_status("", out));

  SiloAddress a;
  REQUIRE(parse_silo_address("10.0.0.1:11111@1700000000000", a));
  CHECK(a == SiloAddress{"10.0.0.1", 11111, 1700000000000});
  REQUIRE(parse_silo_address("[::1]:11111@5", a));
  CHECK(a == SiloAddress{"::1", 11111, 5});
  REQUIRE(parse_silo_address("::1:11111@5", a));  // what SiloAddress::str() writes for an IPv6 host
  CHECK(a == SiloAddress{"::1", 11111, 5});
  for (const SiloAddress& want : {SiloAddress{"silo-1.example", 65535, 0}, SiloAddress{"fe80::1", 1, 42}}) {
    SiloAddress got;
    REQUIRE(parse_silo_address(want.str(), got));
    CHECK(got == want);
  }
  for (const char* bad : {"", "host", "host:11111", "host:@5", ":11111@5", "host:0@5", "host:65536@5",
                          "host:11111@", "host:11111@x", "host:11111@5x", "[::1:11111@5", "[::1]11111@5",
                          "[]:1@5", "host:+1@5", "host:-1@5", "host:1@+5"}) {
    INFO("text " << bad);
    CHECK_FALSE(parse_silo_address(bad, a));
  }
}
