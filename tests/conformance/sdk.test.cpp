// Conformance of the SDK surface a grain author uses and no other test touches: one-shot and cancelled
// timers, one-way calls (per call and per method), Logger levels, GrainRef::key(), reminder
// re-registration and unknown unregister, two named PersistentStates and the data-loss path, and a
// plugin whose registration throws. In process: the real runtime, plugin loader, memory storage provider,
// reminder service and the sdkgrains / throwingplugin test plugins.

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <catch2/catch.hpp>

#include "config/config.hpp"
#include "plugins/plugin_loader.hpp"
#include "reminders/reminder_service.hpp"
#include "reminders/reminder_table.hpp"
#include "runtime/runtime.hpp"
#include "sdkgrains.silo.h"
#include "storage/provider.hpp"

using namespace std::chrono_literals;
using silo::StatusCode;
using silo::detail::Caller;

namespace {

template <class T>
struct task_value;
template <class T>
struct task_value<silo::Task<T>> {
  using type = T;
};

std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> log_sink() {
  static auto sink = [] {
    auto s = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
    s->set_pattern("%l %v");
    auto logger = std::make_shared<spdlog::logger>("sdk-test", s);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
    return s;
  }();
  return sink;
}

std::vector<std::string> lines_with(const std::string& needle) {
  std::vector<std::string> out;
  for (const auto& line : log_sink()->last_formatted())
    if (line.find(needle) != std::string::npos) out.push_back(line);
  return out;
}

template <class P>
bool eventually(P pred, std::chrono::milliseconds timeout = 10s) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

silo::config::PluginsConfig plugins(std::vector<std::string> load, bool required) {
  silo::config::PluginsConfig p;
  p.dir = SILO_TEST_PLUGIN_DIR;
  p.load = std::move(load);
  p.required = required;
  return p;
}

// One silo in process: sdkgrains, the memory provider as "default", optionally a memory reminder table.
struct Silo {
  explicit Silo(bool with_reminders = false, std::chrono::milliseconds refresh = 200ms) {
    log_sink();
    std::map<std::string, silo::config::StorageProviderConfig> storage;
    storage["default"] = silo::config::StorageProviderConfig{};
    registry = std::make_unique<silo::storage::Registry>(storage, "sdk-test");
    registry->start();
    silo::runtime::RuntimeOptions options;
    options.threads = 2;
    rt = std::make_unique<silo::runtime::Runtime>(options);
    rt->set_storage(registry.get());
    silo::plugins::load_plugins(plugins({"sdkgrains"}, true), {}, *rt);
    rt->start();
    if (with_reminders) {
      cfg.reminders.min_period = 50ms;
      cfg.reminders.refresh_interval = refresh;
      reminders = std::make_unique<silo::reminders::ReminderService>(
          cfg, silo::reminders::make_memory_reminder_table(), *rt,
          std::string());  // alone: keeps every reminder
      rt->set_reminders(reminders.get());
      reminders->start();
    }
  }
  ~Silo() {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    if (reminders) {
      reminders->prepare_stop(deadline);
      reminders->stop(deadline);
      rt->set_reminders(nullptr);
    }
    rt->stop(deadline);
    registry->stop();
  }

  template <class F>
  auto spawn(F f, unsigned shard = 0) {
    using T = typename task_value<std::invoke_result_t<F, Caller&>>::type;
    return rt->spawn<T>(shard % rt->shard_count(), std::function<silo::Task<T>(Caller&)>(std::move(f)));
  }
  template <class F>
  auto run(F f, unsigned shard = 0) {
    return spawn(std::move(f), shard).get();
  }

  // Plugin counter `name` (see sdkgrains.cpp).
  std::int64_t counter(const std::string& name) {
    return run([name](Caller& c) -> silo::Task<std::int64_t> {
      sdk::Name n;
      n.set_name(name);
      co_return (co_await sdk::ControlRef(&c, "control").Get(n)).value();
    });
  }
  void open(const std::string& gate) {
    run([gate](Caller& c) -> silo::Task<void> {
      sdk::Name n;
      n.set_name(gate);
      co_await sdk::ControlRef(&c, "control").Open(n);
    });
  }
  silo::storage::Outcome stored(const std::string& type, const std::string& key, const std::string& name) {
    std::promise<silo::storage::Outcome> p;
    auto f = p.get_future();
    registry->find("default")->read({type, key, name}, [&p](silo::storage::Outcome o) { p.set_value(o); });
    return f.get();
  }

