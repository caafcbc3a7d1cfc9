// Integration tests of the gateway and its clients, against real silod processes on loopback ports: the C++
// client (round trips, concurrency, failover), plain gRPC (status codes, health, reflection, shutdown), a
// Python client generated from iot.proto at test time, and siloctl.
//
// Most test cases share one silod (shared_silo()); those that stop or kill silods start their own.

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>
#include <silo/client.hpp>
#include <silo/error.hpp>

#include <google/protobuf/descriptor.pb.h>

#include "bench.pb.h"
#include "bench.silo.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "integration/process.hpp"
#include "iot.pb.h"
#include "iot.silo.h"
#include "pg_server.hpp"
#include "silo/gateway.grpc.pb.h"

using namespace std::chrono_literals;
using silo::test::CommandResult;
using silo::test::run_command;
using silo::test::silod_config;
using silo::test::SilodConfig;
using silo::test::SilodProcess;

namespace fs = std::filesystem;
namespace gw = silo::gateway;
namespace rv = grpc::reflection::v1alpha;

namespace {

constexpr auto kReadyTimeout = 15s;
constexpr auto kExitTimeout = 10s;
constexpr auto kCallTimeout = 10s;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

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

// A silod_config() with `lines` added to its gateway section.
std::string with_gateway_settings(std::string config, const std::string& lines) {
  const auto at = config.find("\ngateway:\n");
  REQUIRE(at != std::string::npos);
  config.insert(at + std::string("\ngateway:\n").size(), lines);
  return config;
}

// A running silod and the address of its gateway.
struct Silo {
  std::unique_ptr<SilodProcess> process;
  std::string gateway;
  std::string name;
};

// Starts a silod serving the iot and bench grains, with gateway.max_message_size 64KiB; `extra` is appended
// to its configuration (more top-level sections), `cluster_id` is its cluster.id.
Silo start_silo(const std::string& name, const std::string& shutdown_timeout = "5s",
                const std::string& extra = "", const std::string& cluster_id = "test") {
  SilodConfig c;
  c.plugins_dir = SILO_PLUGIN_DIR;
  c.load = {"iot", "bench"};
  c.silo_name = name;
  c.shutdown_timeout = shutdown_timeout;
  c.log_level = "warn";
  c.extra = extra;
  c.cluster_id = cluster_id;
  const std::string config = with_gateway_settings(silod_config(c), "  max_message_size: 64KiB\n");
  Silo s{std::make_unique<SilodProcess>(config), gateway_address(config), name};
  const bool ready = s.process->wait_ready(kReadyTimeout);
  INFO("silod output:\n" << s.process->log());
  REQUIRE(ready);
  return s;
}

// The silod shared by the test cases that leave it running; started by the first one that needs it.
const Silo& shared_silo() {
  static std::optional<Silo> silo;
  if (!silo) silo = start_silo("gateway-test-silo");
  INFO("shared silod output:\n" << silo->process->log());
  REQUIRE(silo->process->running());
  return *silo;
}

silo::Client make_client(std::vector<std::string> gateways) {
  silo::ClientOptions options;
  options.gateways = std::move(gateways);
  options.default_timeout = kCallTimeout;
  return silo::Client(std::move(options));
}

iot::Target target(double celsius) {
  iot::Target t;
  t.set_celsius(celsius);
  return t;
}
iot::Reading reading(double celsius) {
  iot::Reading r;
  r.set_celsius(celsius);
  return r;
}
// A fresh key per run of a test case body (Catch2 runs the body once per SECTION; the silod is shared).
std::string fresh_key(const std::string& prefix) {
  static int n = 0;
  return prefix + "-" + std::to_string(++n);
}

iot::AddThermostatRequest add_thermostat(const std::string& id) {
  iot::AddThermostatRequest r;
  r.set_thermostat_id(id);
  return r;
}

// ---- plain gRPC ----------------------------------------------------------------------------------------

struct RpcResult {
  grpc::StatusCode code;
  std::string message;
  std::string body;  // the serialized response
};

std::shared_ptr<grpc::Channel> channel_to(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

// One unary call through grpc::GenericStub: `payload` as is, the key in `silo-key` unless nullopt.
RpcResult unary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                const std::string& payload, const std::optional<std::string>& key) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  if (key) ctx.AddMetadata("silo-key", *key);
  grpc::Slice slice(payload);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  RpcResult r{status.error_code(), status.error_message(), {}};
  std::vector<grpc::Slice> slices;
  if (status.ok() && response.Dump(&slices).ok()) {
    for (const auto& s : slices)
      r.body.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return r;
}

RpcResult unary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                const google::protobuf::Message& request, const std::optional<std::string>& key) {
  return unary(channel, method, request.SerializeAsString(), key);
}

