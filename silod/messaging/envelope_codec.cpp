#include "messaging/envelope_codec.hpp"

#include <algorithm>

#include "runtime/reminders.hpp"

namespace silo::messaging {

namespace in = silo::internal;
using runtime::Clock;
using runtime::Request;

namespace {
// Reminder ticks travel as a pseudo-method no proto can declare ('#' is not an identifier character).
constexpr const char* reminder_method_name = "#reminder";
}  // namespace

std::int64_t to_unix_ms(Clock::time_point deadline) {
  const auto left = deadline - Clock::now();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             (std::chrono::system_clock::now() +
              std::chrono::duration_cast<std::chrono::system_clock::duration>(left))
                 .time_since_epoch())
      .count();
}

Clock::duration left_until(std::int64_t deadline_unix_ms) {
  const auto at = std::chrono::system_clock::time_point(std::chrono::milliseconds(deadline_unix_ms));
  return std::chrono::duration_cast<Clock::duration>(at - std::chrono::system_clock::now());
}

in::Envelope encode_request(Request& request) {
  in::Envelope env;
  env.set_id(request.call_id);
  env.set_kind(request.call_id == 0 ? in::Envelope::ONE_WAY : in::Envelope::REQUEST);
  env.set_grain_type(request.cls->name());
  env.set_grain_key(request.key);
  env.set_method(request.kind == Request::Kind::reminder_tick ? reminder_method_name : request.method->name);
  if (request.arg)
    request.arg->SerializeToString(env.mutable_payload());
  else
    env.set_payload(std::move(request.arg_bytes));
  if (request.deadline != Clock::time_point::max()) env.set_deadline_unix_ms(to_unix_ms(request.deadline));
  for (const auto& link : request.chain) {
    auto* l = env.add_chain();
    l->set_grain_type(link.cls->name());
    l->set_grain_key(link.key);
  }
  env.set_hops(request.hops);
  return env;
}

in::Envelope encode_reply(const Request& request, runtime::Reply reply, const std::string& location) {
  in::Envelope env;
  env.set_id(request.call_id);
  env.set_kind(in::Envelope::RESPONSE);
  env.set_code(static_cast<int>(reply.code));
  if (reply.code != StatusCode::ok) {
    env.set_error(std::move(reply.error));
  } else if (reply.response) {
    reply.response->SerializeToString(env.mutable_payload());
  } else {
    env.set_payload(std::move(reply.response_bytes));
  }
  env.set_not_run(reply.not_run);
  env.set_location(reply.location.empty() ? location : reply.location);
  env.set_grain_type(request.cls->name());
  env.set_grain_key(request.key);
  return env;
}

DecodedRequest decode_request(in::Envelope& env, const ClassFinder& find_class,
                              std::chrono::milliseconds default_timeout, const std::string& self) {
  DecodedRequest out;
  // Checked first and against the absolute deadline: a request that arrives after it (its sender froze,
  // its bytes waited in a socket) must not run, however long it was in flight.
  Clock::duration left = default_timeout;
  if (env.deadline_unix_ms() != 0) {
    left = left_until(env.deadline_unix_ms());
    if (left <= Clock::duration::zero()) {
      out.code = StatusCode::deadline_exceeded;
      out.error = env.grain_type() + "." + env.method() + " reached silo " + self + " " +
                  std::to_string(-std::chrono::duration_cast<std::chrono::milliseconds>(left).count()) +
                  " ms after its deadline; not run";
      return out;
    }
  }
  const runtime::GrainClass* cls = find_class(env.grain_type());
  if (!cls) {
    out.code = StatusCode::unimplemented;
    out.error = "grain type " + env.grain_type() + " is not loaded on silo " + self;
    return out;
  }
  const MethodInfo* method = nullptr;
  const bool reminder = env.method() == reminder_method_name;
  if (reminder) method = &runtime::reminder_method;
  for (const auto& m : cls->info->methods)
    if (!reminder && env.method() == m.name) method = &m;
  if (!method) {
    out.code = StatusCode::unimplemented;
    out.error = env.grain_type() + " has no method " + env.method();
    return out;
  }
  auto r = std::make_unique<Request>();
  if (reminder) r->kind = Request::Kind::reminder_tick;
  r->cls = cls;
  r->key = std::move(*env.mutable_grain_key());
  r->method = method;
  r->arg_bytes = std::move(*env.mutable_payload());
  for (const auto& link : env.chain()) {
    if (const auto* c = find_class(link.grain_type()))
      r->chain.push_back(runtime::ChainLink{c, link.grain_key()});
  }
  r->deadline = Clock::now() + left;  // queued past it, the runtime drops it unrun (activation.cpp)
  r->hops = env.hops();
  out.request = std::move(r);
  return out;
}

runtime::Reply decode_reply(in::Envelope& env) {
  runtime::Reply reply;
  reply.code = static_cast<StatusCode>(env.code());
  reply.error = std::move(*env.mutable_error());
  reply.response_bytes = std::move(*env.mutable_payload());
  reply.location = std::move(*env.mutable_location());
  reply.not_run = env.not_run();
  return reply;
}

}  // namespace silo::messaging
