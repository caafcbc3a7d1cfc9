// Durable grain state and reminders with real silod processes and a real PostgreSQL (the PG* environment:
// pg_virtualenv, as tests/run.sh provides). The grains are teststate.PgCounter (stategrains: a counter
// stored by the "pg" provider) and test.Alarm / test.Probe (testgrains: reminder ticks bump counters of
// the silod process that runs the Alarm activation; Probe reads the counters of the process it runs in).
// Probe and Alarm are placed prefer_local, so a Probe key called through one silo's gateway reads that
// silo's counters. Each case uses its own cluster.id, so cases and runs never see each other's rows.
//
// Without PostgreSQL the cases fail rather than skip: a skipped durability test reads as a pass.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>

#include <silo/client.hpp>
#include <silo/error.hpp>
#include "integration/cluster_admin.hpp"
#include "pg_server.hpp"

#include "process.hpp"
#include "silo/gateway.grpc.pb.h"
#include "stategrains.silo.h"
#include "testgrains.silo.h"

using namespace std::chrono_literals;
using silo::test::run_command;
using silo::test::SilodProcess;
using silo::test::wait_until;
using silo::test::yaml_quote;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace gw = silo::gateway;

namespace {

using silo::test::activations_of;
using silo::test::cluster_status;
using silo::test::tail;

constexpr auto kReadyTimeout = 30s;
constexpr auto kExitTimeout = 30s;

std::int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
}

void require_postgres() {
  silo::test::require_postgres("silo_durable_tests");
}

std::string unique_cluster(const std::string& what) {
  return silo::test::unique_cluster("dt", what);
}

// Distinct across every node of the test process: two nodes handed the same "free" port would fight.
int fresh_port() {
  static std::set<int> used;
  for (;;) {
    const int p = silo::test::free_port();
    if (used.insert(p).second) return p;
  }
}

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size()))
    ++n;
  return n;
}

// ---- silods ----------------------------------------------------------------------------------------------

struct NodeOptions {
  bool cluster = false;       // membership: postgres (else local: a silo of its own)
  bool pg_reminders = false;  // reminders: postgres (else memory)
};

// One silo: fixed ports and a fixed configuration, so start() after a stop or a kill brings up the same
// silo again (a new process, a new generation).
struct Node {
  std::string name;
  int silo_port = 0;
  int gateway_port = 0;
  std::string yaml;
  std::unique_ptr<SilodProcess> process;

  Node(const std::string& cluster_id, std::string node_name, const NodeOptions& o)
      : name(std::move(node_name)) {
    silo_port = fresh_port();
    gateway_port = fresh_port();
    std::ostringstream y;
    y << "cluster:\n"
      << "  id: " << yaml_quote(cluster_id) << "\n"
      << "silo:\n"
      << "  name: " << yaml_quote(name) << "\n"
      << "  listen: " << silo::test::loopback_host() << ":" << silo_port << "\n"
      << "  threads: 2\n"
      << "  shutdown_timeout: 10s\n"
      << "gateway:\n"
      << "  listen: " << gateway() << "\n"
      << "membership:\n"
      << "  provider: " << (o.cluster ? "postgres" : "local") << "\n"
      << "storage:\n"
      << "  pg:\n"
      << "    provider: postgres\n"
      << "reminders:\n"
      << "  provider: " << (o.pg_reminders ? "postgres" : "memory") << "\n"
      << "  min_period: 500ms\n"
      << "  refresh_interval: 500ms\n"
      << "grains:\n"
      << "  types:\n"
      << "    test.Probe: {placement: prefer_local}\n"
      << "    test.Alarm: {placement: prefer_local}\n"
      << "plugins:\n"
      << "  dir: " << yaml_quote(SILO_TEST_PLUGIN_DIR) << "\n"
      << "  load: [stategrains, testgrains]\n"
      << "  required: true\n"
      << "logging:\n"
      << "  level: info\n";
    yaml = y.str();
  }

