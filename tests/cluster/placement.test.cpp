// Placement end to end: three silod processes on loopback sharing a PostgreSQL membership table (the PG*
// environment: pg_virtualenv), with the sdkgrains plugin. Every placement grain answers with the process
// id of the silo that runs it, so a test sees where each key was placed. Covered: a plugin's placement
// director named by a grain type's placement_director option, hash, random and activation_count.
//
// The policies that draw at random are checked with bounds several standard deviations from their
// expected values (stated at each check), so a correct build fails them with negligible probability while
// the broken behaviour they guard against fails them with high probability.

#include <unistd.h>

#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>

#include <silo/client.hpp>
#include <silo/error.hpp>
#include "integration/cluster_admin.hpp"
#include "pg_server.hpp"

#include "process.hpp"
#include "sdkgrains.silo.h"
#include "silo/gateway.grpc.pb.h"

using namespace std::chrono_literals;
using silo::test::SilodProcess;
using silo::test::wait_until;
using silo::test::yaml_quote;
using std::chrono::milliseconds;

namespace gw = silo::gateway;

namespace {

using silo::test::activations_of;
using silo::test::cluster_status;
using silo::test::tail;

struct Node {
  int silo_port = 0;
  int gateway_port = 0;
  std::unique_ptr<SilodProcess> process;
  std::string address() const { return silo::test::loopback_host() + ":" + std::to_string(silo_port); }
  std::string gateway() const { return silo::test::loopback_host() + ":" + std::to_string(gateway_port); }
};

// Three silos with the sdkgrains plugin; loads are published every second (placement by activation count
// reads them from the membership view).
class Cluster {
 public:
  explicit Cluster(const std::string& what) {
    silo::test::require_postgres("silo_placement_tests");
    id_ = "pt-" + what + "-" + std::to_string(::getpid()) + "-" +
          std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
    std::set<int> used;
    auto fresh = [&] {
      for (;;)
        if (int p = silo::test::free_port(); used.insert(p).second) return p;
    };
    for (int i = 0; i < 3; ++i) {
      nodes_.push_back(Node{fresh(), fresh(), nullptr});
      nodes_.back().process = std::make_unique<SilodProcess>(config(i));
    }
    for (auto& n : nodes_) {
      const bool ready = n.process->wait_ready(30s);
      INFO(tail(n.process->log()));
      REQUIRE(ready);
    }
    std::string seen;
    const bool view = wait_until(
        [&] {
          seen.clear();
          bool all = true;
          for (auto& n : nodes_) {
            const auto s = cluster_status(n.gateway());
            int active = 0;
            if (s)
              for (const auto& silo : s->silos())
                active += silo.status() == "active";
            seen += n.gateway() + ": " + std::to_string(active) + " active\n";
            all = all && active == 3;
          }
          return all;
        },
        15s);
    INFO(seen << logs());
    REQUIRE(view);
  }

  Node& node(std::size_t i) { return nodes_.at(i); }
  // The index of the node whose process is `pid`, or -1.
  int node_of(std::int64_t pid) const {
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (nodes_[i].process->pid() == pid) return static_cast<int>(i);
    return -1;
  }
  std::unique_ptr<silo::Client> client(std::size_t i) {
    silo::ClientOptions o;
    o.gateways = {node(i).gateway()};
    o.default_timeout = 10s;
    return std::make_unique<silo::Client>(std::move(o));
  }
  std::string logs() const {
    std::string out;
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      out += "---- silo-" + std::to_string(i) + ":\n" + tail(nodes_[i].process->log(), 2500) + "\n";
    return out;
  }

 private:
  std::string config(int i) const {
    const Node& n = nodes_.at(i);
    std::ostringstream y;
    y << "cluster:\n  id: " << yaml_quote(id_) << "\n"
      << "silo:\n  name: silo-" << i << "\n  listen: " << n.address() << "\n  threads: 2\n"
      << "gateway:\n  listen: " << n.gateway() << "\n"
      << "membership:\n  provider: postgres\n  i_am_alive_interval: 1s\n  poll_interval: 1s\n"
      << "plugins:\n  dir: " << yaml_quote(SILO_TEST_PLUGIN_DIR)
      << "\n  load: [sdkgrains]\n  required: true\n"
      << "logging:\n  level: info\n";
    return y.str();
  }

