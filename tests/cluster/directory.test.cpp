// The grain directory keeps one activation per grain through membership changes. Real silod processes on
// loopback sharing a PostgreSQL membership table (pg_virtualenv, as tests/run.sh provides), and the
// dirgrains test plugin, whose Tracker grain names the activation that answered each call and is placed on
// the silo that receives the first call (so two gateways racing for one grain start two candidates).

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <future>
#include <map>
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

#include "dirgrains.pb.h"
#include "dirgrains.silo.h"
#include "process.hpp"
#include "silo/gateway.grpc.pb.h"

using namespace std::chrono_literals;
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
constexpr auto kViewTimeout = 20s;
const std::string kTracker = "dirtest.Tracker";

std::string unique_cluster(const std::string& what) {
  return silo::test::unique_cluster("dt", what);
}

struct Node {
  std::string name;
  int silo_port = 0;
  int gateway_port = 0;
  std::unique_ptr<SilodProcess> process;
  std::string address() const { return silo::test::loopback_host() + ":" + std::to_string(silo_port); }
  std::string gateway() const { return silo::test::loopback_host() + ":" + std::to_string(gateway_port); }
  bool running() const { return process && process->running(); }
};

class Cluster {
 public:
  explicit Cluster(const std::string& what) : id_(unique_cluster(what)) {
    silo::test::require_postgres("silo_directory_tests");
  }

  Node& node(std::size_t i) { return *nodes_.at(i); }

  void start_nodes(std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      auto n = std::make_unique<Node>();
      n->name = "silo-" + std::to_string(i);
      n->silo_port = fresh_port();
      n->gateway_port = fresh_port();
      n->process = std::make_unique<SilodProcess>(config(*n));
      nodes_.push_back(std::move(n));
    }
    for (auto& n : nodes_) {
      const bool ready = n->process->wait_ready(kReadyTimeout);
      INFO(n->name << " output:\n" << tail(n->process->log()));
      REQUIRE(ready);
    }
    std::string last;
    const bool ok = wait_view(kViewTimeout, &last);
    INFO("cluster views:\n" << last);
    REQUIRE(ok);
  }

  // True once every running node's gateway lists exactly the running nodes as active.
  bool wait_view(milliseconds timeout, std::string* last = nullptr) {
    return wait_until(
        [&] {
          std::set<std::string> expected;
          for (auto& n : nodes_)
            if (n->running()) expected.insert(n->address());
          std::string seen;
          bool all = true;
          for (auto& n : nodes_) {
            if (!n->running()) continue;
            const auto s = cluster_status(n->gateway());
            std::set<std::string> active;
            if (s) {
              for (const auto& silo : s->silos())
                if (silo.status() == "active") active.insert(silo.address());
            }
            seen += n->name + " sees " + std::to_string(active.size()) + " active\n";
            if (active != expected) all = false;
          }
          if (last) *last = seen;
          return all;
        },
        timeout);
  }

  std::int64_t tracker_activations() {
    std::int64_t total = 0;
    for (auto& n : nodes_) {
      if (!n->running()) continue;
      const auto a = activations_of(n->gateway(), kTracker);
      REQUIRE(a >= 0);
      total += a;
    }
    return total;
  }

  std::string logs() {
    std::string out;
    for (auto& n : nodes_)
      if (n->process) out += "---- " + n->name + ":\n" + tail(n->process->log(), 3000) + "\n";
    return out;
  }

 private:
  int fresh_port() {
    for (;;) {
      const int p = silo::test::free_port();
      if (used_.insert(p).second) return p;
    }
  }

  std::string config(const Node& n) const {
    std::ostringstream y;
    y << "cluster:\n"
      << "  id: " << yaml_quote(id_) << "\n"
      << "silo:\n"
      << "  name: " << yaml_quote(n.name) << "\n"
      << "  listen: " << n.address() << "\n"
      << "  threads: 2\n"
      << "  shutdown_timeout: 15s\n"
      << "gateway:\n"
      << "  listen: " << n.gateway() << "\n"
      << "membership:\n"
      << "  provider: postgres\n"  // dsn empty: the PG* environment
      << "plugins:\n"
      << "  dir: " << yaml_quote(SILO_TEST_PLUGIN_DIR) << "\n"
      << "  load: [dirgrains]\n"
      << "  required: true\n"
      << "logging:\n"
      << "  level: info\n";
    return y.str();
  }

  std::string id_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::set<int> used_;
};

std::unique_ptr<silo::Client> client_of(const std::string& gateway) {
  silo::ClientOptions o;
  o.gateways = {gateway};
  o.default_timeout = 30s;
  o.gateway_refresh = 0ms;  // this gateway only: the tests choose which silo receives each call
  return std::make_unique<silo::Client>(std::move(o));
}

struct Hit {
  bool ok = false;
  dirtest::HitReply reply;
  silo::StatusCode code = silo::StatusCode::ok;
  std::string error;
  Clock::time_point at;
};