  std::string gateway() const { return silo::test::loopback_host() + ":" + std::to_string(gateway_port); }
  bool running() const { return process && process->running(); }
  std::string log() const { return process ? process->log() : std::string(); }

  // Starts a new process and waits until it is ready; the previous process (if any) must be gone.
  void start() {
    process = std::make_unique<SilodProcess>(yaml);
    const bool ready = process->wait_ready(kReadyTimeout);
    INFO(name << " output:\n" << tail(process->log()));
    REQUIRE(ready);
  }

  // SIGTERM and a clean exit (0).
  void stop_gracefully() {
    process->signal(SIGTERM);
    const auto code = process->wait_exit(kExitTimeout);
    INFO(name << " output:\n" << tail(process->log()));
    REQUIRE(code.has_value());
    REQUIRE(*code == 0);
  }

  void kill9() {
    process->signal(SIGKILL);
    const auto code = process->wait_exit(10s);
    REQUIRE(code.has_value());
    REQUIRE(*code == 128 + SIGKILL);
  }
};

// A client bound to the given gateways only: no gateway refresh, so calls reach exactly these silos.
std::unique_ptr<silo::Client> client_of(std::vector<std::string> gateways) {
  silo::ClientOptions o;
  o.gateways = std::move(gateways);
  o.default_timeout = 10s;
  o.gateway_refresh = milliseconds(0);
  return std::make_unique<silo::Client>(std::move(o));
}

std::size_t active_silos(const std::string& gateway) {
  const auto s = cluster_status(gateway);
  if (!s) return 0;
  std::size_t n = 0;
  for (const auto& silo : s->silos())
    if (silo.status() == "active") ++n;
  return n;
}

// ---- calls -----------------------------------------------------------------------------------------------

silo::CallOptions timeout(milliseconds t) {
  silo::CallOptions o;
  o.timeout = t;
  return o;
}

teststate::AddRequest add(std::int64_t delta) {
  teststate::AddRequest r;
  r.set_delta(delta);
  return r;
}

// One blocking call's outcome.
template <class T>
struct Result {
  std::optional<T> value;
  silo::StatusCode code = silo::StatusCode::ok;
  std::string error;
  std::int64_t ms = 0;
  bool ok() const { return value.has_value(); }
  std::string describe() const {
    return ok() ? "ok after " + std::to_string(ms) + " ms"
                : std::string(silo::to_string(code)) + " after " + std::to_string(ms) + " ms: " + error;
  }
};

template <class T>
Result<T> call(silo::Client& client, silo::Task<T> task) {
  Result<T> r;
  const auto start = Clock::now();
  try {
    r.value = client.wait(std::move(task));
  } catch (const silo::Error& e) {
    r.code = e.code();
    r.error = e.what();
  }
  r.ms = ms_since(start);
  return r;
}

Result<teststate::Total> add_to(silo::Client& c, const std::string& key, std::int64_t delta,
                                milliseconds t = 10s) {
  return call(c, c.ref<teststate::PgCounterRef>(key).Add(add(delta), timeout(t)));
}

Result<teststate::Total> get_total(silo::Client& c, const std::string& key, milliseconds t = 10s) {
  return call(c, c.ref<teststate::PgCounterRef>(key).Get(teststate::Empty{}, timeout(t)));
}

// The stored total of `key`, read by a call that must succeed.
std::int64_t require_total(silo::Client& c, const std::string& key) {
  const auto r = get_total(c, key);
  INFO("Get(" << key << "): " << r.describe());
  REQUIRE(r.ok());
  return r.value->total();
}

// A counter of the silod process behind the client (Probe `probe_key` must be placed there), or -1.
std::int64_t probe(silo::Client& c, const std::string& probe_key, const std::string& name) {
  test::ProbeRequest req;
  req.set_name(name);
  const auto r = call(c, c.ref<test::ProbeRef>(probe_key).Get(std::move(req), timeout(3s)));
  return r.ok() ? r.value->value() : -1;
}