  silo::config::Config cfg;
  std::unique_ptr<silo::storage::Registry> registry;
  std::unique_ptr<silo::runtime::Runtime> rt;
  std::unique_ptr<silo::reminders::ReminderService> reminders;
};

sdk::Name name(const std::string& n) {
  sdk::Name r;
  r.set_name(n);
  return r;
}

template <class F>
silo::Error expect_error(F&& call) {
  try {
    call();
  } catch (const silo::Error& e) {
    return e;
  }
  FAIL("expected a silo::Error");
  return silo::Error(StatusCode::ok, "");
}

}  // namespace

TEST_CASE("a one-shot timer ticks once, and cancel_timer stops a timer before and after its first tick",
          "[conformance][sdk]") {
  Silo silo;
  silo.run([](Caller& c) -> silo::Task<void> { co_await sdk::SdkRef(&c, "timers").Timers(sdk::Empty{}); });
  // The sentinel is started by the periodic timer's third tick, 200 ms after it cancelled itself; by then
  // an uncancelled 10 ms timer would have ticked again many times, and the one-shot (due at 20 ms) and
  // the cancelled timer (due at 30 ms) have long been due.
  REQUIRE(eventually([&] { return silo.counter("sentinel:timers") >= 1; }));
  CHECK(silo.counter("periodic:timers") == 3);
  CHECK(silo.counter("oneshot:timers") == 1);
  CHECK(silo.counter("cancelled:timers") == 0);
  CHECK(silo.counter("sentinel:timers") == 1);  // itself a one-shot
}

TEST_CASE("one-way calls, by CallOptions or by the method's one_way option, return before the call ran",
          "[conformance][sdk]") {
  Silo silo;
  // Hold finishes only once its gate is opened, which the test does after the caller got its answer: a
  // caller that waited for the call would not get an answer within the 5 s below (the grain waits 20 s).
  SECTION("CallOptions.one_way") {
    auto call = silo.spawn([](Caller& c) -> silo::Task<sdk::Empty> {
      silo::CallOptions o;
      o.one_way = true;
      co_return co_await sdk::SdkRef(&c, "ow-option").Hold(name("gate-option"), o);
    });
    REQUIRE(call.wait_for(5s) == std::future_status::ready);
    call.get();
    CHECK(silo.counter("hold_done:ow-option") == 0);
    REQUIRE(eventually([&] { return silo.counter("hold_started:ow-option") == 1; }));  // it was delivered
    silo.open("gate-option");
    CHECK(eventually([&] { return silo.counter("hold_done:ow-option") == 1; }));
  }
  SECTION("(silo.method).one_way") {
    auto call = silo.spawn([](Caller& c) -> silo::Task<sdk::Empty> {
      co_return co_await sdk::SdkRef(&c, "ow-method").HoldOneWay(name("gate-method"));
    });
    REQUIRE(call.wait_for(5s) == std::future_status::ready);
    call.get();
    CHECK(silo.counter("hold_done:ow-method") == 0);
    REQUIRE(eventually([&] { return silo.counter("hold_started:ow-method") == 1; }));
    silo.open("gate-method");
    CHECK(eventually([&] { return silo.counter("hold_done:ow-method") == 1; }));
  }
  SECTION("control: the same method without one_way waits for the gate") {
    auto call = silo.spawn([](Caller& c) -> silo::Task<sdk::Empty> {
      co_return co_await sdk::SdkRef(&c, "ow-none").Hold(name("gate-none"));
    });
    REQUIRE(eventually([&] { return silo.counter("hold_started:ow-none") == 1; }));
    CHECK(call.wait_for(200ms) == std::future_status::timeout);
    silo.open("gate-none");
    REQUIRE(call.wait_for(10s) == std::future_status::ready);
    call.get();
    CHECK(silo.counter("hold_done:ow-none") == 1);
  }
}