// A coroutine with by-value parameters rather than a capturing lambda (GCC 12, see router.cpp).
silo::Task<Hit> hit(dirtest::TrackerRef ref, int sleep_ms, std::string then_call, milliseconds timeout) {
  Hit h;
  dirtest::HitRequest req;
  req.set_sleep_ms(sleep_ms);
  req.set_then_call(std::move(then_call));
  silo::CallOptions o;
  o.timeout = timeout;
  try {
    h.reply = co_await ref.Hit(req, o);
    h.ok = true;
  } catch (const silo::Error& e) {
    h.code = e.code();
    h.error = e.what();
  }
  h.at = Clock::now();
  co_return h;
}

}  // namespace

// Defect: with the directory owner of a grain unreachable (killed, not yet declared dead), each silo that
// got a call "activated locally" and kept its copy after the new view: two activations, never merged.
TEST_CASE("owner killed: calls through two gateways during the outage leave one activation per grain",
          "[directory]") {
  Cluster cluster("owner-killed");
  cluster.start_nodes(3);
  auto a = client_of(cluster.node(0).gateway());
  auto b = client_of(cluster.node(1).gateway());

  cluster.node(2).process->signal(SIGKILL);
  REQUIRE(cluster.node(2).process->wait_exit(5s) == std::optional<int>(128 + SIGKILL));

  // Fresh keys, each called at once through both gateways: each silo places the grain on itself, and about
  // a third of the keys hash to the killed silo's directory ranges. The timeout covers failure detection.
  constexpr int kKeys = 12;
  std::vector<std::future<Hit>> first_a, first_b;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "k-" + std::to_string(i);
    first_a.push_back(a->spawn(hit(a->ref<dirtest::TrackerRef>(key), 0, "", 30s)));
    first_b.push_back(b->spawn(hit(b->ref<dirtest::TrackerRef>(key), 0, "", 30s)));
  }
  std::map<int, std::set<std::uint64_t>> seen;  // key -> activations that answered
  std::vector<std::string> failures;
  auto record = [&](int key, const Hit& h, const char* via) {
    if (h.ok)
      seen[key].insert(h.reply.activation());
    else
      failures.push_back("k-" + std::to_string(key) + " via " + via + ": " + h.error);
  };
  for (int i = 0; i < kKeys; ++i) {
    record(i, first_a[i].get(), "silo-0");
    record(i, first_b[i].get(), "silo-1");
  }
  std::string views;
  REQUIRE(cluster.wait_view(kViewTimeout, &views));
  // After the new view: every key again through both gateways.
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "k-" + std::to_string(i);
    record(i, a->wait(hit(a->ref<dirtest::TrackerRef>(key), 0, "", 10s)), "silo-0");
    record(i, b->wait(hit(b->ref<dirtest::TrackerRef>(key), 0, "", 10s)), "silo-1");
  }
  INFO(cluster.logs());
  for (const auto& f : failures)
    UNSCOPED_INFO(f);
  // A call may fail UNAVAILABLE (retryable, never run) when detection outlasts its deadline; none did here.
  CHECK(failures.empty());
  for (int i = 0; i < kKeys; ++i) {
    INFO("k-" << i << " answered by " << seen[i].size() << " activations");
    CHECK(seen[i].size() == 1);
  }
  CHECK(cluster.tracker_activations() == kKeys);
}

// Defect: a shutting-down silo's directory entries were dropped as soon as it announced shutting_down, so
// a call through another gateway started a second copy while the first still ran its last turns.
TEST_CASE("graceful shutdown: no new activation elsewhere while the old one still runs", "[directory]") {
  Cluster cluster("graceful");
  cluster.start_nodes(3);
  auto leaving = client_of(cluster.node(2).gateway());
  auto via_1 = client_of(cluster.node(1).gateway());
  auto via_0 = client_of(cluster.node(0).gateway());
  // Placed on silo-2 (the first call arrives there).
  const Hit warm = leaving->wait(hit(leaving->ref<dirtest::TrackerRef>("g"), 0, "", 10s));
  REQUIRE(warm.ok);
  REQUIRE(activations_of(cluster.node(2).gateway(), kTracker) == 1);
  // A 3 s turn, called through silo-1 (silo-2's gateway would hold its shutdown until the call ends, and
  // the drain would not overlap it).
  auto slow = via_1->spawn(hit(via_1->ref<dirtest::TrackerRef>("g"), 3000, "", 20s));
  // Close our stream to silo-2's gateway first: its drain waits up to 5 s for client streams to end.
  leaving.reset();
  std::this_thread::sleep_for(300ms);
  cluster.node(2).process->signal(SIGTERM);
  // Let silo-0 see silo-2 shutting down (the bug needs that view; the fix must hold under it).
  std::this_thread::sleep_for(1000ms);
  const Hit second = via_0->wait(hit(via_0->ref<dirtest::TrackerRef>("g"), 0, "", 20s));
  const Hit first = slow.get();
  INFO(cluster.logs());
  INFO("first call: " << first.error);
  REQUIRE(first.ok);
  INFO("second call: " << second.error);
  REQUIRE(second.ok);
  CHECK(first.reply.activation() == warm.reply.activation());
  INFO("second by activation " << second.reply.activation() << " hits " << second.reply.hits() << "; first "
                               << first.reply.activation());
  if (second.reply.activation() == first.reply.activation()) {
    // The old activation ran it, after the slow turn (turns of a non-reentrant grain never overlap).
    CHECK(second.reply.hits() == 3);
  } else {
    // A new activation ran it: only once the old one was gone, so after the slow turn ended. Its reply
    // travels through another silo than the second's: 500 ms of slack for delivery on a loaded machine
    // (the defect answered ~1.7 s before the slow turn ended).
    CHECK(second.at + 500ms >= first.at);
  }
  CHECK(cluster.node(2).process->wait_exit(30s) == std::optional<int>(0));
}