void set_alarm(silo::Client& c, const std::string& key, const std::string& name, int period_ms) {
  test::AlarmRequest req;
  req.set_name(name);
  req.set_due_ms(0);
  req.set_period_ms(period_ms);
  const auto r = call(c, c.ref<test::AlarmRef>(key).Set(std::move(req), timeout(10s)));
  INFO("Alarm(" << key << ").Set(" << name << "): " << r.describe());
  REQUIRE(r.ok());
}

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The ticks the silod hosting Alarm `key` delivered to it, in delivery order (empty if the call failed).
std::vector<test::TickRecord> ticks_of(silo::Client& c, const std::string& key) {
  const auto r = call(c, c.ref<test::AlarmRef>(key).Ticks(test::Empty{}, timeout(5s)));
  INFO("Alarm(" << key << ").Ticks: " << r.describe());
  CHECK(r.ok());
  if (!r.ok()) return {};
  return {r.value->ticks().begin(), r.value->ticks().end()};
}

std::string describe(const std::vector<test::TickRecord>& log) {
  std::ostringstream out;
  for (const auto& t : log)
    out << "  " << t.name() << " due " << t.due_ms() << " ran " << t.at_ms() << (t.late() ? " late" : "")
        << "\n";
  return out.str();
}

// Never twice: due times strictly increase along the log. (Two silos firing one reminder, or one firing it
// twice, repeat a due time.)
void check_no_tick_twice(const std::vector<test::TickRecord>& log) {
  INFO("ticks:\n" << describe(log));
  for (std::size_t i = 1; i < log.size(); ++i)
    CHECK(log[i].due_ms() > log[i - 1].due_ms());
}

void cancel_alarm(silo::Client& c, const std::string& key, const std::string& name) {
  test::AlarmRequest req;
  req.set_name(name);
  call(c, c.ref<test::AlarmRef>(key).Cancel(std::move(req), timeout(5s)));
}

const std::string unexpected = "unexpected exception: ";

// Concurrent Adds of 1, each caller looping until told to stop or until its first failure (after a kill
// every later call would fail too). `sent` counts calls started, `acked` those that returned a total.
struct Burst {
  std::atomic<bool> stop{false};
  std::atomic<long> sent{0};
  std::atomic<long> acked{0};
  std::atomic<std::int64_t> max_total{0};
  std::mutex mutex;
  std::vector<std::string> errors;
};

// By-value parameters rather than a capturing lambda: GCC 12 mishandles temporaries in co_await
// expressions inside lambda coroutines (see router.cpp).
silo::Task<void> add_loop(teststate::PgCounterRef ref, Burst& b) {
  while (!b.stop.load()) {
    ++b.sent;
    try {
      const teststate::Total t = co_await ref.Add(add(1), timeout(5s));
      ++b.acked;
      std::int64_t seen = b.max_total.load();
      while (t.total() > seen && !b.max_total.compare_exchange_weak(seen, t.total())) {
      }
    } catch (const silo::Error& e) {
      std::lock_guard lock(b.mutex);
      b.errors.push_back(std::string(silo::to_string(e.code())) + ": " + e.what());
      break;
    } catch (const std::exception& e) {
      // Anything but a silo::Error is a bug of the client or the test: recorded, so the test fails on it.
      std::lock_guard lock(b.mutex);
      b.errors.push_back(unexpected + e.what());
      break;
    } catch (...) {
      std::lock_guard lock(b.mutex);
      b.errors.push_back(unexpected + "(not a std::exception)");
      break;
    }
  }
}

// The errors of a burst that are not a silo::Error (there must be none).
std::vector<std::string> unexpected_errors(Burst& b) {
  std::lock_guard lock(b.mutex);
  std::vector<std::string> out;
  for (const auto& e : b.errors)
    if (e.starts_with(unexpected)) out.push_back(e);
  return out;
}

