// The IoT sample grains. A Thermostat keeps the latest reading and its target; a Home knows its
// thermostats and averages their readings by calling them (grain-to-grain).

#include <set>
#include <string>

#include <silo/silo.hpp>

#include "iot.silo.h"

namespace {

class Thermostat final : public iot::ThermostatGrain {
 public:
  silo::Task<iot::Status> ReportReading(const iot::Reading& reading) override {
    status_.set_current_celsius(reading.celsius());
    status_.set_readings(status_.readings() + 1);
    co_return status();
  }

  silo::Task<iot::Status> SetTarget(const iot::Target& target) override {
    if (target.celsius() < -50 || target.celsius() > 60) {
      throw silo::Error(silo::StatusCode::invalid_argument,
                        "target " + std::to_string(target.celsius()) + " C is outside -50..60 C");
    }
    status_.set_target_celsius(target.celsius());
    logger().info("target set to " + std::to_string(target.celsius()) + " C");
    co_return status();
  }

  silo::Task<iot::Status> GetStatus(const iot::StatusRequest&) override { co_return status(); }

 private:
  iot::Status status() const {
    iot::Status s = status_;
    s.set_id(key());
    return s;
  }
  iot::Status status_;
};

class Home final : public iot::HomeGrain {
 public:
  silo::Task<iot::HomeSummary> AddThermostat(const iot::AddThermostatRequest& req) override {
    if (req.thermostat_id().empty()) {
      throw silo::Error(silo::StatusCode::invalid_argument, "thermostat_id must not be empty");
    }
    thermostats_.insert(req.thermostat_id());
    co_return co_await summary();
  }

  silo::Task<iot::HomeSummary> GetSummary(const iot::HomeSummaryRequest&) override {
    co_return co_await summary();
  }

 private:
  silo::Task<iot::HomeSummary> summary() {
    iot::HomeSummary out;
    double sum = 0;
    int with_readings = 0;
    for (const auto& id : thermostats_) {
      const iot::Status s = co_await grain<iot::ThermostatRef>(id).GetStatus(iot::StatusRequest{});
      if (s.readings() > 0) {
        sum += s.current_celsius();
        ++with_readings;
      }
    }
    out.set_thermostats(static_cast<int>(thermostats_.size()));
    out.set_average_celsius(with_readings ? sum / with_readings : 0.0);
    co_return out;
  }
  std::set<std::string> thermostats_;
};

}  // namespace

SILO_PLUGIN(iot) {
  registry.add<Thermostat>();
  registry.add<Home>();
}
