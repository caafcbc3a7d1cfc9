// Integration tests of the silod binary: command line, configuration errors, sd_notify, signals and plugin
// loading, each against a real silod process.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

#include "integration/process.hpp"

using namespace std::chrono_literals;
using silo::test::CommandResult;
using silo::test::read_file;
using silo::test::run_command;
using silo::test::silod_config;
using silo::test::SilodConfig;
using silo::test::SilodProcess;
using silo::test::TempDir;
using silo::test::wait_until;

namespace fs = std::filesystem;

namespace {

constexpr auto kReadyTimeout = 15s;
constexpr auto kExitTimeout = 10s;
constexpr auto kCommandTimeout = 10s;

const std::string kIotPlugin = std::string(SILO_PLUGIN_DIR) + "/iot.so";

// The first line of `text` that contains every one of `parts`; empty if none does.
std::string line_with(const std::string& text, std::initializer_list<std::string> parts) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    bool all = true;
    for (const auto& p : parts)
      all = all && line.find(p) != std::string::npos;
    if (all) return line;
  }
  return {};
}

std::string last_line(const std::string& text) {
  auto end = text.find_last_not_of("\r\n");
  if (end == std::string::npos) return {};
  auto begin = text.rfind('\n', end);
  return text.substr(begin == std::string::npos ? 0 : begin + 1,
                     end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

void require_test_plugin(const std::string& name) {
  const std::string path = std::string(SILO_TEST_PLUGIN_DIR) + "/" + name + ".so";
  INFO("build it first: ninja -C " SILO_BINARY_DIR " " << name);
  REQUIRE(fs::is_regular_file(path));
}

// Starts silod with the iot plugin, stops it with `signo`, and checks the whole life cycle.
void check_life_cycle(int signo) {
  SilodProcess silod(silod_config(SILO_PLUGIN_DIR, {"iot"}));
  const bool ready = silod.wait_ready(kReadyTimeout);
  INFO("silod output:\n" << silod.log());
  REQUIRE(ready);
  CHECK(silod.has_notification("STATUS="));
  const std::string ready_log = silod.log();
  CHECK(contains(ready_log, "plugins: loaded 'iot'"));
  CHECK(contains(ready_log, "silod ready"));

  silod.signal(signo);
  const auto code = silod.wait_exit(kExitTimeout);
  INFO("silod output:\n" << silod.log());
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(silod.has_notification("STOPPING=1"));
  CHECK(contains(silod.log(), signo == SIGINT ? "received SIGINT" : "received SIGTERM"));
  CHECK(contains(last_line(silod.log()), "silod stopped"));
}

}  // namespace

TEST_CASE("silod starts, notifies READY and stops cleanly on SIGTERM", "[integration]") {
  check_life_cycle(SIGTERM);
}

TEST_CASE("silod stops cleanly on SIGINT", "[integration]") {
  check_life_cycle(SIGINT);
}

TEST_CASE("silod validates its configuration file", "[integration]") {
  TempDir dir;
  // The unknown key is logging.colour, on line 5.
  const std::string bad = dir.write("bad.yaml",
                                    "cluster:\n"
                                    "  id: test\n"
                                    "logging:\n"
                                    "  level: info\n"
                                    "  colour: auto\n");
  const std::string expected = bad + ":5: logging.colour:";
  const std::string good = dir.write("good.yaml", silod_config(SILO_PLUGIN_DIR, {"iot"}));

  SECTION("--check-config rejects an unknown key with its file, line and key path") {
    const CommandResult r = run_command({SILOD_PATH, "--check-config", bad}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, expected));
    CHECK(contains(r.output, "unknown key"));
  }
  SECTION("--check-config accepts a valid file") {
    const CommandResult r = run_command({SILOD_PATH, "--check-config", good}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, good + ": ok"));
  }
  SECTION("--config refuses the bad file before starting anything") {
    const CommandResult r = run_command({SILOD_PATH, "--config", bad}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, expected));
    CHECK_FALSE(contains(r.output, "starting"));
  }
  SECTION("a missing file is named in the error") {
    const std::string missing = dir.path() + "/does-not-exist.yaml";
    for (const char* flag : {"--config", "--check-config"}) {
      const CommandResult r = run_command({SILOD_PATH, flag, missing}, kCommandTimeout);
      INFO(flag << ": " << r.output);
      CHECK(r.exit_code == 2);
      CHECK(contains(r.output, missing));
    }
  }
}

TEST_CASE("silod command line", "[integration]") {
  SECTION("--version") {
    const CommandResult r = run_command({SILOD_PATH, "--version"}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.rfind("silod ", 0) == 0);
    CHECK(contains(r.output, SILO_VERSION));
  }
  SECTION("--help") {
    const CommandResult r = run_command({SILOD_PATH, "--help"}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, "usage:"));
  }
  SECTION("an unknown flag") {
    const CommandResult r = run_command({SILOD_PATH, "--bogus"}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, "--bogus"));
    CHECK(contains(r.output, "usage:"));
  }
  SECTION("--config without its FILE") {
    const CommandResult r = run_command({SILOD_PATH, "--config"}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, "usage:"));
  }
  SECTION("no arguments") {
    const CommandResult r = run_command({SILOD_PATH}, kCommandTimeout);
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK(contains(r.output, "usage:"));
  }
}

