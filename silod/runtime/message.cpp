#include "runtime/message.hpp"

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

}  // namespace silo::runtime
