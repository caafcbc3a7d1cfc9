// The silo-to-silo envelope codec (silod/messaging/envelope_codec.*): what one silo encodes, the other
// decodes to the same call and reply.

#include <chrono>
#include <string>

#include <catch2/catch.hpp>

#include "messaging/envelope_codec.hpp"
#include "runtime/reminders.hpp"

using namespace std::chrono_literals;
namespace rt = silo::runtime;
namespace msg = silo::messaging;

namespace {

extern const silo::GrainTypeInfo type_info;
const silo::MethodInfo methods[] = {
    {"Get", 0, nullptr, nullptr, true, false, false, 0, &type_info},
    {"Set", 1, nullptr, nullptr, false, false, false, 0, &type_info},
};
const silo::GrainTypeInfo type_info{
    "test.Thing",        nullptr, silo::Placement::random, "", false, false, false, 0, 0,
    silo::OnError::keep, methods};

rt::GrainClass make_class() {
  rt::GrainClass c;
  c.info = &type_info;
  return c;
}

}  // namespace

TEST_CASE("a request survives encode and decode", "[codec]") {
  const rt::GrainClass cls = make_class();
  rt::Request r;
  r.cls = &cls;
  r.key = "k1";
  r.method = &methods[1];
  r.arg_bytes = "payload";
  r.call_id = 42;
  r.hops = 2;
  r.deadline = rt::Clock::now() + 5s;
  r.chain.push_back(rt::ChainLink{&cls, "caller"});
  silo::internal::Envelope env = msg::encode_request(r);
  CHECK(env.kind() == silo::internal::Envelope::REQUEST);
  CHECK(env.timeout_ms() > 4000);
  CHECK(env.timeout_ms() <= 5000);

  auto find = [&](std::string_view t) { return t == "test.Thing" ? &cls : nullptr; };
  auto decoded = msg::decode_request(env, find, 30s, "me");
  REQUIRE(decoded.request);
  CHECK(decoded.request->cls == &cls);
  CHECK(decoded.request->key == "k1");
  CHECK(decoded.request->method == &methods[1]);
  CHECK(decoded.request->arg_bytes == "payload");
  CHECK(decoded.request->hops == 2);
  REQUIRE(decoded.request->chain.size() == 1);
  CHECK(decoded.request->chain[0].key == "caller");
  CHECK(decoded.request->deadline <= rt::Clock::now() + 5s);
}

TEST_CASE("one-way calls, reminder ticks, and what cannot be decoded", "[codec]") {
  const rt::GrainClass cls = make_class();
  rt::Request r;
  r.cls = &cls;
  r.key = "k";
  r.kind = rt::Request::Kind::reminder_tick;
  r.method = &rt::reminder_method;
  silo::internal::Envelope env = msg::encode_request(r);
  CHECK(env.kind() == silo::internal::Envelope::ONE_WAY);  // call id 0
  CHECK(env.timeout_ms() == 0);                            // no deadline
  auto find = [&](std::string_view t) { return t == "test.Thing" ? &cls : nullptr; };
  silo::internal::Envelope copy = env;
  auto decoded = msg::decode_request(copy, find, 30s, "me");
  REQUIRE(decoded.request);
  CHECK(decoded.request->kind == rt::Request::Kind::reminder_tick);

  env.set_method("Nope");
  CHECK(msg::decode_request(env, find, 30s, "me").code == silo::StatusCode::unimplemented);
  env.set_grain_type("other.Type");
  const auto unknown = msg::decode_request(env, find, 30s, "me");
  CHECK(unknown.code == silo::StatusCode::unimplemented);
  CHECK(unknown.error.find("other.Type") != std::string::npos);
}

TEST_CASE("a reply survives encode and decode, with the silo that ran it", "[codec]") {
  const rt::GrainClass cls = make_class();
  rt::Request r;
  r.cls = &cls;
  r.key = "k";
  r.call_id = 7;
  rt::Reply ok;
  ok.response_bytes = "result";
  auto env = msg::encode_reply(r, std::move(ok), "127.0.0.1:1@1");
  CHECK(env.id() == 7);
  CHECK(env.grain_key() == "k");
  rt::Reply back = msg::decode_reply(env);
  CHECK(back.code == silo::StatusCode::ok);
  CHECK(back.response_bytes == "result");
  CHECK(back.location == "127.0.0.1:1@1");

  auto failed = msg::encode_reply(r, rt::Reply::failure(silo::StatusCode::aborted, "no"), "x");
  rt::Reply f = msg::decode_reply(failed);
  CHECK(f.code == silo::StatusCode::aborted);
  CHECK(f.error == "no");
}