  std::string id_;
  std::vector<Node> nodes_;
};

// Which node runs grain `key` of `Ref`, calling it through `client`.
template <class Ref>
int placed_on(Cluster& cluster, silo::Client& client, const std::string& key) {
  const sdk::Ident id = client.wait(client.ref<Ref>(key).Whoami(sdk::Empty{}));
  REQUIRE(id.key() == key);
  const int n = cluster.node_of(id.pid());
  REQUIRE(n >= 0);
  return n;
}

bool no_activations(Cluster& cluster, const std::string& type) {
  for (int i = 0; i < 3; ++i)
    if (activations_of(cluster.node(i).gateway(), type) != 0) return false;
  return true;
}

}  // namespace

TEST_CASE("a plugin's placement director, named by the grain type, decides where its grains go",
          "[cluster][placement]") {
  Cluster cluster("director");
  std::vector<std::unique_ptr<silo::Client>> clients;
  for (int i = 0; i < 3; ++i)
    clients.push_back(cluster.client(i));
  // Key "<silo port of node j>/<n>": the director "by_port" picks node j. The call enters through a gateway
  // that is mostly another node, so the silo that places the grain is not the one it must land on. Random
  // placement would pass all 15 with probability 3^-15.
  int placed = 0;
  for (int j = 0; j < 3; ++j) {
    for (int n = 0; n < 5; ++n) {
      const std::string key = std::to_string(cluster.node(j).silo_port) + "/" + std::to_string(n);
      auto& client = *clients[(j + 1 + n) % 3];
      const int on = placed_on<sdk::DirectedRef>(cluster, client, key);
      INFO("key " << key << " via " << (j + 1 + n) % 3 << " landed on node " << on << "\n" << cluster.logs());
      CHECK(on == j);
      placed += on == j;
    }
  }
  CHECK(placed == 15);
  // A key the director declines (index out of range) is placed by the default policy: served, no error.
  for (int n = 0; n < 6; ++n)
    placed_on<sdk::DirectedRef>(cluster, *clients[n % 3], "no-port-" + std::to_string(n));
}

TEST_CASE("hash placement: a key lands on the same silo whichever silo places it, and keys spread",
          "[cluster][placement]") {
  Cluster cluster("hash");
  std::vector<std::unique_ptr<silo::Client>> clients;
  for (int i = 0; i < 3; ++i)
    clients.push_back(cluster.client(i));
  constexpr int kKeys = 30;
  std::vector<int> first(kKeys);
  std::map<int, int> per_node;
  for (int k = 0; k < kKeys; ++k) {
    first[k] = placed_on<sdk::HashPlacedRef>(cluster, *clients[k % 3], "h-" + std::to_string(k));
    ++per_node[first[k]];
  }
  // Spread: a silo gets none of 30 keys with probability 3 * (2/3)^30 ~ 1.5e-5.
  INFO("keys per node: " << per_node[0] << " " << per_node[1] << " " << per_node[2]);
  CHECK(per_node.size() == 3);

  // Deactivate all, then place every key again from a silo that did not place it before (and so holds no
  // cached location for it). Placement at random would agree on all 30 with probability 3^-30.
  for (int k = 0; k < kKeys; ++k)
    clients[k % 3]->wait(clients[k % 3]->ref<sdk::HashPlacedRef>("h-" + std::to_string(k)).Deactivate({}));
  REQUIRE(wait_until([&] { return no_activations(cluster, "sdk.HashPlaced"); }, 15s));
  int same = 0;
  for (int k = 0; k < kKeys; ++k) {
    const int again = placed_on<sdk::HashPlacedRef>(cluster, *clients[(k + 1) % 3], "h-" + std::to_string(k));
    INFO("h-" << k << ": first on node " << first[k] << ", then on node " << again);
    CHECK(again == first[k]);
    same += again == first[k];
  }
  CHECK(same == kKeys);
}

TEST_CASE("random placement spreads keys placed by one silo over all silos", "[cluster][placement]") {
  Cluster cluster("random");
  auto client = cluster.client(0);
  constexpr int kKeys = 60;
  std::map<int, int> per_node;
  for (int k = 0; k < kKeys; ++k)
    ++per_node[placed_on<sdk::RandomPlacedRef>(cluster, *client, "r-" + std::to_string(k))];
  // Each node's count is Binomial(60, 1/3): mean 20, sd 3.7. Fewer than 5 is 4 sd below the mean; a policy
  // that keeps grains on the placing silo puts all 60 on node 0.
  INFO("keys per node: " << per_node[0] << " " << per_node[1] << " " << per_node[2]);
  for (int i = 0; i < 3; ++i)
    CHECK(per_node[i] >= 5);
}

