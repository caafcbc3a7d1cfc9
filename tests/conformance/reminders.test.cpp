// Conformance: reminders tick as calls (activating the grain), stop when unregistered, refuse periods below
// the minimum, and deliver a tick that fell due while no service ran late, once, instead of skipping it.

#include "fixture.hpp"

using namespace std::chrono_literals;
using conformance::Silo;
using silo::StatusCode;
using silo::detail::Caller;

namespace {
test::AlarmRequest alarm(const std::string& name, int due_ms, int period_ms) {
  test::AlarmRequest r;
  r.set_name(name);
  r.set_due_ms(due_ms);
  r.set_period_ms(period_ms);
  return r;
}
}  // namespace

TEST_CASE("reminders tick as calls, keep ticking across deactivation, stop when unregistered",
          "[conformance][reminders]") {
  auto table = silo::reminders::make_memory_reminder_table();
  Silo silo;
  silo.start_reminders(table.get(), 100ms);
  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::AlarmRef(&c, "a1").Set(alarm("beep", 0, 200)); });
  const auto names = silo.run([](Caller& c) -> silo::Task<test::AlarmList> {
    co_return co_await test::AlarmRef(&c, "a1").List(test::Empty{});
  });
  REQUIRE(names.names_size() == 1);
  CHECK(names.names(0) == "beep");
  REQUIRE(Silo::eventually([&] { return silo.probe("alarm:a1/beep") >= 3; }, 5s));

  // A reminder activates its grain again after deactivation.
  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::AlarmRef(&c, "a1").Deactivate(test::Empty{}); });
  const auto activations = silo.probe("alarm_activations:a1");
  const auto ticks = silo.probe("alarm:a1/beep");
  REQUIRE(Silo::eventually([&] { return silo.probe("alarm_activations:a1") > activations; }, 5s));
  CHECK(silo.probe("alarm:a1/beep") > ticks);

  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::AlarmRef(&c, "a1").Cancel(alarm("beep", 0, 0)); });
  std::this_thread::sleep_for(300ms);  // a tick already in flight may still land
  const auto after = silo.probe("alarm:a1/beep");
  std::this_thread::sleep_for(600ms);
  CHECK(silo.probe("alarm:a1/beep") == after);
}

TEST_CASE("a reminder period below reminders.min_period is refused", "[conformance][reminders]") {
  auto table = silo::reminders::make_memory_reminder_table();
  Silo silo;
  silo.start_reminders(table.get(), 1000ms);
  const auto e = conformance::expect_error([&] {
    silo.run(
        [](Caller& c) -> silo::Task<void> { co_await test::AlarmRef(&c, "a2").Set(alarm("fast", 0, 100)); });
  });
  CHECK(e.code() == StatusCode::invalid_argument);
  CHECK_THAT(std::string(e.what()), Catch::Contains("below reminders.min_period"));
}

TEST_CASE("a tick due while no silo ran the reminder is delivered late, once", "[conformance][reminders]") {
  auto table = silo::reminders::make_memory_reminder_table();
  Silo silo;
  silo.start_reminders(table.get(), 100ms);
  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::AlarmRef(&c, "a3").Set(alarm("late", 300, 300)); });
  REQUIRE(Silo::eventually([&] { return silo.probe("alarm:a3/late") >= 1; }, 5s));
  silo.stop_reminders();  // the reminder's silo is "down" for ~4 periods
  const auto before = silo.probe("alarm:a3/late");
  std::this_thread::sleep_for(1200ms);
  CHECK(silo.probe("alarm:a3/late") == before);
  silo.start_reminders(table.get(), 100ms);
  REQUIRE(Silo::eventually([&] { return silo.probe("alarm:a3/late") > before; }, 3s));
  CHECK(silo.probe("alarm_late:a3") == 1);
  // Once, not once per missed period: shortly after the late tick only the regular schedule resumes.
  std::this_thread::sleep_for(150ms);
  CHECK(silo.probe("alarm:a3/late") <= before + 2);
}
