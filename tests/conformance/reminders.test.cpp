// Conformance: reminders tick as calls (activating the grain), stop when unregistered, refuse periods below
// the minimum, and deliver a tick that fell due while no service ran late, once, instead of skipping it.

#include <algorithm>
#include <sstream>

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

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The ticks this silo delivered to Alarm `key`, in delivery order.
std::vector<test::TickRecord> ticks_of(Silo& silo, const std::string& key) {
  const auto log = silo.run([key](Caller& c) -> silo::Task<test::TickLog> {
    co_return co_await test::AlarmRef(&c, key).Ticks(test::Empty{});
  });
  return {log.ticks().begin(), log.ticks().end()};
}

std::string describe(const std::vector<test::TickRecord>& log) {
  std::ostringstream out;
  for (const auto& t : log)
    out << "  due " << t.due_ms() << " ran " << t.at_ms() << (t.late() ? " late" : "") << "\n";
  return out.str();
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
  constexpr std::int64_t period = 300;
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
  const std::int64_t restarted = unix_ms();
  silo.start_reminders(table.get(), 100ms);
  // The late tick, then the regular schedule for a few periods.
  std::vector<test::TickRecord> after;
  const bool resumed = Silo::eventually(
      [&] {
        after.clear();
        for (const auto& t : ticks_of(silo, "a3"))
          if (t.at_ms() >= restarted) after.push_back(t);
        return after.size() >= 4;
      },
      5s);
  const auto log = ticks_of(silo, "a3");
  INFO("restarted at " << restarted << "; ticks:\n" << describe(log));
  REQUIRE(resumed);
  // Once: exactly one late tick, the first after the restart, and it carries the latest missed due time
  // (a replay of the missed ticks one by one would start with the oldest, ~4 periods back).
  CHECK(after[0].late());
  CHECK(std::count_if(after.begin(), after.end(), [](const auto& t) { return t.late(); }) == 1);
  CHECK(after[0].due_ms() > restarted - period);
  // Never twice: due times strictly increase over the whole log, and after the late tick the schedule keeps
  // its grid (every due a whole number of periods after the late one).
  for (std::size_t i = 1; i < log.size(); ++i)
    CHECK(log[i].due_ms() > log[i - 1].due_ms());
  for (const auto& t : after)
    CHECK((t.due_ms() - after[0].due_ms()) % period == 0);
  // No extra tick: from the late tick on, ticks come no faster than the schedule allows. The late tick's due
  // L is less than a period before it ran (t0), the others fall at L + k * period, so by time t1 at most
  // 2 + (t1 - t0) / period ticks have run.
  const std::int64_t t0 = after.front().at_ms(), t1 = after.back().at_ms();
  CHECK(static_cast<std::int64_t>(after.size()) <= 2 + (t1 - t0) / period);
  silo.run(
      [](Caller& c) -> silo::Task<void> { co_await test::AlarmRef(&c, "a3").Cancel(alarm("late", 0, 0)); });
}