TEST_CASE("Logger: a grain's lines reach the silo's log at and above its level, with the grain id",
          "[conformance][sdk]") {
  Silo silo;
  auto log_at = [&](const std::string& marker) {
    return silo.run([marker](Caller& c) -> silo::Task<sdk::LogReply> {
      co_return co_await sdk::SdkRef(&c, "logger").Log(name(marker));
    });
  };
  struct Restore {
    ~Restore() { spdlog::default_logger()->set_level(spdlog::level::info); }
  } restore;

  spdlog::default_logger()->set_level(spdlog::level::warn);
  auto r = log_at("mark-warn");
  REQUIRE(r.enabled_size() == 5);
  CHECK_FALSE(r.enabled(0));
  CHECK_FALSE(r.enabled(1));
  CHECK_FALSE(r.enabled(2));
  CHECK(r.enabled(3));
  CHECK(r.enabled(4));
  CHECK(lines_with("mark-warn").size() == 2);
  CHECK(lines_with("warning grain sdk.Sdk/logger: mark-warn at warn").size() == 1);
  CHECK(lines_with("error grain sdk.Sdk/logger: mark-warn at error").size() == 1);

  spdlog::default_logger()->set_level(spdlog::level::trace);
  r = log_at("mark-trace");
  REQUIRE(r.enabled_size() == 5);
  for (int i = 0; i < 5; ++i)
    CHECK(r.enabled(i));
  CHECK(lines_with("mark-trace").size() == 5);
  CHECK(lines_with("trace grain sdk.Sdk/logger: mark-trace at trace").size() == 1);
  CHECK(lines_with("debug grain sdk.Sdk/logger: mark-trace at debug").size() == 1);
  CHECK(lines_with("info grain sdk.Sdk/logger: mark-trace at info").size() == 1);

  spdlog::default_logger()->set_level(spdlog::level::info);
  r = log_at("mark-info");
  CHECK(lines_with("mark-info").size() == 3);
  CHECK(lines_with("mark-info at debug").empty());
}

TEST_CASE("GrainRef::key() is the key it was made with, from a caller and from a grain",
          "[conformance][sdk]") {
  Silo silo;
  const std::string odd = "key with spaces/and:colons@1 \xce\xba";
  const auto keys = silo.run([odd](Caller& c) -> silo::Task<std::vector<std::string>> {
    const sdk::SdkRef ref(&c, odd);
    const auto copy = ref;
    co_return std::vector<std::string>{ref.key(), copy.key()};
  });
  CHECK(keys == std::vector<std::string>{odd, odd});
  const auto r = silo.run([&](Caller& c) -> silo::Task<sdk::KeyReply> {
    co_return co_await sdk::SdkRef(&c, "self").Key(name(odd));
  });
  CHECK(r.own_key() == "self");
  CHECK(r.ref_key() == odd);
  CHECK(r.callee_key() == odd);
}

TEST_CASE("registering a reminder again replaces it: one reminder, the new period", "[conformance][sdk]") {
  // A long refresh interval: registration itself must replace the reminder; a periodic re-read of the
  // table would hide a registration that left the old one scheduled.
  Silo silo(true, 30s);
  auto remind = [&](int period_ms) {
    silo.run([period_ms](Caller& c) -> silo::Task<void> {
      sdk::ReminderRequest r;
      r.set_name("r");
      r.set_due_ms(0);
      r.set_period_ms(period_ms);
      co_await sdk::SdkRef(&c, "rem").Remind(r);
    });
  };
  auto list = [&] {
    return silo.run([](Caller& c) -> silo::Task<sdk::ReminderList> {
      co_return co_await sdk::SdkRef(&c, "rem").Reminders({});
    });
  };
  remind(100);
  REQUIRE(eventually([&] { return silo.counter("tick:rem/r/100") >= 2; }));
  remind(600);
  const auto old_ticks = silo.counter("tick:rem/r/100");
  const auto l = list();
  REQUIRE(l.entries_size() == 1);
  CHECK(l.entries(0).name() == "r");
  CHECK(l.entries(0).period_ms() == 600);
  // Two ticks of the new period take at least 600 ms, in which the old 100 ms reminder, had it survived,
  // would tick about six times. One old tick may have been on its way when it was replaced.
  REQUIRE(eventually([&] { return silo.counter("tick:rem/r/600") >= 2; }));
  CHECK(silo.counter("tick:rem/r/100") <= old_ticks + 1);
  CHECK(list().entries_size() == 1);
}