// GetStatus of thermostat `id` over plain gRPC; fails the test unless it succeeds.
iot::Status plain_get_status(const std::shared_ptr<grpc::Channel>& channel, const std::string& id) {
  const RpcResult r = unary(channel, "/iot.Thermostat/GetStatus", iot::StatusRequest{}, id);
  INFO("GetStatus(" << id << "): code " << r.code << ": " << r.message);
  REQUIRE(r.code == grpc::StatusCode::OK);
  iot::Status s;
  REQUIRE(s.ParseFromString(r.body));
  return s;
}

// grpc.health.v1.Health/Check for service "": the `status` field of the response (1 SERVING, 2
// NOT_SERVING), or -1 if the call failed. HealthCheckResponse is { ServingStatus status = 1; }, which has
// the wire format of bench.AddRequest { int64 delta = 1; }, so no health proto is needed here.
int health_status(const std::shared_ptr<grpc::Channel>& channel) {
  const RpcResult r = unary(channel, "/grpc.health.v1.Health/Check", std::string(), std::nullopt);
  if (r.code != grpc::StatusCode::OK) return -1;
  bench::AddRequest parsed;
  if (!parsed.ParseFromString(r.body)) return -1;
  return static_cast<int>(parsed.delta());
}

}  // namespace

// ---- C++ client
// --------------------------------------------------------------------------------------------

TEST_CASE("C++ client: thermostat and home round trips", "[integration][gateway]") {
  const Silo& silo = shared_silo();
  silo::Client client = make_client({silo.gateway});
  const std::string kitchen = fresh_key("rt-kitchen");
  auto t = client.ref<iot::ThermostatRef>(kitchen);

  iot::Status s = client.wait(t.SetTarget(target(21.5)));
  CHECK(s.id() == kitchen);
  CHECK(s.target_celsius() == 21.5);
  CHECK(s.readings() == 0);

  s = client.wait(t.ReportReading(reading(19.25)));
  CHECK(s.current_celsius() == 19.25);
  CHECK(s.readings() == 1);

  s = client.wait(t.GetStatus(iot::StatusRequest{}));
  CHECK(s.id() == kitchen);
  CHECK(s.current_celsius() == 19.25);
  CHECK(s.target_celsius() == 21.5);
  CHECK(s.readings() == 1);

  SECTION("a grain's error reaches the caller with its code and message") {
    try {
      client.wait(t.SetTarget(target(500)));
      FAIL("SetTarget(500) succeeded");
    } catch (const silo::Error& e) {
      CHECK(e.code() == silo::StatusCode::invalid_argument);
      CHECK(contains(e.what(), "outside -50..60"));
    }
    CHECK(client.wait(t.GetStatus(iot::StatusRequest{})).target_celsius() == 21.5);
  }

  SECTION("a home averages its thermostats (grain-to-grain calls inside the silo)") {
    const std::string bedroom_id = fresh_key("rt-bedroom"), hall_id = fresh_key("rt-hall");
    auto bedroom = client.ref<iot::ThermostatRef>(bedroom_id);
    auto hall = client.ref<iot::ThermostatRef>(hall_id);
    client.wait(bedroom.ReportReading(reading(22.75)));
    auto home = client.ref<iot::HomeRef>(fresh_key("rt-home"));
    CHECK(client.wait(home.AddThermostat(add_thermostat(kitchen))).thermostats() == 1);
    CHECK(client.wait(home.AddThermostat(add_thermostat(bedroom_id))).thermostats() == 2);
    // Without readings, the hall counts as a thermostat but not in the average.
    const iot::HomeSummary added = client.wait(home.AddThermostat(add_thermostat(hall_id)));
    CHECK(added.thermostats() == 3);
    CHECK(added.average_celsius() == Approx(21.0));
    // Adding one twice changes nothing.
    CHECK(client.wait(home.AddThermostat(add_thermostat(hall_id))).thermostats() == 3);

    client.wait(hall.ReportReading(reading(24.0)));
    const iot::HomeSummary summary = client.wait(home.GetSummary(iot::HomeSummaryRequest{}));
    CHECK(summary.thermostats() == 3);
    CHECK(summary.average_celsius() == Approx((19.25 + 22.75 + 24.0) / 3));
  }
}

