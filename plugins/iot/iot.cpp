// The IoT sample grains. A Thermostat keeps its latest reading and target in durable state (provider
// "default": memory in config/silod.dev.yaml, PostgreSQL in config/silod.cluster.yaml); a Home knows its
// thermostats, averages their readings by calling them (grain-to-grain), and refreshes a stored summary
// from a reminder every minute, whether or not anybody calls it.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <silo/silo.hpp>

#include "iot.silo.h"

namespace {

std::string celsius(double c) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f C", c);
  return buf;
}

class Thermostat final : public iot::ThermostatGrain {
 public:
  silo::Task<void> on_activate() override { co_await state_.read(); }

  silo::Task<iot::Status> ReportReading(const iot::Reading& reading) override {
    state_->set_current_celsius(reading.celsius());
    state_->set_readings(state_->readings() + 1);
    co_await state_.write();
    co_return status();
  }

  silo::Task<iot::Status> SetTarget(const iot::Target& target) override {
    if (target.celsius() < -50 || target.celsius() > 60) {
      throw silo::Error(silo::StatusCode::invalid_argument,
                        "target " + celsius(target.celsius()) + " is outside -50..60 C");
    }
    state_->set_target_celsius(target.celsius());
    co_await state_.write();
    logger().info("target set to " + celsius(target.celsius()));
    co_return status();
  }

  silo::Task<iot::Status> GetStatus(const iot::StatusRequest&) override { co_return status(); }

 private:
  iot::Status status() const {
    iot::Status s;
    s.set_id(key());
    s.set_current_celsius(state_->current_celsius());
    s.set_target_celsius(state_->target_celsius());
    s.set_readings(state_->readings());
    return s;
  }
  silo::PersistentState<iot::ThermostatState> state_{*this, "default", "thermostat"};
};

class Home final : public iot::HomeGrain {
 public:
  silo::Task<void> on_activate() override { co_await state_.read(); }

  silo::Task<iot::HomeSummary> AddThermostat(const iot::AddThermostatRequest& req) override {
    if (req.thermostat_id().empty()) {
      throw silo::Error(silo::StatusCode::invalid_argument, "thermostat_id must not be empty");
    }
    auto& ids = *state_->mutable_thermostats();
    if (std::find(ids.begin(), ids.end(), req.thermostat_id()) == ids.end()) {
      ids.Add(std::string(req.thermostat_id()));
      co_await state_.write();
    }
    if (!reminder_registered_) {
      // Idempotent: registering the same name again just replaces the schedule.
      co_await register_reminder("summary", std::chrono::minutes(1), std::chrono::minutes(1));
      reminder_registered_ = true;
    }
    co_return co_await summary();
  }

  silo::Task<iot::HomeSummary> GetSummary(const iot::HomeSummaryRequest&) override {
    co_return co_await summary();
  }

  silo::Task<void> on_reminder(const silo::ReminderTick& tick) override {
    *state_->mutable_last_summary() = co_await summary();
    state_->set_summaries(state_->summaries() + 1);
    co_await state_.write();
    logger().info("reminder '" + tick.name + "': " + std::to_string(state_->last_summary().thermostats()) +
                  " thermostats, average " + celsius(state_->last_summary().average_celsius()) +
                  (tick.late ? " (late tick)" : ""));
  }

 private:
  silo::Task<iot::HomeSummary> summary() {
    iot::HomeSummary out;
    double sum = 0;
    int with_readings = 0;
    for (const auto& id : state_->thermostats()) {
      const iot::Status s = co_await grain<iot::ThermostatRef>(id).GetStatus(iot::StatusRequest{});
      if (s.readings() > 0) {  // a thermostat that never reported does not pull the average to 0 C
        sum += s.current_celsius();
        ++with_readings;
      }
    }
    out.set_thermostats(state_->thermostats_size());
    out.set_average_celsius(with_readings ? sum / with_readings : 0.0);
    co_return out;
  }

  silo::PersistentState<iot::HomeState> state_{*this, "default", "home"};
  bool reminder_registered_ = false;
};

}  // namespace

SILO_PLUGIN(iot) {
  registry.add<Thermostat>();
  registry.add<Home>();
}
