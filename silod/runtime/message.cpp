#include "runtime/message.hpp"

#include <sstream>

#include "runtime/reminders.hpp"

namespace silo::runtime {

std::string Request::describe() const {
  std::string s = cls ? cls->name() : "?";
  s += '/';
  s += key;
  s += '.';
  s += kind == Kind::timer_tick ? "<timer>" : (method ? method->name : "?");
  return s;
}

std::string describe_chain(const CallChain& chain, const GrainClass* cls, const std::string& key) {
  std::string s;
  for (const auto& link : chain) {
    s += link.cls->name();
    s += '/';
    s += link.key;
    s += " -> ";
  }
  s += cls->name();
  s += '/';
  s += key;
  return s;
}

const MethodInfo reminder_method{"on_reminder", -1, nullptr, nullptr, false, false, false, 0, nullptr};

std::string encode_tick(const ReminderTick& tick) {
  const auto due = std::chrono::duration_cast<std::chrono::milliseconds>(tick.due.time_since_epoch()).count();
  return tick.name + '\n' + std::to_string(due) + '\n' + std::to_string(tick.period.count()) + '\n' +
         (tick.late ? "1" : "0");
}

bool decode_tick(const std::string& bytes, ReminderTick& out) {
  std::istringstream in(bytes);
  std::string due, period, late;
  if (!std::getline(in, out.name) || !std::getline(in, due) || !std::getline(in, period) ||
      !std::getline(in, late)) {
    return false;
  }
  try {
    out.due = std::chrono::system_clock::time_point(std::chrono::milliseconds(std::stoll(due)));
    out.period = std::chrono::milliseconds(std::stoll(period));
  } catch (const std::exception&) {
    return false;
  }
  out.late = late == "1";
  return true;
}

}  // namespace silo::runtime