TEST_CASE("activation_count placement sends a burst of new grains mostly to the emptier silos",
          "[cluster][placement]") {
  Cluster cluster("count");
  // Load node 0 with 150 prefer-local activations and wait until every silo's view shows that load.
  constexpr int kLoad = 150;
  {
    auto client = cluster.client(0);
    for (int k = 0; k < kLoad; ++k)
      REQUIRE(placed_on<sdk::LocalPlacedRef>(cluster, *client, "load-" + std::to_string(k)) == 0);
  }
  std::string seen;
  const bool published = wait_until(
      [&] {
        seen.clear();
        bool all = true;
        for (int i = 0; i < 3; ++i) {
          const auto s = cluster_status(cluster.node(i).gateway());
          bool loaded = false;
          if (s)
            for (const auto& silo : s->silos())
              if (silo.address() == cluster.node(0).address() && silo.activations() >= kLoad) loaded = true;
          seen += "node " + std::to_string(i) + (loaded ? " sees" : " does not see") + " the load\n";
          all = all && loaded;
        }
        return all;
      },
      20s);
  INFO(seen);
  REQUIRE(published);

  // 120 new grains, placed by all three silos. Two random choices pick node 0 only when both draws are
  // node 0: expected 120/9 = 13.3 (sd 3.4); at most 30 is 4.9 sd above that. Random placement would put
  // 40 there (sd 5.2), and a policy that ignored load or preferred the loaded silo more.
  constexpr int kBurst = 120;
  std::vector<std::unique_ptr<silo::Client>> clients;
  for (int i = 0; i < 3; ++i)
    clients.push_back(cluster.client(i));
  std::map<int, int> per_node;
  for (int k = 0; k < kBurst; ++k)
    ++per_node[placed_on<sdk::CountPlacedRef>(cluster, *clients[k % 3], "c-" + std::to_string(k))];
  INFO("burst per node: " << per_node[0] << " " << per_node[1] << " " << per_node[2]);
  CHECK(per_node[0] <= 30);
  CHECK(per_node[0] < per_node[1]);
  CHECK(per_node[0] < per_node[2]);
}

TEST_CASE("one-way calls through a gateway to a grain on another silo return at once and run there",
          "[cluster][placement]") {
  Cluster cluster("oneway");
  auto client = cluster.client(0);
  // The Sdk grain and the Control grain that reads its counters both land on node 2 (director "by_port").
  const std::string port = std::to_string(cluster.node(2).silo_port);
  const auto control = client->ref<sdk::ControlRef>(port + "/control");
  auto counter = [&](const std::string& name) {
    sdk::Name n;
    n.set_name(name);
    return client->wait(control.Get(n)).value();
  };
  auto gate = [](const std::string& name) {
    sdk::Name n;
    n.set_name(name);
    return n;
  };
  // Hold waits for its gate (up to 20 s); the test opens it only after the caller got its answer, so a
  // caller that waited for the call would not be answered within 5 s.
  const std::string by_option = port + "/by-option";
  const std::string by_method = port + "/by-method";
  silo::CallOptions one_way;
  one_way.one_way = true;
  auto a = client->spawn(client->ref<sdk::SdkRef>(by_option).Hold(gate("g-option"), one_way));
  auto b = client->spawn(client->ref<sdk::SdkRef>(by_method).HoldOneWay(gate("g-method")));
  REQUIRE(a.wait_for(5s) == std::future_status::ready);
  REQUIRE(b.wait_for(5s) == std::future_status::ready);
  a.get();
  b.get();
  INFO(cluster.logs());
  REQUIRE(wait_until([&] { return counter("hold_started:" + by_option) == 1; }, 10s));
  REQUIRE(wait_until([&] { return counter("hold_started:" + by_method) == 1; }, 10s));
  CHECK(counter("hold_done:" + by_option) == 0);
  CHECK(counter("hold_done:" + by_method) == 0);
  client->wait(control.Open(gate("g-option")));
  client->wait(control.Open(gate("g-method")));
  CHECK(wait_until([&] { return counter("hold_done:" + by_option) == 1; }, 10s));
  CHECK(wait_until([&] { return counter("hold_done:" + by_method) == 1; }, 10s));
  // They ran on node 2, where the director put them (and where the counters were read).
  CHECK(placed_on<sdk::SdkRef>(cluster, *client, by_option) == 2);
  CHECK(placed_on<sdk::SdkRef>(cluster, *client, by_method) == 2);
}
