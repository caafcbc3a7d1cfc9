// The silo-to-silo envelope codec (silod/messaging/envelope_codec.*): what one silo encodes, the other
// decodes to the same call and reply.

#include <chrono>
#include <string>
#include <thread>

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
  // The deadline travels absolute (unix ms), so time spent in flight counts against it.
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  CHECK(env.deadline_unix_ms() > now_ms + 4000);
  CHECK(env.deadline_unix_ms() <= now_ms + 5000);

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
  CHECK(env.deadline_unix_ms() == 0);                      // no deadline
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

// Defect (chaos harness): a silo frozen right after encoding a call delivered it 6.8 s later and it ran,
// because the envelope carried the time left at encoding, which the receiver counted from the arrival.
TEST_CASE("a request that arrives after its deadline is refused as not run", "[codec]") {
  const rt::GrainClass cls = make_class();
  auto find = [&](std::string_view t) { return t == "test.Thing" ? &cls : nullptr; };
  rt::Request r;
  r.cls = &cls;
  r.key = "k";
  r.method = &methods[1];
  r.call_id = 9;
  r.deadline = rt::Clock::now() + 100ms;
  silo::internal::Envelope env = msg::encode_request(r);
  silo::internal::Envelope early = env;
  auto in_time = msg::decode_request(early, find, 30s, "me");
  REQUIRE(in_time.request);
  CHECK(in_time.request->deadline <= rt::Clock::now() + 100ms);  // the same deadline, not a fresh timeout

  std::this_thread::sleep_for(150ms);  // the envelope "waits in a frozen sender's socket"
  auto late = msg::decode_request(env, find, 30s, "me");
  CHECK_FALSE(late.request);
  CHECK(late.code == silo::StatusCode::deadline_exceeded);
  CHECK(late.error.find("after its deadline") != std::string::npos);
}

TEST_CASE("a reply's not-run mark survives encode and decode", "[codec]") {
  const rt::GrainClass cls = make_class();
  rt::Request r;
  r.cls = &cls;
  r.key = "k";
  r.call_id = 7;
  auto refused = rt::Reply::failure(silo::StatusCode::unavailable, "fenced");
  refused.not_run = true;
  auto env = msg::encode_reply(r, std::move(refused), "x");
  CHECK(env.not_run());
  CHECK(msg::decode_reply(env).not_run);
  auto ran = msg::encode_reply(r, rt::Reply::failure(silo::StatusCode::aborted, "no"), "x");
  CHECK_FALSE(msg::decode_reply(ran).not_run);
}