// Defect: while a silo drained, every grain-to-grain call failed UNAVAILABLE, including those of the turns
// it was finishing; they should go to other silos.
TEST_CASE("graceful shutdown: a finishing turn's grain-to-grain call goes to another silo", "[directory]") {
  Cluster cluster("drain-calls");
  cluster.start_nodes(3);
  auto leaving = client_of(cluster.node(2).gateway());
  auto via_0 = client_of(cluster.node(0).gateway());
  REQUIRE(leaving->wait(hit(leaving->ref<dirtest::TrackerRef>("caller"), 0, "", 10s)).ok);
  REQUIRE(activations_of(cluster.node(2).gateway(), kTracker) == 1);
  // The turn (called through silo-0, so silo-2's drain starts at once) sleeps through the SIGTERM, then
  // calls a grain that has no activation yet.
  auto running = via_0->spawn(hit(via_0->ref<dirtest::TrackerRef>("caller"), 4000, "callee", 20s));
  // Close our stream to silo-2's gateway first: its drain waits up to 5 s for client streams to end.
  leaving.reset();
  std::this_thread::sleep_for(300ms);
  cluster.node(2).process->signal(SIGTERM);
  // The grains drain while the turn still sleeps: the call it makes next is made during the drain.
  REQUIRE(cluster.node(2).process->wait_log("grains: deactivating", 3000ms));
  REQUIRE(running.wait_for(0s) != std::future_status::ready);
  const Hit h = running.get();
  INFO(cluster.logs());
  INFO("call: " << h.error);
  REQUIRE(h.ok);
  INFO("grain-to-grain call: " << h.reply.called_error());
  CHECK(h.reply.called_code() == 0);
  CHECK(h.reply.called_activation() != 0);
  CHECK(cluster.node(2).process->wait_exit(30s) == std::optional<int>(0));
  // The callee lives on a silo that stays.
  CHECK(activations_of(cluster.node(0).gateway(), kTracker) +
            activations_of(cluster.node(1).gateway(), kTracker) ==
        1);
}

// A silo that dies while draining stays "shutting_down" in the table unless someone declares it dead; the
// directory keeps a shutting-down silo's grains (and waits for its re-registrations), so failure detection
// must cover it, or its grains would never answer again.
TEST_CASE("a silo killed while draining is declared dead and its grains start elsewhere", "[directory]") {
  Cluster cluster("killed-draining");
  cluster.start_nodes(3);
  auto leaving = client_of(cluster.node(2).gateway());
  auto via_1 = client_of(cluster.node(1).gateway());
  auto via_0 = client_of(cluster.node(0).gateway());
  const Hit warm = leaving->wait(hit(leaving->ref<dirtest::TrackerRef>("d"), 0, "", 10s));
  REQUIRE(warm.ok);
  REQUIRE(activations_of(cluster.node(2).gateway(), kTracker) == 1);
  leaving.reset();
  // A long turn keeps silo-2 draining until it is killed.
  auto slow = via_1->spawn(hit(via_1->ref<dirtest::TrackerRef>("d"), 10000, "", 20s));
  std::this_thread::sleep_for(300ms);
  cluster.node(2).process->signal(SIGTERM);
  REQUIRE(cluster.node(2).process->wait_log("grains: deactivating", 5000ms));
  cluster.node(2).process->signal(SIGKILL);
  REQUIRE(cluster.node(2).process->wait_exit(5s) == std::optional<int>(128 + SIGKILL));
  CHECK_FALSE(slow.get().ok);  // its silo died under it

  // Calls to its grain fail (UNAVAILABLE) until failure detection declares it dead, then answer from a new
  // activation. 25 s: detection takes seconds; without it being declared dead they never answer.
  Hit again;
  const auto give_up = Clock::now() + 25s;
  while (!again.ok && Clock::now() < give_up) {
    again = via_0->wait(hit(via_0->ref<dirtest::TrackerRef>("d"), 0, "", 5s));
    if (!again.ok) std::this_thread::sleep_for(200ms);
  }
  INFO(cluster.logs());
  INFO("last call after the kill: " << again.error);
  REQUIRE(again.ok);
  CHECK(again.reply.activation() != warm.reply.activation());
  const Hit fresh = via_1->wait(hit(via_1->ref<dirtest::TrackerRef>("fresh"), 0, "", 25s));
  INFO("fresh grain: " << fresh.error);
  CHECK(fresh.ok);
}
