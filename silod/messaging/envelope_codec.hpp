#pragma once
// The silo-to-silo wire form of a call: runtime requests and replies <-> internal::Envelope. Pure
// functions, so the router only decides where a call goes and the format is tested on its own.

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "runtime/message.hpp"
#include "silo/internal.pb.h"

namespace silo::messaging {

/// The envelope of a request to another silo. Consumes the request's argument (serialized here).
internal::Envelope encode_request(runtime::Request& request);

/// The response envelope for `request` (which came from another silo); `location` names the silo that ran
/// it, so the caller can correct its location cache.
internal::Envelope encode_reply(const runtime::Request& request, runtime::Reply reply,
                                const std::string& location);

/// The request an envelope carries, or why it cannot be served here (`request` null, `code`/`error` set;
/// such a request did not run: its deadline passed before it arrived (DEADLINE_EXCEEDED), or its type or
/// method is unknown here). The absolute deadline (Envelope.deadline_unix_ms) becomes the request's
/// steady-clock deadline; without one it gets `default_timeout` from now.
/// Sets neither call id nor reply sink: the caller decides how the reply goes back.
struct DecodedRequest {
  runtime::RequestPtr request;
  StatusCode code = StatusCode::ok;
  std::string error;
};
using ClassFinder = std::function<const runtime::GrainClass*(std::string_view type)>;
DecodedRequest decode_request(internal::Envelope& env, const ClassFinder& find_class,
                              std::chrono::milliseconds default_timeout, const std::string& self);

/// `deadline` (steady clock) as unix ms, the wire form; and the time left until such a wire deadline.
/// Assumes the silos' clocks agree, as the membership lease does.
std::int64_t to_unix_ms(runtime::Clock::time_point deadline);
runtime::Clock::duration left_until(std::int64_t deadline_unix_ms);

/// The reply a response envelope carries (payload left serialized), with its not-run mark.
runtime::Reply decode_reply(internal::Envelope& env);

}  // namespace silo::messaging
