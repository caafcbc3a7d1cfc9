// The SDK surface as a real silod shows it: a plugin whose SILO_PLUGIN body throws is refused with the
// exception's message while silod starts and serves the other plugin, and a grain's Logger lines reach
// silod's log file exactly at and above logging.level. One silod, local membership (no PostgreSQL).

#include <csignal>
#include <memory>
#include <string>

#include <catch2/catch.hpp>

#include <silo/client.hpp>
#include <silo/error.hpp>

#include "process.hpp"
#include "sdkgrains.silo.h"

using namespace std::chrono_literals;
using silo::test::SilodConfig;
using silo::test::SilodProcess;

namespace {
std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1))
    ++n;
  return n;
}
}  // namespace

TEST_CASE("silod refuses a plugin whose registration throws, serves the rest, logs grains at its level",
          "[integration][sdk]") {
  SilodConfig c;
  c.plugins_dir = SILO_TEST_PLUGIN_DIR;
  c.load = {"throwingplugin", "sdkgrains"};
  c.silo_name = "sdk-silod";
  c.log_level = "warn";
  std::string config;
  std::string log_file;
  SilodProcess silod([&](const std::string& dir) {
    c.log_file = log_file = dir + "/silod.log";
    return config = silod_config(c);
  });
  const bool ready = silod.wait_ready(30s);
  INFO("silod output:\n" << silod.log() << "\nlog file:\n" << silo::test::read_file(log_file));
  REQUIRE(ready);

  const auto at = config.find("listen: ", config.find("\ngateway:\n"));
  REQUIRE(at != std::string::npos);
  silo::ClientOptions o;
  o.gateways = {config.substr(at + 8, config.find('\n', at) - at - 8)};
  o.default_timeout = 10s;
  {
    silo::Client client(std::move(o));
    sdk::Name marker;
    marker.set_name("real-mark");
    const auto r = client.wait(client.ref<sdk::SdkRef>("lg").Log(marker));
    REQUIRE(r.enabled_size() == 5);
    CHECK_FALSE(r.enabled(0));  // trace
    CHECK_FALSE(r.enabled(1));  // debug
    CHECK_FALSE(r.enabled(2));  // info
    CHECK(r.enabled(3));        // warn
    CHECK(r.enabled(4));        // error
    // The type the throwing plugin registered before it threw is not served.
    try {
      client.wait(client.ref<sdk::OrphanRef>("o").Whoami(sdk::Empty{}));
      FAIL_CHECK("sdk.Orphan was served");
    } catch (const silo::Error& e) {
      CHECK((e.code() == silo::StatusCode::not_found || e.code() == silo::StatusCode::unimplemented));
    }
  }
  silod.signal(SIGTERM);
  CHECK(silod.wait_exit(30s) == 0);

  const std::string log = silo::test::read_file(log_file) + silod.log();
  CHECK(count(log, "plugins: skipped 'throwingplugin'") == 1);
  CHECK(count(log, "deliberate failure after registering sdk.Orphan") == 1);
  CHECK(count(log, "grain sdk.Sdk/lg: real-mark at warn") == 1);
  CHECK(count(log, "grain sdk.Sdk/lg: real-mark at error") == 1);
  CHECK(count(log, "real-mark") == 2);  // nothing at info, debug or trace
}