TEST_CASE("SIGHUP reopens the log file and re-reads logging.level", "[integration]") {
  SilodProcess silod([](const std::string& dir) {
    SilodConfig c;
    c.plugins_dir = SILO_PLUGIN_DIR;
    c.load = {"iot"};
    c.log_file = dir + "/silod.log";
    return silod_config(c);
  });
  const std::string log_file = silod.dir() + "/silod.log";
  const std::string rotated = log_file + ".1";
  const bool ready = silod.wait_ready(kReadyTimeout) &&
                     wait_until([&] { return contains(read_file(log_file), "silod ready"); }, 5s);
  INFO("silod output:\n" << silod.log() << "\nsilod.log:\n" << read_file(log_file));
  REQUIRE(ready);

  // What logrotate does: move the file away, then tell the daemon. Meanwhile the operator raised the level.
  fs::rename(log_file, rotated);
  std::string config = read_file(silod.config_path());
  const auto at = config.find("level: info");
  REQUIRE(at != std::string::npos);
  config.replace(at, std::string("level: info").size(), "level: debug");
  silo::test::write_file(silod.config_path(), config);
  silod.signal(SIGHUP);

  const bool reopened =
      wait_until([&] { return contains(read_file(log_file), "SIGHUP: log reopened"); }, 10s);
  INFO("silod.log after SIGHUP:\n" << read_file(log_file) << "\nrotated:\n" << read_file(rotated));
  REQUIRE(reopened);
  const std::string line = line_with(read_file(log_file), {"SIGHUP: log reopened"});
  CHECK(contains(line, "level debug"));
  CHECK(contains(line, log_file));
  CHECK(contains(read_file(rotated), "silod ready"));
  CHECK_FALSE(contains(read_file(rotated), "SIGHUP"));

  silod.signal(SIGTERM);
  const auto code = silod.wait_exit(kExitTimeout);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  CHECK(contains(last_line(read_file(log_file)), "silod stopped"));
}

TEST_CASE("silod skips plugins it must not load", "[integration]") {
  SECTION("a plugin built against another ABI is refused without running its code") {
    require_test_plugin("wrongabi");
    SilodConfig c;
    c.plugins_dir = SILO_TEST_PLUGIN_DIR;
    c.load = {kIotPlugin, "wrongabi"};
    // wrongabi.so aborts from a static initialiser when this is set: silod must never run its code.
    SilodProcess silod(silod_config(c), {}, {{"SILO_TEST_FAIL_IF_LOADED", "1"}});
    const bool ready = silod.wait_ready(kReadyTimeout);
    INFO("silod output:\n" << silod.log());
    REQUIRE(ready);
    const std::string log = silod.log();
    CHECK_FALSE(line_with(log, {"skipped 'wrongabi", "plugin ABI 999"}).empty());
    CHECK(contains(log, "plugins: loaded '" + kIotPlugin + "'"));
    CHECK(contains(log, "serving: 2 grain types"));
    silod.signal(SIGTERM);
    CHECK(silod.wait_exit(kExitTimeout) == 0);
  }
  SECTION("control: loading wrongabi.so with SILO_TEST_FAIL_IF_LOADED=1 does abort") {
    // Without this, the test above would pass vacuously if the poison stopped working.
    require_test_plugin("wrongabi");
    const std::string path = std::string(SILO_TEST_PLUGIN_DIR) + "/wrongabi.so";
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::setenv("SILO_TEST_FAIL_IF_LOADED", "1", 1);
      ::signal(SIGABRT, SIG_DFL);
      void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      ::_exit(handle ? 0 : 3);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGABRT);
  }
  SECTION("a shared object without SILO_PLUGIN() is refused") {
    require_test_plugin("notaplugin");
    SilodConfig c;
    c.plugins_dir = SILO_TEST_PLUGIN_DIR;
    c.load = {kIotPlugin, "notaplugin"};
    SilodProcess silod(silod_config(c));
    const bool ready = silod.wait_ready(kReadyTimeout);
    INFO("silod output:\n" << silod.log());
    REQUIRE(ready);
    CHECK_FALSE(line_with(silod.log(), {"skipped 'notaplugin'", "not a silo plugin"}).empty());
    silod.signal(SIGTERM);
    CHECK(silod.wait_exit(kExitTimeout) == 0);
  }
}

TEST_CASE("a required plugin that is missing stops start-up", "[integration]") {
  SilodConfig c;
  c.plugins_dir = SILO_TEST_PLUGIN_DIR;
  c.load = {kIotPlugin, "nosuchplugin"};
  c.plugins_required = true;
  SilodProcess silod(silod_config(c));
  const auto code = silod.wait_exit(kReadyTimeout);
  INFO("silod output:\n" << silod.log());
  REQUIRE(code.has_value());
  CHECK(*code == 1);
  CHECK_FALSE(silod.has_notification("READY=1"));
  const std::string line = line_with(silod.log(), {"nosuchplugin", "plugins.required"});
  CHECK_FALSE(line.empty());
  CHECK(contains(silod.log(), "silod failed to start"));
}

TEST_CASE("a logging.file in a missing directory is a configuration error", "[integration]") {
  TempDir dir;
  SilodConfig c;
  c.plugins_dir = SILO_PLUGIN_DIR;
  c.load = {"iot"};
  c.log_file = dir.path() + "/no-such-dir/silod.log";
  SilodProcess silod(silod_config(c));
  const auto code = silod.wait_exit(kExitTimeout);
  INFO("silod output:\n" << silod.log());
  REQUIRE(code.has_value());
  CHECK(*code == 2);
  CHECK_FALSE(silod.has_notification("READY=1"));
  CHECK(contains(silod.log(), "logging.file"));
  CHECK(contains(silod.log(), c.log_file));
}