TEST_CASE("C++ client: 1000 concurrent calls to one thermostat from 4 connections",
          "[integration][gateway]") {
  const Silo& silo = shared_silo();
  constexpr int kClients = 4;
  constexpr int kCallsEach = 250;
  const std::string id = "concurrent-1";

  std::vector<std::unique_ptr<silo::Client>> clients;
  for (int i = 0; i < kClients; ++i) {
    silo::ClientOptions options;
    options.gateways = {silo.gateway};
    options.default_timeout = 30s;
    clients.push_back(std::make_unique<silo::Client>(std::move(options)));
  }
  std::vector<iot::ThermostatRef> refs;
  for (auto& c : clients)
    refs.push_back(c->ref<iot::ThermostatRef>(id));

  // Every call is started before any result is awaited.
  std::vector<std::future<iot::Status>> calls;
  calls.reserve(kClients * kCallsEach);
  for (int n = 0; n < kCallsEach; ++n) {
    for (int i = 0; i < kClients; ++i)
      calls.push_back(clients[i]->spawn(refs[i].ReportReading(reading(i * 1000 + n))));
  }
  std::vector<bool> seen(kClients * kCallsEach + 1, false);
  int failures = 0;
  for (auto& f : calls) {
    try {
      const iot::Status s = f.get();
      // Each call sees the count after its own reading: every count from 1 to 1000 exactly once.
      if (s.readings() >= 1 && s.readings() <= kClients * kCallsEach) seen[s.readings()] = true;
    } catch (const std::exception& e) {
      if (++failures <= 3) UNSCOPED_INFO("call failed: " << e.what());
    }
  }
  CHECK(failures == 0);
  CHECK(std::count(seen.begin() + 1, seen.end(), true) == kClients * kCallsEach);

  const iot::Status final_status = clients[0]->wait(refs[0].GetStatus(iot::StatusRequest{}));
  CHECK(final_status.readings() == kClients * kCallsEach);
}

// ---- plain gRPC ----------------------------------------------------------------------------------------