// ---- stopping and starting PostgreSQL --------------------------------------------------------------------

}  // namespace

// ---- state -----------------------------------------------------------------------------------------------

TEST_CASE("state survives deactivation, a graceful restart and kill -9 of its silo", "[cluster][durable]") {
  require_postgres();
  Node node(unique_cluster("state"), "silo-0", {});
  node.start();
  const std::vector<std::string> keys = {"c0", "c1", "c2", "c3"};
  constexpr int kAcked = 50;  // per key: 200 acknowledged Adds in all

  {
    auto client = client_of({node.gateway()});
    for (const auto& key : keys) {
      for (int i = 1; i <= kAcked; ++i) {
        const auto r = add_to(*client, key, 1);
        INFO("Add(" << key << ") #" << i << ": " << r.describe());
        REQUIRE(r.ok());
        REQUIRE(r.value->total() == i);
      }
    }

    // Deactivation: the activations go away and new ones read the stored totals back.
    for (const auto& key : keys)
      REQUIRE(call(*client, client->ref<teststate::PgCounterRef>(key).Deactivate(teststate::Empty{})).ok());
    const bool gone =
        wait_until([&] { return activations_of(node.gateway(), "teststate.PgCounter") == 0; }, 10s);
    INFO("PgCounter activations: " << activations_of(node.gateway(), "teststate.PgCounter"));
    REQUIRE(gone);
    for (const auto& key : keys)
      CHECK(require_total(*client, key) == kAcked);
  }

  // Graceful restart: a new process on the same configuration has the same totals.
  node.stop_gracefully();
  node.start();
  {
    auto client = client_of({node.gateway()});
    for (const auto& key : keys)
      CHECK(require_total(*client, key) == kAcked);
  }

  // kill -9 during a burst of concurrent Adds: every acknowledged Add is stored; nothing more than was sent.
  std::vector<std::unique_ptr<Burst>> bursts;
  {
    auto client = client_of({node.gateway()});
    std::vector<std::future<void>> loops;
    for (const auto& key : keys) {
      bursts.push_back(std::make_unique<Burst>());
      for (int i = 0; i < 4; ++i)
        loops.push_back(client->spawn(add_loop(client->ref<teststate::PgCounterRef>(key), *bursts.back())));
    }
    // Let each key see some acknowledged writes before the kill, so the check below has teeth.
    const bool busy = wait_until(
        [&] {
          return std::all_of(bursts.begin(), bursts.end(),
                             [](const auto& b) { return b->acked.load() >= 20; });
        },
        10s);
    REQUIRE(busy);
    node.kill9();
    for (auto& b : bursts)
      b->stop = true;
    for (auto& f : loops) {
      REQUIRE(f.wait_for(15s) == std::future_status::ready);
      REQUIRE_NOTHROW(f.get());
    }
    for (auto& b : bursts)
      CHECK(unexpected_errors(*b).empty());
  }
  node.start();
  auto client = client_of({node.gateway()});
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const Burst& b = *bursts[i];
    const std::int64_t total = require_total(*client, keys[i]);
    INFO(keys[i] << ": stored " << total << ", sent " << b.sent << ", acknowledged " << b.acked
                 << " (highest acknowledged total " << b.max_total << ")");
    CHECK(total >= kAcked + b.acked);
    CHECK(total >= b.max_total);
    CHECK(total <= kAcked + b.sent);
  }
}

