// Conformance: the plugin loader accepts real plugins and refuses bad ones with a precise reason, while the
// others load.

#include "fixture.hpp"

using silo::plugins::load_plugin;
using silo::plugins::load_plugins;
using silo::plugins::resolve_plugin_path;

namespace {
silo::config::PluginsConfig plugins_config(std::vector<std::string> load, bool required = false) {
  silo::config::PluginsConfig cfg;
  cfg.dir = SILO_TEST_PLUGIN_DIR;
  cfg.load = std::move(load);
  cfg.required = required;
  return cfg;
}
}  // namespace

TEST_CASE("a plugin registers its grain types", "[conformance][plugins]") {
  conformance::capture_logs();
  silo::runtime::Runtime rt({});
  const auto results = load_plugins(plugins_config({"testgrains"}), {}, rt);
  REQUIRE(results.size() == 1);
  CHECK(results[0].ok);
  CHECK(rt.find_class("test.Recorder") != nullptr);
  CHECK(rt.find_class("test.Worker")->info->stateless_worker);
  CHECK(rt.find_class("test.Worker")->max_local == 3);
  CHECK(rt.find_class("test.ReentrantRecorder")->info->reentrant);
  // Custom placement directors come from plugins too.
  REQUIRE(rt.find_director("last") != nullptr);
  const silo::PlacementCandidate candidates[] = {{"a:1@1", 0, true}, {"b:2@1", 5, false}};
  CHECK(rt.find_director("last")("test.Recorder", "k",
                                 std::span<const silo::PlacementCandidate>(candidates)) == 1);
  CHECK(conformance::logged("plugins: loaded 'testgrains'"));
}

TEST_CASE("a plugin with a wrong ABI record is refused before its code runs, and the others load",
          "[conformance][plugins]") {
  conformance::capture_logs();
  // wrongabi.so aborts the process from a static initialiser when this is set and it gets loaded.
  setenv("SILO_TEST_FAIL_IF_LOADED", "1", 1);
  silo::runtime::Runtime rt({});
  const auto results = load_plugins(plugins_config({"wrongabi", "testgrains"}), {}, rt);
  unsetenv("SILO_TEST_FAIL_IF_LOADED");
  REQUIRE(results.size() == 2);
  CHECK_FALSE(results[0].ok);
  CHECK_THAT(results[0].error, Catch::Contains("built against plugin ABI 999, this silod speaks ABI 1"));
  CHECK(results[1].ok);
  CHECK(conformance::logged("plugins: skipped 'wrongabi'"));
}

TEST_CASE("plugins that are not silo plugins, missing, or duplicate a grain type are refused",
          "[conformance][plugins]") {
  conformance::capture_logs();
  silo::runtime::Runtime rt({});
  const auto results = load_plugins(
      plugins_config({"testgrains", "notaplugin", "nosuchplugin", "dupgrains", "conflictgrains"}), {}, rt);
  REQUIRE(results.size() == 5);
  CHECK(results[0].ok);
  CHECK_THAT(results[1].error, Catch::Contains("not a silo plugin"));
  CHECK_THAT(results[2].error, Catch::Contains("no nosuchplugin.so or libnosuchplugin.so in"));
  CHECK_THAT(results[3].error,
             Catch::Contains("grain type test.Probe is already registered by plugin 'testgrains'"));
  // Protobuf would abort the process on conflictgrains' second test.Probe: found out in a child instead.
  CHECK_THAT(results[4].error, Catch::Contains("loading it kills the process") &&
                                   Catch::Contains("conflicts with the existing symbol \"test.Probe\""));
  CHECK(rt.find_class("test.Probe")->plugin == "testgrains");
}

TEST_CASE("plugins.required turns a refused plugin into a start-up error", "[conformance][plugins]") {
  silo::runtime::Runtime rt({});
  CHECK_THROWS_WITH(load_plugins(plugins_config({"nosuchplugin"}, true), {}, rt),
                    Catch::Contains("plugin 'nosuchplugin'") && Catch::Contains("plugins.required"));
}

TEST_CASE("plugin paths resolve as NAME.so, libNAME.so or a path", "[conformance][plugins]") {
  CHECK(resolve_plugin_path(SILO_TEST_PLUGIN_DIR, "testgrains") ==
        std::string(SILO_TEST_PLUGIN_DIR) + "/testgrains.so");
  CHECK(resolve_plugin_path("/nonexistent", std::string(SILO_TEST_PLUGIN_DIR) + "/testgrains.so") ==
        std::string(SILO_TEST_PLUGIN_DIR) + "/testgrains.so");
  CHECK(resolve_plugin_path(SILO_TEST_PLUGIN_DIR, "nosuch").empty());
}

TEST_CASE("YAML per-type settings override the plugin's options", "[conformance][plugins]") {
  silo::runtime::Runtime rt({});
  silo::config::GrainsConfig grains;
  grains.types["test.Worker"].max_local = 7;
  grains.types["test.Recorder"].collection_age = std::chrono::milliseconds(1234);
  grains.types["test.Recorder"].placement = "hash";
  load_plugins(plugins_config({"testgrains"}), grains, rt);
  CHECK(rt.find_class("test.Worker")->max_local == 7);
  CHECK(rt.find_class("test.Recorder")->collection_age == std::chrono::milliseconds(1234));
  CHECK(rt.find_class("test.Recorder")->placement == silo::Placement::hash);
  CHECK(rt.find_class("test.FragileRecorder")->collection_age == std::chrono::hours(1));  // proto option
}
