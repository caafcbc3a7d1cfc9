// Reminder guarantees with real silod processes sharing a real PostgreSQL (pg_virtualenv): a reminder fires
// even when the silo whose ring range holds its grain id does not load the grain's type, and a reminder
// unregistered from inside its own tick ticks no more, wherever the activation and the reminder's keeper run.
// The grain is testreminders.Ticker (tests/plugins/remindergrains.*): it counts its ticks in durable state.

#include <unistd.h>

#include <chrono>
#include <memory>
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
#include "remindergrains.silo.h"
#include "silo/gateway.grpc.pb.h"

using namespace std::chrono_literals;
using silo::test::SilodProcess;
using silo::test::wait_until;
using silo::test::yaml_quote;
using std::chrono::milliseconds;

namespace {

constexpr int kPeriodMs = 500;  // reminders.min_period below
// Long against the period on purpose: a keeper that missed an unregister only learns of it on this refresh,
// so a stale schedule would tick several times before it.
constexpr const char* kRefresh = "4s";

std::string unique_cluster(const std::string& what) {
  return silo::test::unique_cluster("rg", what);
}

int fresh_port() {
  static std::set<int> used;
  for (;;) {
    const int p = silo::test::free_port();
    if (used.insert(p).second) return p;
  }
}

struct Node {
  int gateway_port = fresh_port();
  std::unique_ptr<SilodProcess> process;

  Node(const std::string& cluster_id, const std::string& name, const std::string& plugins) {
    std::ostringstream y;
    y << "cluster:\n  id: " << yaml_quote(cluster_id) << "\n"
      << "silo:\n  name: " << yaml_quote(name) << "\n  listen: " << silo::test::loopback_host() << ":"
      << fresh_port() << "\n  threads: 2\n  shutdown_timeout: 10s\n"
      << "gateway:\n  listen: " << gateway() << "\n"
      << "membership:\n  provider: postgres\n"
      << "storage:\n  pg:\n    provider: postgres\n"
      << "reminders:\n  provider: postgres\n  min_period: " << kPeriodMs
      << "ms\n  refresh_interval: " << kRefresh << "\n"
      << "plugins:\n  dir: " << yaml_quote(SILO_TEST_PLUGIN_DIR) << "\n  load: [" << plugins
      << "]\n  required: true\n"
      << "logging:\n  level: info\n";
    process = std::make_unique<SilodProcess>(y.str());
    const bool ready = process->wait_ready(30s);
    INFO(name << " output:\n" << process->log());
    REQUIRE(ready);
  }
  ~Node() {
    if (process && process->running()) {
      process->signal(SIGTERM);
      process->wait_exit(20s);
    }
  }
  std::string gateway() const { return silo::test::loopback_host() + ":" + std::to_string(gateway_port); }
};

std::size_t active_silos(const std::string& gateway) {
  namespace gw = silo::gateway;
  auto stub = gw::Gateway::NewStub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  gw::ClusterStatus out;
  if (!stub->Status(&ctx, gw::StatusRequest{}, &out).ok()) return 0;
  std::size_t n = 0;
  for (const auto& s : out.silos())
    if (s.status() == "active") ++n;
  return n;
}

std::unique_ptr<silo::Client> client_of(std::vector<std::string> gateways) {
  silo::ClientOptions o;
  o.gateways = std::move(gateways);
  o.default_timeout = 10s;
  o.gateway_refresh = milliseconds(0);
  return std::make_unique<silo::Client>(std::move(o));
}

void start_ticker(silo::Client& c, const std::string& key, std::int64_t stop_after) {
  testreminders::StartRequest req;
  req.set_name("tick");
  req.set_period_ms(kPeriodMs);
  req.set_stop_after(stop_after);
  try {
    c.wait(c.ref<testreminders::TickerRef>(key).Start(req));
  } catch (const silo::Error& e) {
    FAIL("Ticker(" << key << ").Start: " << e.what());
  }
}

// The ticks `key` counted, or -1 when the call failed.
std::int64_t ticks(silo::Client& c, const std::string& key) {
  try {
    return c.wait(c.ref<testreminders::TickerRef>(key).Ticks(testreminders::Empty{})).ticks();
  } catch (const silo::Error&) {
    return -1;
  }
}

std::vector<std::string> keys(const std::string& prefix, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i)
    out.push_back(prefix + std::to_string(i));
  return out;
}

}  // namespace

TEST_CASE("a reminder fires though the silo owning its ring range does not load the grain type",
          "[cluster][reminders][guarantees]") {
  silo::test::require_postgres("silo_reminder_guarantee_tests");
  const std::string cluster = unique_cluster("foreign");
  Node a(cluster, "loads-ticker", "stategrains, remindergrains");
  Node b(cluster, "no-ticker", "stategrains");
  REQUIRE(wait_until([&] { return active_silos(a.gateway()) == 2 && active_silos(b.gateway()) == 2; }, 30s));

  // 16 grain ids: with two silos on the ring, each id's range is b's with probability ~1/2, so some are.
  auto client = client_of({a.gateway()});
  const auto ids = keys("foreign", 16);
  for (const auto& k : ids)
    start_ticker(*client, k, 0);

  // Registration picks up a reminder at once on its keeper, or at the next refresh (4 s) elsewhere; two
  // ticks 500 ms apart follow. 20 s leaves room for a loaded machine.
  std::vector<std::string> silent;
  wait_until(
      [&] {
        silent.clear();
        for (const auto& k : ids)
          if (ticks(*client, k) < 2) silent.push_back(k);
        return silent.empty();
      },
      20s);
  INFO("no-ticker's log:\n" << b.process->log());
  INFO("ids that did not tick twice: " << silent.size());
  CHECK(silent.empty());
}

TEST_CASE("a reminder unregistered inside its own tick ticks no more", "[cluster][reminders][guarantees]") {
  silo::test::require_postgres("silo_reminder_guarantee_tests");
  const std::string cluster = unique_cluster("unregister");
  Node a(cluster, "a", "stategrains, remindergrains");
  Node b(cluster, "b", "stategrains, remindergrains");
  REQUIRE(wait_until([&] { return active_silos(a.gateway()) == 2 && active_silos(b.gateway()) == 2; }, 30s));

  // Activations and reminder keepers land on either silo, so some ids tick across silos.
  auto client = client_of({a.gateway(), b.gateway()});
  const auto ids = keys("once", 8);
  for (const auto& k : ids)
    start_ticker(*client, k, 2);  // the second tick unregisters

  REQUIRE(wait_until(
      [&] {
        for (const auto& k : ids)
          if (ticks(*client, k) < 2) return false;
        return true;
      },
      20s));
  // Six periods, and past a refresh: a schedule that outlived its unregister would have ticked by now.
  std::this_thread::sleep_for(milliseconds(6 * kPeriodMs) + 2s);
  for (const auto& k : ids) {
    INFO(k);
    CHECK(ticks(*client, k) == 2);
  }
}