TEST_CASE("plain gRPC: grain calls and the status codes of bad calls", "[integration][gateway]") {
  const Silo& silo = shared_silo();
  const auto channel = channel_to(silo.gateway);
  const std::string id = fresh_key("plain");

  const RpcResult set = unary(channel, "/iot.Thermostat/SetTarget", target(18.5), id);
  REQUIRE(set.code == grpc::StatusCode::OK);
  iot::Status s;
  REQUIRE(s.ParseFromString(set.body));
  CHECK(s.id() == id);
  CHECK(s.target_celsius() == 18.5);
  REQUIRE(unary(channel, "/iot.Thermostat/ReportReading", reading(17.0), id).code == grpc::StatusCode::OK);
  s = plain_get_status(channel, id);
  CHECK(s.current_celsius() == 17.0);
  CHECK(s.readings() == 1);

  // Each bad call is followed by a good one on the same channel.
  SECTION("unknown service") {
    const RpcResult r = unary(channel, "/iot.Nope/X", iot::StatusRequest{}, id);
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::UNIMPLEMENTED);
    CHECK(contains(r.message, "iot.Nope"));
    CHECK(contains(r.message, "iot.Thermostat"));  // lists what the silo serves
  }
  SECTION("unknown method of a known service") {
    const RpcResult r = unary(channel, "/iot.Thermostat/Nope", iot::StatusRequest{}, id);
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::UNIMPLEMENTED);
    CHECK(contains(r.message, "iot.Thermostat"));
    CHECK(contains(r.message, "Nope"));
  }
  SECTION("missing silo-key") {
    const RpcResult r = unary(channel, "/iot.Thermostat/GetStatus", iot::StatusRequest{}, std::nullopt);
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(contains(r.message, "silo-key"));
  }
  SECTION("empty silo-key") {
    const RpcResult r = unary(channel, "/iot.Thermostat/GetStatus", iot::StatusRequest{}, std::string());
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(contains(r.message, "silo-key"));
  }
  SECTION("unparsable payload") {
    const RpcResult r = unary(channel, "/iot.Thermostat/SetTarget", std::string("\xff\xff\xff", 3), id);
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(contains(r.message, "iot.Target"));
  }
  SECTION("a payload over gateway.max_message_size (64KiB)") {
    bench::Payload small;
    small.set_data(std::string(32 * 1024, 'x'));
    const RpcResult ok = unary(channel, "/bench.Echo/Echo", small, "echo-1");
    REQUIRE(ok.code == grpc::StatusCode::OK);
    bench::Payload echoed;
    REQUIRE(echoed.ParseFromString(ok.body));
    CHECK(echoed.data() == small.data());

    bench::Payload big;
    big.set_data(std::string(100 * 1024, 'x'));
    const RpcResult r = unary(channel, "/bench.Echo/Echo", big, "echo-1");
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  SECTION("the grain throws silo::Error(invalid_argument)") {
    const RpcResult r = unary(channel, "/iot.Thermostat/SetTarget", target(500), id);
    INFO(r.message);
    CHECK(r.code == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(contains(r.message, "outside -50..60"));
    CHECK(plain_get_status(channel, id).target_celsius() == 18.5);  // unchanged
  }

  s = plain_get_status(channel, id);
  CHECK(s.readings() == 1);
  CHECK(s.target_celsius() == 18.5);
}

TEST_CASE("plain gRPC: health checking and server reflection", "[integration][gateway]") {
  const Silo& silo = shared_silo();
  const auto channel = channel_to(silo.gateway);

  SECTION("health") {
    CHECK(health_status(channel) == 1);  // SERVING
  }

  SECTION("reflection") {
    auto stub = rv::ServerReflection::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
    auto stream = stub->ServerReflectionInfo(&ctx);

    rv::ServerReflectionRequest request;
    rv::ServerReflectionResponse response;
    request.set_list_services("");
    REQUIRE(stream->Write(request));
    REQUIRE(stream->Read(&response));
    REQUIRE(response.has_list_services_response());
    std::vector<std::string> services;
    for (const auto& s : response.list_services_response().service())
      services.push_back(s.name());
    INFO("services: " << Catch::Detail::stringify(services));
    for (const char* name : {"iot.Thermostat", "iot.Home", "bench.Echo", "silo.gateway.Gateway"})
      CHECK(std::find(services.begin(), services.end(), name) != services.end());

    request.set_file_containing_symbol("iot.Thermostat");
    REQUIRE(stream->Write(request));
    REQUIRE(stream->Read(&response));
    REQUIRE(response.has_file_descriptor_response());
    bool found = false;
    std::vector<std::string> files;
    for (const auto& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      REQUIRE(file.ParseFromString(bytes));
      files.push_back(file.name());
      if (!contains(file.name(), "iot.proto")) continue;
      CHECK(file.package() == "iot");
      for (const auto& service : file.service())
        found = found || service.name() == "Thermostat";
    }
    INFO("files: " << Catch::Detail::stringify(files));
    CHECK(found);

    request.set_file_containing_symbol("iot.NoSuchSymbol");
    REQUIRE(stream->Write(request));
    REQUIRE(stream->Read(&response));
    REQUIRE(response.has_error_response());
    CHECK(response.error_response().error_code() == static_cast<int>(grpc::StatusCode::NOT_FOUND));

    REQUIRE(stream->WritesDone());
    const grpc::Status status = stream->Finish();
    INFO(status.error_message());
    CHECK(status.ok());
  }
}

// ---- Python client ---------------------------------------------------------------------------------------

namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kPythonClient = std::string(SILO_SOURCE_DIR) + "/tests/integration/python/iot_client.py";

CommandResult run_python(const std::string& gateway, const std::string& id, std::vector<std::string> args) {
  std::vector<std::string> argv = {kPython,     kPythonClient, "--source-dir", SILO_SOURCE_DIR,
                                   "--gateway", gateway,       "--id",         id};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, 30s);
}