TEST_CASE("PostgreSQL stopped during writes: UNAVAILABLE, silod keeps running, writes resume",
          "[cluster][durable][pg_outage]") {
  require_postgres();
  silo::test::PgServer pg;
  REQUIRE(pg.found());
  Node node(unique_cluster("outage"), "silo-0", {});
  node.start();
  auto client = client_of({node.gateway()});
  const std::string key = "o1";
  REQUIRE(add_to(*client, key, 1).ok());
  REQUIRE(probe(*client, "probe", "alarm:none/none") == 0);

  // Writes in flight while the server goes down.
  Burst burst;
  std::vector<std::future<void>> loops;
  for (int i = 0; i < 3; ++i)
    loops.push_back(client->spawn(add_loop(client->ref<teststate::PgCounterRef>(key), burst)));
  REQUIRE(wait_until([&] { return burst.acked.load() >= 20; }, 10s));
  const bool stopped = pg.stop();
  INFO(pg.describe() << " stop: " << pg.last_output());
  REQUIRE(stopped);
  // The loops end at their first failure; each call has 5 s before the client gives up on it.
  for (auto& f : loops) {
    REQUIRE(f.wait_for(20s) == std::future_status::ready);
    REQUIRE_NOTHROW(f.get());
  }
  {
    std::lock_guard lock(burst.mutex);
    REQUIRE(burst.errors.size() == loops.size());
    for (const auto& e : burst.errors) {
      INFO("a failed Add during the outage: " << e);
      CHECK(e.starts_with(std::string(silo::to_string(silo::StatusCode::unavailable))));
    }
  }

  // With the server down: writes to the active grain and reads that need an activation fail fast with
  // UNAVAILABLE, again and again; the silo stays up and grains without state still answer.
  long failed_writes = 0;
  for (int i = 0; i < 3; ++i) {
    const auto w = add_to(*client, key, 1, 15s);
    INFO("Add during the outage: " << w.describe());
    CHECK(w.code == silo::StatusCode::unavailable);
    CHECK(w.ms < 6000);
    ++failed_writes;
    const auto r = get_total(*client, "o-new-" + std::to_string(i), 15s);
    INFO("Get of an inactive counter during the outage: " << r.describe());
    CHECK(r.code == silo::StatusCode::unavailable);
    CHECK(r.ms < 6000);
  }
  CHECK(node.running());
  CHECK(probe(*client, "probe", "alarm:none/none") == 0);

  // The server returns: writes succeed again (a write whose commit was cut off may still be refused once
  // as stale, which deactivates the grain; the next call then reads the stored state afresh).
  const bool started = pg.start();
  INFO(pg.describe() << " start: " << pg.last_output());
  REQUIRE(started);
  Result<teststate::Total> again;
  const bool resumed = wait_until(
      [&] {
        again = add_to(*client, key, 1, 5s);
        if (!again.ok()) ++failed_writes;
        return again.ok();
      },
      30s);
  INFO("last Add after PostgreSQL returned: " << again.describe() << "\n" << tail(node.log()));
  REQUIRE(resumed);
  CHECK(node.running());

  // Nothing acknowledged was lost and no more was stored than was sent: read back by a fresh activation.
  REQUIRE(call(*client, client->ref<teststate::PgCounterRef>(key).Deactivate(teststate::Empty{})).ok());
  REQUIRE(wait_until([&] { return activations_of(node.gateway(), "teststate.PgCounter") == 0; }, 10s));
  const std::int64_t total = require_total(*client, key);
  const std::int64_t acknowledged = 1 + burst.acked + 1;  // first Add, the burst, the Add that resumed
  const std::int64_t sent = 1 + burst.sent + failed_writes + 1;
  INFO("stored " << total << ", acknowledged " << acknowledged << ", sent " << sent);
  CHECK(total >= acknowledged);
  CHECK(total <= sent);
  CHECK(again.value->total() <= total);
}

// ---- reminders -------------------------------------------------------------------------------------------