TEST_CASE("unregistering an unknown reminder is a no-op: no error, other reminders stay",
          "[conformance][sdk]") {
  Silo silo(true);
  silo.run([](Caller& c) -> silo::Task<void> { co_await sdk::SdkRef(&c, "unrem").Unremind(name("never")); });
  silo.run([](Caller& c) -> silo::Task<void> {
    sdk::ReminderRequest r;
    r.set_name("keep");
    r.set_due_ms(60'000);
    r.set_period_ms(60'000);
    co_await sdk::SdkRef(&c, "unrem").Remind(r);
    co_await sdk::SdkRef(&c, "unrem").Unremind(name("never"));
    co_await sdk::SdkRef(&c, "unrem").Unremind(name("never"));
  });
  const auto l = silo.run([](Caller& c) -> silo::Task<sdk::ReminderList> {
    co_return co_await sdk::SdkRef(&c, "unrem").Reminders({});
  });
  REQUIRE(l.entries_size() == 1);
  CHECK(l.entries(0).name() == "keep");
  const auto id = silo.run(
      [](Caller& c) -> silo::Task<sdk::Ident> { co_return co_await sdk::SdkRef(&c, "unrem").Whoami({}); });
  CHECK(id.key() == "unrem");
}

TEST_CASE("a reminder that unregisters itself from its own tick ticks no more", "[conformance][sdk]") {
  // A long refresh interval: the service must stop the reminder when it is unregistered, not when it next
  // re-reads its table.
  Silo silo(true, 30s);
  silo.run([](Caller& c) -> silo::Task<void> {
    sdk::ReminderRequest r;
    r.set_name("once");
    r.set_due_ms(0);
    r.set_period_ms(100);
    co_await sdk::SdkRef(&c, "self-stop").Remind(r);
  });
  REQUIRE(eventually([&] { return silo.counter("tick:self-stop/once/100") >= 1; }));
  const auto l = silo.run([](Caller& c) -> silo::Task<sdk::ReminderList> {
    co_return co_await sdk::SdkRef(&c, "self-stop").Reminders({});
  });
  CHECK(l.entries_size() == 0);
  // Ticks are serialized per reminder, so none can be in flight once the first one unregistered it. Eight
  // periods: a reminder still scheduled would tick about eight more times.
  std::this_thread::sleep_for(800ms);
  CHECK(silo.counter("tick:self-stop/once/100") == 1);
}

TEST_CASE("two named PersistentStates of one grain are stored, cleared and read back independently",
          "[conformance][sdk]") {
  Silo silo;
  auto call = [&](std::function<silo::Task<sdk::Both>(sdk::TwoStatesRef)> f) {
    return silo.run(
        [f](Caller& c) -> silo::Task<sdk::Both> { co_return co_await f(sdk::TwoStatesRef(&c, "two")); });
  };
  auto deactivate_and_get = [&] {
    silo.run([](Caller& c) -> silo::Task<void> { co_await sdk::TwoStatesRef(&c, "two").Deactivate({}); });
    REQUIRE(eventually([&] { return silo.rt->activation_count() == 0; }));
    return call([](sdk::TwoStatesRef r) { return r.Get({}); });
  };
  sdk::StateA a;
  a.set_a(1);
  call([a](sdk::TwoStatesRef r) { return r.SetA(a); });
  a.set_a(2);
  call([a](sdk::TwoStatesRef r) { return r.SetA(a); });
  sdk::StateB b;
  b.set_b("bee");
  auto both = call([b](sdk::TwoStatesRef r) { return r.SetB(b); });
  CHECK(both.etag_a() == 2);
  CHECK(both.etag_b() == 1);

  both = deactivate_and_get();
  CHECK(both.a() == 2);
  CHECK(both.b() == "bee");
  CHECK(both.etag_a() == 2);
  CHECK(both.etag_b() == 1);
  // Two records, one per state name.
  auto sa = silo.stored("sdk.TwoStates", "two", "a");
  auto sb = silo.stored("sdk.TwoStates", "two", "b");
  REQUIRE(sa.ok());
  REQUIRE(sb.ok());
  CHECK(sa.etag == 2);
  CHECK(sb.etag == 1);
  sdk::StateA stored_a;
  sdk::StateB stored_b;
  REQUIRE(stored_a.ParseFromString(sa.data));
  REQUIRE(stored_b.ParseFromString(sb.data));
  CHECK(stored_a.a() == 2);
  CHECK(stored_b.b() == "bee");

  both = call([](sdk::TwoStatesRef r) { return r.ClearA({}); });
  CHECK(both.etag_a() == 0);
  CHECK(both.b() == "bee");
  // Cleared: a tombstone one version above the last write (versions never go back), state b untouched.
  const auto cleared_a = silo.stored("sdk.TwoStates", "two", "a");
  CHECK(cleared_a.tombstone);
  CHECK(cleared_a.etag == sa.etag + 1);
  CHECK_FALSE(silo.stored("sdk.TwoStates", "two", "b").tombstone);
  CHECK(silo.stored("sdk.TwoStates", "two", "b").etag == 1);
  both = deactivate_and_get();
  CHECK(both.a() == 0);
  CHECK(both.etag_a() == 0);
  CHECK(both.b() == "bee");
  CHECK(both.etag_b() == 1);
}

TEST_CASE("PersistentState: stored bytes that do not parse fail every call with DATA_LOSS, untouched",
          "[conformance][sdk]") {
  Silo silo;
  // Field 1, length-delimited, announces 5 bytes and has 2: no protobuf parser accepts it.
  const std::string garbage(
      "\x0a\x05"
      "ab",
      4);
  std::promise<silo::storage::Outcome> p;
  silo.registry->find("default")->write({"sdk.TwoStates", "lossy", "b"}, garbage, 0,
                                        [&p](silo::storage::Outcome o) { p.set_value(o); });
  REQUIRE(p.get_future().get().ok());

  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto e = expect_error([&] {
      silo.run([](Caller& c) -> silo::Task<sdk::Both> {
        co_return co_await sdk::TwoStatesRef(&c, "lossy").Get({});
      });
    });
    CHECK(e.code() == StatusCode::data_loss);
    CHECK_THAT(std::string(e.what()),
               Catch::Contains("stored state 'b' of lossy does not parse as sdk.StateB"));
  }
  // Not overwritten by an empty value, not cleared: the bytes wait for an operator.
  const auto after = silo.stored("sdk.TwoStates", "lossy", "b");
  CHECK(after.etag == 1);
  CHECK(after.data == garbage);
  CHECK(silo.stored("sdk.TwoStates", "lossy", "a").etag == 0);
  // The silo keeps serving the other keys of the type.
  const auto ok = silo.run(
      [](Caller& c) -> silo::Task<sdk::Both> { co_return co_await sdk::TwoStatesRef(&c, "fine").Get({}); });
  CHECK(ok.etag_b() == 0);
}

TEST_CASE("a plugin whose SILO_PLUGIN body throws is refused with the exception's message, and silod goes on",
          "[conformance][sdk][plugins]") {
  log_sink();
  const std::string message = "deliberate failure after registering sdk.Orphan";
  SECTION("not required: refused and logged, the other plugin loads and serves") {
    silo::runtime::RuntimeOptions options;
    options.threads = 1;
    silo::runtime::Runtime rt(options);
    const auto results = silo::plugins::load_plugins(plugins({"throwingplugin", "sdkgrains"}, false), {}, rt);
    REQUIRE(results.size() == 2);
    CHECK_FALSE(results[0].ok);
    CHECK_THAT(results[0].error, Catch::Contains(message));
    CHECK(results[1].ok);
    CHECK(lines_with("plugins: skipped 'throwingplugin'").size() == 1);
    CHECK(lines_with(message).size() >= 1);
    // All or nothing: the type it registered before throwing is not served.
    CHECK(rt.find_class("sdk.Orphan") == nullptr);
    rt.start();
    const auto e = expect_error([&] {
      rt.spawn<sdk::Ident>(0, [](Caller& c) -> silo::Task<sdk::Ident> {
          co_return co_await sdk::OrphanRef(&c, "o").Whoami({});
        }).get();
    });
    CHECK(e.code() == StatusCode::not_found);
    const auto id = rt.spawn<sdk::Ident>(0, [](Caller& c) -> silo::Task<sdk::Ident> {
                        co_return co_await sdk::SdkRef(&c, "after").Whoami({});
                      }).get();
    CHECK(id.key() == "after");
    rt.stop(std::chrono::steady_clock::now() + 5s);
  }
  SECTION("required: a start-up error that carries the message") {
    silo::runtime::Runtime rt({});
    try {
      silo::plugins::load_plugins(plugins({"throwingplugin"}, true), {}, rt);
      FAIL("load_plugins accepted a plugin whose registration threw");
    } catch (const std::runtime_error& e) {
      CHECK_THAT(std::string(e.what()), Catch::Contains(message));
      CHECK_THAT(std::string(e.what()), Catch::Contains("throwingplugin"));
    }
  }
}