// The "<id> <current> <target> <readings>" line the Python client prints last.
iot::Status parse_python_status(const std::string& output) {
  std::istringstream lines(output);
  std::string last;
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) last = line;
  std::istringstream in(last);
  std::string id;
  double current = 0, target_celsius = 0;
  long long readings = -1;
  in >> id >> current >> target_celsius >> readings;
  INFO("python output:\n" << output);
  REQUIRE(in);
  iot::Status s;
  s.set_id(id);
  s.set_current_celsius(current);
  s.set_target_celsius(target_celsius);
  s.set_readings(readings);
  return s;
}

}  // namespace

TEST_CASE("a Python gRPC client and the C++ client see the same grains", "[integration][gateway]") {
  const Silo& silo = shared_silo();
  silo::Client client = make_client({silo.gateway});

  SECTION("Python writes, C++ reads") {
    const CommandResult r =
        run_python(silo.gateway, "py-1", {"--target", "23.25", "--reading", "20.5", "--reading", "21.75"});
    INFO("python output:\n" << r.output);
    REQUIRE(r.exit_code == 0);
    const iot::Status py = parse_python_status(r.output);
    CHECK(py.id() == "py-1");
    CHECK(py.current_celsius() == 21.75);
    CHECK(py.target_celsius() == 23.25);
    CHECK(py.readings() == 2);

    const iot::Status cpp =
        client.wait(client.ref<iot::ThermostatRef>("py-1").GetStatus(iot::StatusRequest{}));
    CHECK(cpp.DebugString() == py.DebugString());
  }

  SECTION("C++ writes, Python reads") {
    auto t = client.ref<iot::ThermostatRef>("py-2");
    client.wait(t.SetTarget(target(-12.125)));
    client.wait(t.ReportReading(reading(3.5)));
    client.wait(t.ReportReading(reading(4.0625)));
    const iot::Status cpp = client.wait(t.ReportReading(reading(4.5)));

    const CommandResult r = run_python(silo.gateway, "py-2", {});
    INFO("python output:\n" << r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(parse_python_status(r.output).DebugString() == cpp.DebugString());
  }

  SECTION("Python sees a grain's error as INVALID_ARGUMENT") {
    const CommandResult r = run_python(silo.gateway, "py-3", {"--target", "500"});
    INFO("python output:\n" << r.output);
    CHECK(r.exit_code == 3);
    CHECK(contains(r.output, "error INVALID_ARGUMENT"));
    CHECK(contains(r.output, "outside -50..60"));
  }
}

// ---- siloctl ---------------------------------------------------------------------------------------------

TEST_CASE("siloctl calls grains and shows the cluster status", "[integration][gateway]") {
  // siloctl is part of the product: a build without it fails this test rather than skipping it.
  INFO("siloctl is not built at " SILOCTL_PATH);
  REQUIRE(fs::is_regular_file(SILOCTL_PATH));
  const Silo& silo = shared_silo();

  SECTION("call") {
    const CommandResult r = run_command({SILOCTL_PATH, "--gateway", silo.gateway, "call", "iot.Thermostat",
                                         "ctl-1", "SetTarget", R"({"celsius": 21.5})"},
                                        kCallTimeout);
    INFO("siloctl output:\n" << r.output);
    CHECK(r.exit_code == 0);
    std::string compact = r.output;
    std::erase_if(compact, [](char c) { return c == ' ' || c == '\n' || c == '\t'; });
    CHECK(contains(compact, R"("target_celsius":21.5)"));

    silo::Client client = make_client({silo.gateway});
    const iot::Status s =
        client.wait(client.ref<iot::ThermostatRef>("ctl-1").GetStatus(iot::StatusRequest{}));
    CHECK(s.target_celsius() == 21.5);
  }

  SECTION("status") {
    const CommandResult r = run_command({SILOCTL_PATH, "--gateway", silo.gateway, "status"}, kCallTimeout);
    INFO("siloctl output:\n" << r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, silo.name));
  }
}