TEST_CASE("a reminder keeps firing across a restart of its silo", "[cluster][durable]") {
  require_postgres();
  Node node(unique_cluster("rem-restart"), "silo-0", {.pg_reminders = true});
  node.start();
  const std::string ticks = "alarm:r1/tick";
  {
    auto client = client_of({node.gateway()});
    set_alarm(*client, "r1", "tick", 500);
    const bool firing = wait_until([&] { return probe(*client, "probe", ticks) >= 3; }, 10s);
    INFO("ticks: " << probe(*client, "probe", ticks) << "\n" << tail(node.log()));
    REQUIRE(firing);
  }
  node.stop_gracefully();
  const auto restarted = Clock::now();
  node.start();
  // The new process has never heard of the reminder but from the table: the ticks activate the grain.
  auto client = client_of({node.gateway()});
  const bool resumed = wait_until([&] { return probe(*client, "probe", ticks) >= 3; }, 10s);
  INFO("ticks in the new process: " << probe(*client, "probe", ticks) << " after " << ms_since(restarted)
                                    << " ms\n"
                                    << tail(node.log()));
  REQUIRE(resumed);
  CHECK(probe(*client, "probe", "alarm_activations:r1") >= 1);
  cancel_alarm(*client, "r1", "tick");
}

TEST_CASE("a reminder moves to a survivor when its silo is killed", "[cluster][durable]") {
  require_postgres();
  const std::string cluster_id = unique_cluster("rem-move");
  const NodeOptions opts{.cluster = true, .pg_reminders = true};
  Node a(cluster_id, "silo-a", opts);
  Node b(cluster_id, "silo-b", opts);
  a.start();
  b.start();
  const bool formed =
      wait_until([&] { return active_silos(a.gateway()) == 2 && active_silos(b.gateway()) == 2; }, 15s);
  INFO("a:\n" << tail(a.log()) << "\nb:\n" << tail(b.log()));
  REQUIRE(formed);

  const std::string ticks = "alarm:m1/tick";
  const std::string scheduled = "reminders now scheduled on this silo";
  {
    // Set through a: the Alarm activation (prefer_local) and so its tick counters are a's.
    auto client = client_of({a.gateway()});
    set_alarm(*client, "m1", "tick", 500);
    const bool firing = wait_until([&] { return probe(*client, "probe-a", ticks) >= 3; }, 10s);
    INFO("ticks on a: " << probe(*client, "probe-a", ticks) << "\na:\n"
                        << tail(a.log()) << "\nb:\n"
                        << tail(b.log()));
    REQUIRE(firing);
    check_no_tick_twice(ticks_of(*client, "m1"));
  }
  // The silo owning the grain id's ring range keeps the reminder. The registering silo (a) schedules it
  // at once if it is the owner and says nothing more; otherwise b picks it up on its next refresh and logs
  // that; by now (three 500 ms ticks later) several refreshes have run.
  const bool b_owns = count_of(b.log(), scheduled) > 0;
  const bool a_logged = count_of(a.log(), scheduled) > 0;
  INFO("a:\n" << tail(a.log()) << "\nb:\n" << tail(b.log()));
  REQUIRE(!(a_logged && b_owns));
  Node& owner = b_owns ? b : a;
  Node& survivor = b_owns ? a : b;
  const std::size_t survivor_logged = count_of(survivor.log(), scheduled);

  const auto killed = Clock::now();
  const std::int64_t killed_ms = unix_ms();
  owner.kill9();
  auto client = client_of({survivor.gateway()});
  // The survivor declares the owner dead, takes its ring range and schedules the reminder; the ticks (which
  // reactivate the Alarm on the survivor if it lived on the owner) continue there. Probe "probe-s" lives on
  // the survivor, so it reads the survivor's counters.
  const bool took_over =
      wait_until([&] { return count_of(survivor.log(), scheduled) > survivor_logged; }, 15s);
  INFO(survivor.name << " (survivor):\n"
                     << tail(survivor.log()) << "\n"
                     << owner.name << " (killed):\n"
                     << tail(owner.log()));
  REQUIRE(took_over);
  const std::int64_t at_takeover = std::max<std::int64_t>(0, probe(*client, "probe-s", ticks));
  const bool continued = wait_until([&] { return probe(*client, "probe-s", ticks) >= at_takeover + 3; }, 10s);
  INFO("ticks on the survivor: " << at_takeover << " at takeover, " << probe(*client, "probe-s", ticks)
                                 << " after " << ms_since(killed) << " ms since the kill");
  REQUIRE(continued);
  CHECK(ms_since(killed) < 15'000);
  CHECK(survivor.running());

  // Late, once, never twice. The survivor takes over only after declaring the owner dead (at least
  // missed_probes x probe_interval = 1.5 s, three periods), so its first tick is late; it carries the latest
  // due time, and the schedule goes on from there.
  constexpr std::int64_t period = 500;
  const auto log = ticks_of(*client, "m1");
  INFO("killed at " << killed_ms << "; ticks on the survivor:\n" << describe(log));
  check_no_tick_twice(log);
  std::vector<test::TickRecord> after;
  for (const auto& t : log)
    if (t.at_ms() >= killed_ms) after.push_back(t);
  const auto late = std::find_if(after.begin(), after.end(), [](const auto& t) { return t.late(); });
  REQUIRE(late != after.end());
  CHECK(std::count_if(after.begin(), after.end(), [](const auto& t) { return t.late(); }) == 1);
  // Before the late tick at most one other: a tick the owner sent just before it died.
  CHECK(late - after.begin() <= 1);
  // The latest missed due, not the oldest (those lie at least two periods before the takeover): less than a
  // period before it ran, plus up to a period of delivery delay on a loaded machine.
  CHECK(late->at_ms() - late->due_ms() < 2 * period);
  for (auto t = late; t != after.end(); ++t)
    CHECK((t->due_ms() - late->due_ms()) % period == 0);
  // No extra ticks: due L less than a period before t0, the others at L + k * period, so by t1 at most
  // 2 + (t1 - t0) / period ticks ran from the late one on.
  const std::int64_t t0 = late->at_ms(), t1 = after.back().at_ms();
  CHECK(after.end() - late <= 2 + (t1 - t0) / period);
  cancel_alarm(*client, "m1", "tick");
}

// ---- two activations racing ------------------------------------------------------------------------------

// Two silods with the same cluster.id but local membership do not know of each other: a split brain, each
// with its own activation of the same counter on the same stored record. The etag fencing must let exactly
// one write win.
TEST_CASE("two activations of one grain on two silos race: one write wins, the other is aborted",
          "[cluster][durable]") {
  require_postgres();
  const std::string cluster_id = unique_cluster("race");
  Node a(cluster_id, "silo-a", {});
  Node b(cluster_id, "silo-b", {});
  a.start();
  b.start();
  auto ca = client_of({a.gateway()});
  auto cb = client_of({b.gateway()});
  const std::string key = "r1";

  REQUIRE(add_to(*ca, key, 5).ok());
  REQUIRE(require_total(*cb, key) == 5);  // b's activation read the state a wrote
  const auto won = add_to(*ca, key, 1);   // a moves the stored state on; b's etag is now stale
  REQUIRE(won.ok());
  REQUIRE(won.value->total() == 6);

  const auto lost = add_to(*cb, key, 10);
  INFO("b's stale Add: " << lost.describe());
  REQUIRE(lost.code == silo::StatusCode::aborted);
  // The loser's activation is gone, so it can never overwrite newer state.
  const bool gone = wait_until([&] { return activations_of(b.gateway(), "teststate.PgCounter") == 0; }, 10s);
  CHECK(gone);
  // The stored state is the winner's, as both silos read it (b through a fresh activation).
  CHECK(require_total(*cb, key) == 6);
  CHECK(require_total(*ca, key) == 6);
  // The new activation on b writes on top of the winner's state; now a's activation is the stale one.
  const auto b_again = add_to(*cb, key, 10);
  REQUIRE(b_again.ok());
  CHECK(b_again.value->total() == 16);
  CHECK(add_to(*ca, key, 1).code == silo::StatusCode::aborted);
  CHECK(require_total(*ca, key) == 16);
}
