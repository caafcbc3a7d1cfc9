// At most once through the gateway: a real silod, the C++ client, and a TCP proxy on loopback that loses
// the gateway's answers. The client may resend only calls that never left it; every failure says whether
// the call ran (silo::CallError::outcome(), Result.not_run, and `silo-outcome` trailing metadata for plain
// gRPC clients).

#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>

#include <silo/client.hpp>
#include <silo/error.hpp>

#include "bench.pb.h"
#include "bench.silo.h"
#include "iot.pb.h"
#include "iot.silo.h"
#include "process.hpp"
#include "tcp_proxy.hpp"

using namespace std::chrono_literals;
using silo::test::SilodConfig;
using silo::test::SilodProcess;
using silo::test::TcpProxy;
using silo::test::wait_until;

namespace {

// "HOST:PORT" of the gateway.listen line of a silod_config() text.
std::string gateway_address(const std::string& config) {
  const auto section = config.find("\ngateway:\n");
  REQUIRE(section != std::string::npos);
  const std::string key = "listen: ";
  const auto at = config.find(key, section);
  REQUIRE(at != std::string::npos);
  const auto begin = at + key.size();
  return config.substr(begin, config.find('\n', begin) - begin);
}

int port_of(const std::string& address) {
  return std::stoi(address.substr(address.rfind(':') + 1));
}

struct Silo {
  std::unique_ptr<SilodProcess> process;
  std::string gateway;
};

// One silod serving the bench grains (not iot: calls to iot grains are refused, not run).
Silo start_silo() {
  SilodConfig c;
  c.plugins_dir = SILO_PLUGIN_DIR;
  c.load = {"bench"};
  c.silo_name = "resend-test";
  c.log_level = "warn";
  const std::string config = silod_config(c);
  Silo s{std::make_unique<SilodProcess>(config), gateway_address(config)};
  const bool ready = s.process->wait_ready(30s);
  INFO("silod output:\n" << s.process->log());
  REQUIRE(ready);
  return s;
}

std::unique_ptr<silo::Client> make_client(std::vector<std::string> gateways) {
  silo::ClientOptions o;
  o.gateways = std::move(gateways);
  o.default_timeout = 10s;
  o.gateway_refresh = 0ms;  // only the listed gateways, in order: the proxy first
  return std::make_unique<silo::Client>(std::move(o));
}

bench::AddRequest add(std::int64_t delta) {
  bench::AddRequest r;
  r.set_delta(delta);
  return r;
}

std::int64_t total_of(silo::Client& client, const std::string& key) {
  return client.wait(client.ref<bench::CounterRef>(key).Get(bench::Empty{})).total();
}

struct PlainResult {
  grpc::StatusCode code;
  std::string outcome;  // the silo-outcome trailing metadata ("" when absent)
};

// One plain gRPC call (GenericStub), as a Python or Go client would make it.
PlainResult plain_call(const std::string& gateway, const std::string& method, const std::string& payload,
                       const std::optional<std::string>& key) {
  grpc::GenericStub stub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  if (key) ctx.AddMetadata("silo-key", *key);
  grpc::Slice slice(payload);
  grpc::ByteBuffer request(&slice, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  PlainResult r{status.error_code(), {}};
  const auto& trailing = ctx.GetServerTrailingMetadata();
  if (auto it = trailing.find("silo-outcome"); it != trailing.end())
    r.outcome.assign(it->second.data(), it->second.size());
  return r;
}

}  // namespace

TEST_CASE("a gateway whose headers never arrive: the call is resent elsewhere and runs once", "[resend]") {
  Silo silo = start_silo();
  // The proxy lets HTTP/2 settle but never delivers the gateway's HEADERS (nor any answer), then cuts.
  TcpProxy proxy(silo::test::loopback_host(), 0, silo::test::loopback_host(), port_of(silo.gateway));
  proxy.withhold_responses(true);
  std::thread cutter([&] {
    // The gateway answers a new stream with HEADERS at once: once one was withheld, wait a little for
    // any call the client would (wrongly) send, then cut.
    wait_until([&] { return proxy.withheld() > 0; }, 10s);
    std::this_thread::sleep_for(1s);
    proxy.cut();
  });
  auto client = make_client({proxy.address(), silo.gateway});
  std::int64_t total = -1;
  std::string error;
  try {
    total = client->wait(client->ref<bench::CounterRef>("once").Add(add(1))).total();
  } catch (const silo::Error& e) {
    error = e.what();
  }
  cutter.join();
  INFO("error: " << error << "\nsilod output:\n" << silo.process->log());
  CHECK(proxy.withheld() > 0);  // the proxy did withhold the gateway's headers
  // Resent to the second gateway because it never left the client; it ran exactly once.
  CHECK(total == 1);
  CHECK(total_of(*client, "once") == 1);
}

TEST_CASE("a gateway cut after it ran the call: may-have-run, not resent", "[resend]") {
  Silo silo = start_silo();
  TcpProxy proxy(silo::test::loopback_host(), 0, silo::test::loopback_host(), port_of(silo.gateway));
  auto client = make_client({proxy.address(), silo.gateway});
  auto direct = make_client({silo.gateway});
  auto counter = client->ref<bench::CounterRef>("lost");
  REQUIRE(client->wait(counter.Add(add(1))).total() == 1);  // the stream through the proxy is up

  proxy.withhold_responses(true);
  auto pending = client->spawn(counter.Add(add(1)));
  // The gateway ran it (the total moved), but its answer is withheld; then the connection breaks.
  const bool ran = wait_until([&] { return total_of(*direct, "lost") == 2; }, 10s);
  proxy.cut();
  REQUIRE(ran);
  std::optional<silo::Outcome> outcome;
  silo::StatusCode code = silo::StatusCode::ok;
  try {
    pending.get();
  } catch (const silo::CallError& e) {
    outcome = e.outcome();
    code = e.code();
  }
  REQUIRE(outcome.has_value());
  CHECK(*outcome == silo::Outcome::may_have_run);
  CHECK(code == silo::StatusCode::unavailable);
  std::this_thread::sleep_for(300ms);
  CHECK(total_of(*direct, "lost") == 2);  // not resent
}

TEST_CASE("refusals before a grain runs are reported not-run, to the C++ client and to plain gRPC",
          "[resend]") {
  Silo silo = start_silo();
  auto client = make_client({silo.gateway});

  SECTION("C++ client: a grain type this silo does not serve") {
    std::optional<silo::Outcome> outcome;
    try {
      iot::Target t;
      client->wait(client->ref<iot::ThermostatRef>("t1").SetTarget(t));
    } catch (const silo::CallError& e) {
      outcome = e.outcome();
      CHECK(e.code() == silo::StatusCode::unimplemented);
    }
    REQUIRE(outcome.has_value());
    CHECK(*outcome == silo::Outcome::not_run);
    CHECK(silo::outcome_of(silo::CallError(silo::StatusCode::unknown, "x", silo::Outcome::not_run)) ==
          silo::Outcome::not_run);
    CHECK(silo::outcome_of(silo::Error(silo::StatusCode::unknown, "x")) == silo::Outcome::may_have_run);
  }
  SECTION("plain gRPC: silo-outcome trailing metadata") {
    bench::AddRequest one = add(1);
    const auto unknown = plain_call(silo.gateway, "/bench.Counter/Nope", one.SerializeAsString(), "k");
    CHECK(unknown.code == grpc::StatusCode::UNIMPLEMENTED);
    CHECK(unknown.outcome == "not-run");
    const auto no_key = plain_call(silo.gateway, "/bench.Counter/Add", one.SerializeAsString(), std::nullopt);
    CHECK(no_key.code == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(no_key.outcome == "not-run");
    const auto garbage = plain_call(silo.gateway, "/bench.Counter/Add", "\xff\xff\xff", "k");
    CHECK(garbage.code == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(garbage.outcome == "not-run");
    const auto ok = plain_call(silo.gateway, "/bench.Counter/Add", one.SerializeAsString(), "k");
    CHECK(ok.code == grpc::StatusCode::OK);
    CHECK(total_of(*client, "k") == 1);  // only the well-formed call ran
  }
}