// ---- shutdown
// ----------------------------------------------------------------------------------------------

TEST_CASE("a draining gateway answers UNAVAILABLE and still exits cleanly", "[integration][gateway]") {
  Silo silo = start_silo("draining-silo", "10s");
  const auto channel = channel_to(silo.gateway);
  plain_get_status(channel, "drain-1");  // the grain is active
  REQUIRE(health_status(channel) == 1);

  // A raw client stream (what silo::Client uses) that stays open: the gateway waits for it while draining,
  // and announces the drain on it, which tells this test when the draining phase has begun.
  auto stub = gw::Gateway::NewStub(channel);
  grpc::ClientContext stream_ctx;
  stream_ctx.set_deadline(std::chrono::system_clock::now() + 30s);
  auto stream = stub->Connect(&stream_ctx);
  stream->WaitForInitialMetadata();

  silo.process->signal(SIGTERM);
  gw::ServerFrame frame;
  REQUIRE(stream->Read(&frame));
  INFO("silod output:\n" << silo.process->log());
  REQUIRE(frame.draining());

  // The gateway is now draining, and stays so while `stream` is open (up to 5 s).
  const RpcResult r = unary(channel, "/iot.Thermostat/GetStatus", iot::StatusRequest{}, "drain-1");
  INFO(r.message);
  CHECK(r.code == grpc::StatusCode::UNAVAILABLE);
  CHECK(contains(r.message, "shutting down"));
  CHECK(health_status(channel) == 2);  // NOT_SERVING

  // A call on the open stream is refused as well.
  gw::ClientFrame calls;
  auto* call = calls.add_calls();
  call->set_id(7);
  call->set_method("/iot.Thermostat/GetStatus");
  call->set_key("drain-1");
  call->set_timeout_ms(5000);
  REQUIRE(stream->Write(calls));
  REQUIRE(stream->Read(&frame));
  REQUIRE(frame.results_size() == 1);
  CHECK(frame.results(0).id() == 7);
  CHECK(frame.results(0).code() == static_cast<int>(grpc::StatusCode::UNAVAILABLE));

  // So is a call from a silo::Client that connects now.
  {
    silo::Client client = make_client({silo.gateway});
    try {
      client.wait(client.ref<iot::ThermostatRef>("drain-1").GetStatus(iot::StatusRequest{}));
      FAIL("a call to a draining gateway succeeded");
    } catch (const silo::Error& e) {
      INFO(e.what());
      CHECK(e.code() == silo::StatusCode::unavailable);
    }
  }

  // Closing the stream lets the gateway finish; silod exits 0 well before its shutdown_timeout.
  const auto closed_at = std::chrono::steady_clock::now();
  CHECK(stream->WritesDone());
  while (stream->Read(&frame)) {
  }
  const grpc::Status status = stream->Finish();
  CHECK(status.ok());
  const auto code = silo.process->wait_exit(kExitTimeout);
  INFO("silod output:\n" << silo.process->log());
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(std::chrono::steady_clock::now() - closed_at < 4s);

  // After exit, calls fail with UNAVAILABLE (connection refused), never with another code.
  CHECK(unary(channel, "/iot.Thermostat/GetStatus", iot::StatusRequest{}, "drain-1").code ==
        grpc::StatusCode::UNAVAILABLE);
}

// ---- failover --------------------------------------------------------------------------------------------

namespace {

bench::AddRequest bench_add(std::int64_t delta) {
  bench::AddRequest r;
  r.set_delta(delta);
  return r;
}

// Active silos in the Status answer of `gateway` (0 if the call failed).
std::size_t active_silos(const std::string& gateway) {
  auto stub = gw::Gateway::NewStub(channel_to(gateway));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  gw::ClusterStatus out;
  if (!stub->Status(&ctx, gw::StatusRequest{}, &out).ok()) return 0;
  std::size_t n = 0;
  for (const auto& silo : out.silos())
    if (silo.status() == "active") ++n;
  return n;
}

// Activations of `grain_type` on the silo behind `gateway`, or -1 if the call failed.
std::int64_t activations_of(const std::string& gateway, const std::string& grain_type) {
  auto stub = gw::Gateway::NewStub(channel_to(gateway));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  gw::GrainStats out;
  if (!stub->Grains(&ctx, gw::GrainsRequest{}, &out).ok()) return -1;
  std::int64_t n = 0;
  for (const auto& c : out.counts())
    if (c.grain_type() == grain_type) n += c.activations();
  return n;
}

// Calls GetStatus up to `attempts` times; every failure must be UNAVAILABLE. The status, or nullopt.
std::optional<iot::Status> get_status_with_retries(silo::Client& client, const std::string& id, int attempts,
                                                   int& failures) {
  auto t = client.ref<iot::ThermostatRef>(id);
  for (int i = 0; i < attempts; ++i) {
    try {
      return client.wait(t.GetStatus(iot::StatusRequest{}));
    } catch (const silo::Error& e) {
      ++failures;
      INFO(e.what());
      CHECK(e.code() == silo::StatusCode::unavailable);
    }
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("C++ client: failover to the next gateway", "[integration][gateway]") {
  SECTION("the gateway in use is killed; the grains it forwarded to live on") {
    // A and B form one cluster (PostgreSQL membership), and the counters live on B (prefer_local, first
    // called through B): calls through A are forwarded to B, so a call A accepted may have run on B when
    // A dies, and one the client then resent through B would run twice, which B's totals show.
    silo::test::require_postgres("silo_gateway_tests");
    const std::string cluster_id =
        "gw-failover-" + std::to_string(::getpid()) + "-" +
        std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
    const std::string extra =
        "membership:\n  provider: postgres\n"
        "grains:\n  types:\n"
        "    bench.Counter: {placement: prefer_local}\n"
        "    iot.Thermostat: {placement: prefer_local}\n";
    Silo a = start_silo("failover-a", "5s", extra, cluster_id);
    Silo b = start_silo("failover-b", "5s", extra, cluster_id);
    const bool formed = silo::test::wait_until(
        [&] { return active_silos(a.gateway) == 2 && active_silos(b.gateway) == 2; }, 15s);
    INFO("a:\n" << a.process->log() << "\nb:\n" << b.process->log());
    REQUIRE(formed);

    const std::vector<std::string> keys = {"fo-1", "fo-2", "fo-3"};
    {
      silo::Client on_b = make_client({b.gateway});
      for (const auto& k : keys)
        REQUIRE(on_b.wait(on_b.ref<bench::CounterRef>(k).Add(bench_add(0))).total() == 0);
    }
    REQUIRE(activations_of(b.gateway, "bench.Counter") == static_cast<std::int64_t>(keys.size()));
    REQUIRE(activations_of(a.gateway, "bench.Counter") == 0);

    // No gateway refresh: the client must stay on A (it would otherwise learn the cluster's gateways and
    // may move to B before A dies).
    silo::ClientOptions options;
    options.gateways = {a.gateway, b.gateway};
    options.default_timeout = kCallTimeout;
    options.gateway_refresh = std::chrono::milliseconds(0);
    silo::Client client(std::move(options));
    for (const auto& k : keys)
      REQUIRE(client.wait(client.ref<bench::CounterRef>(k).Add(bench_add(0))).total() == 0);
    CHECK(client.current_gateway() == a.gateway);

    // Calls in flight when A dies may fail (UNAVAILABLE); they must not hang, and none may run twice. Call i
    // on a key adds 4^i, so the key's final total holds, two bits per call, how many times each call ran.
    // B is frozen while A forwards the calls and dies, so they wait in B's socket and run after A is gone:
    // calls that ran, whose answers are lost (B's freeze, ~0.5 s, is well below failure detection).
    constexpr int kCalls = 30;  // 4^29 * 3 fits an int64
    std::vector<std::vector<std::future<bench::Total>>> in_flight(keys.size());
    ::kill(b.process->pid(), SIGSTOP);
    for (int i = 0; i < kCalls; ++i)
      for (std::size_t k = 0; k < keys.size(); ++k)
        in_flight[k].push_back(
            client.spawn(client.ref<bench::CounterRef>(keys[k]).Add(bench_add(1LL << (2 * i)))));
    std::this_thread::sleep_for(300ms);
    a.process->signal(SIGKILL);
    const auto a_exit = a.process->wait_exit(kExitTimeout);
    ::kill(b.process->pid(), SIGCONT);  // before any REQUIRE, so B never stays frozen
    REQUIRE(a_exit.has_value());
    std::vector<std::vector<bool>> acknowledged(keys.size(), std::vector<bool>(kCalls, false));
    int failed = 0;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      for (int i = 0; i < kCalls; ++i) {
        auto& f = in_flight[k][i];
        REQUIRE(f.wait_for(kCallTimeout + 2s) == std::future_status::ready);
        try {
          f.get();
          acknowledged[k][i] = true;
        } catch (const silo::Error& e) {
          ++failed;
          INFO(e.what());
          CHECK(e.code() == silo::StatusCode::unavailable);
        }
      }
    }

    // Later calls reach B, each within 3 attempts.
    int failures = 0;
    for (int i = 0; i < 10; ++i) {
      const auto s = get_status_with_retries(client, "fo-status", 3, failures);
      REQUIRE(s.has_value());
      CHECK(s->id() == "fo-status");
    }
    CHECK(failures <= 2);
    CHECK(client.current_gateway() == b.gateway);

    // B's totals: every acknowledged call ran exactly once, every failed one at most once.
    std::ostringstream runs;
    int twice = 0, acked_not_run = 0;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      const std::int64_t total =
          client.wait(client.ref<bench::CounterRef>(keys[k]).Get(bench::Empty{})).total();
      runs << keys[k] << ":";
      for (int i = 0; i < kCalls; ++i) {
        const auto ran = (total >> (2 * i)) & 3;
        runs << " " << ran << (acknowledged[k][i] ? "" : "?");
        if (ran > 1) ++twice;
        if (acknowledged[k][i] && ran != 1) ++acked_not_run;
      }
      runs << "\n";
    }
    INFO(failed << " calls failed with A; times each call ran on B (? = not acknowledged):\n" << runs.str());
    CHECK(twice == 0);
    CHECK(acked_not_run == 0);
  }

  SECTION("the first gateway of the list is not listening") {
    Silo b = start_silo("failover-live");
    const std::string dead = silo::test::loopback_host() + ":" + std::to_string(silo::test::free_port());
    silo::Client client = make_client({dead, b.gateway});
    auto t = client.ref<iot::ThermostatRef>("fo-2");
    // Never delivered, so resent to the next gateway: the very first call succeeds.
    const iot::Status s = client.wait(t.SetTarget(target(20.5)));
    CHECK(s.target_celsius() == 20.5);
    CHECK(client.current_gateway() == b.gateway);
    CHECK(client.wait(t.GetStatus(iot::StatusRequest{})).target_celsius() == 20.5);
  }
}
