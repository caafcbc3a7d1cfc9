// Stale envelopes: a call must not run when it reaches its target after its deadline, or from a silo that
// was declared dead (a process frozen by SIGSTOP and resumed later), and a refusal by another silo reaches
// the client as "not run". Real silod processes on loopback sharing a PostgreSQL membership table
// (pg_virtualenv), and the dirgrains test plugin (Tracker: counts its turns, sleeps, then calls another).
//
// Defect (chaos harness, seed 1): Write(196) went through silo-2's gateway 50 ms before silo-2 was
// SIGSTOPped; writes 197-205 were acknowledged by the grain's one activation on silo-3; silo-2, resumed
// 6.8 s later and already declared dead, delivered Write(196), which ran and overwrote 205.

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>

#include <silo/client.hpp>
#include <silo/error.hpp>
#include "integration/cluster_admin.hpp"
#include "pg_server.hpp"

#include "dirgrains.pb.h"
#include "dirgrains.silo.h"
#include "process.hpp"
#include "silo/gateway.grpc.pb.h"
#include "silo/internal.grpc.pb.h"

using namespace std::chrono_literals;
using silo::test::SilodProcess;
using silo::test::wait_until;
using silo::test::yaml_quote;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace gw = silo::gateway;
namespace in = silo::internal;

namespace {

using silo::test::activations_of;
using silo::test::cluster_status;
using silo::test::tail;

constexpr auto kReadyTimeout = 30s;
constexpr auto kViewTimeout = 20s;
const std::string kTracker = "dirtest.Tracker";

std::string unique_cluster(const std::string& what) {
  return silo::test::unique_cluster("se", what);
}

struct Node {
  std::string name;
  int silo_port = 0;
  int gateway_port = 0;
  std::unique_ptr<SilodProcess> process;
  std::string address() const { return silo::test::loopback_host() + ":" + std::to_string(silo_port); }
  std::string gateway() const { return silo::test::loopback_host() + ":" + std::to_string(gateway_port); }
  bool running() const { return process && process->running(); }
};

class Cluster {
 public:
  explicit Cluster(const std::string& what, std::string membership_extra = "")
      : id_(unique_cluster(what)), extra_(std::move(membership_extra)) {
    silo::test::require_postgres("silo_stale_envelope_tests");
  }

  Node& node(std::size_t i) { return *nodes_.at(i); }

  void start_nodes(std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
      auto n = std::make_unique<Node>();
      n->name = "silo-" + std::to_string(i);
      n->silo_port = fresh_port();
      n->gateway_port = fresh_port();
      n->process = std::make_unique<SilodProcess>(config(*n));
      nodes_.push_back(std::move(n));
    }
    for (auto& n : nodes_) {
      const bool ready = n->process->wait_ready(kReadyTimeout);
      INFO(n->name << " output:\n" << tail(n->process->log()));
      REQUIRE(ready);
    }
    std::string last;
    const bool ok = wait_view(kViewTimeout, &last);
    INFO("cluster views:\n" << last);
    REQUIRE(ok);
  }

  // True once every running node's gateway lists exactly the running nodes as active.
  bool wait_view(milliseconds timeout, std::string* last = nullptr) {
    return wait_until(
        [&] {
          std::set<std::string> expected;
          for (auto& n : nodes_)
            if (n->running()) expected.insert(n->address());
          std::string seen;
          bool all = true;
          for (auto& n : nodes_) {
            if (!n->running()) continue;
            const auto s = cluster_status(n->gateway());
            std::set<std::string> active;
            if (s) {
              for (const auto& silo : s->silos())
                if (silo.status() == "active") active.insert(silo.address());
            }
            seen += n->name + " sees " + std::to_string(active.size()) + " active\n";
            if (active != expected) all = false;
          }
          if (last) *last = seen;
          return all;
        },
        timeout);
  }

  // True once the nodes in `observers` each list exactly the nodes in `active` as active (a frozen node
  // is still "running" as a process, so wait_view cannot tell).
  bool wait_active(const std::vector<std::size_t>& observers, const std::vector<std::size_t>& active,
                   milliseconds timeout) {
    std::set<std::string> expected;
    for (auto i : active)
      expected.insert(node(i).address());
    return wait_until(
        [&] {
          for (auto i : observers) {
            const auto s = cluster_status(node(i).gateway());
            if (!s) return false;
            std::set<std::string> seen;
            for (const auto& silo : s->silos())
              if (silo.status() == "active") seen.insert(silo.address());
            if (seen != expected) return false;
          }
          return true;
        },
        timeout);
  }

  std::int64_t tracker_activations() {
    std::int64_t total = 0;
    for (auto& n : nodes_) {
      if (!n->running()) continue;
      const auto a = activations_of(n->gateway(), kTracker);
      REQUIRE(a >= 0);
      total += a;
    }
    return total;
  }

  std::string logs() {
    std::string out;
    for (auto& n : nodes_)
      if (n->process) out += "---- " + n->name + ":\n" + tail(n->process->log(), 3000) + "\n";
    return out;
  }

 private:
  int fresh_port() {
    for (;;) {
      const int p = silo::test::free_port();
      if (used_.insert(p).second) return p;
    }
  }

  std::string config(const Node& n) const {
    std::ostringstream y;
    y << "cluster:\n"
      << "  id: " << yaml_quote(id_) << "\n"
      << "silo:\n"
      << "  name: " << yaml_quote(n.name) << "\n"
      << "  listen: " << n.address() << "\n"
      << "  threads: 2\n"
      << "  shutdown_timeout: 15s\n"
      << "gateway:\n"
      << "  listen: " << n.gateway() << "\n"
      << "membership:\n"
      << "  provider: postgres\n"  // dsn empty: the PG* environment
      << extra_ << "plugins:\n"
      << "  dir: " << yaml_quote(SILO_TEST_PLUGIN_DIR) << "\n"
      << "  load: [dirgrains]\n"
      << "  required: true\n"
      << "logging:\n"
      << "  level: info\n";
    return y.str();
  }

  std::string id_;
  std::string extra_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::set<int> used_;
};

std::unique_ptr<silo::Client> client_of(const std::string& gateway) {
  silo::ClientOptions o;
  o.gateways = {gateway};
  o.default_timeout = 30s;
  o.gateway_refresh = 0ms;  // this gateway only: the tests choose which silo receives each call
  return std::make_unique<silo::Client>(std::move(o));
}

struct Hit {
  bool ok = false;
  dirtest::HitReply reply;
  silo::StatusCode code = silo::StatusCode::ok;
  std::string error;
  Clock::time_point at;
};

// A coroutine with by-value parameters rather than a capturing lambda (GCC 12, see router.cpp).
silo::Task<Hit> hit(dirtest::TrackerRef ref, int sleep_ms, std::string then_call, milliseconds timeout) {
  Hit h;
  dirtest::HitRequest req;
  req.set_sleep_ms(sleep_ms);
  req.set_then_call(std::move(then_call));
  silo::CallOptions o;
  o.timeout = timeout;
  try {
    h.reply = co_await ref.Hit(req, o);
    h.ok = true;
  } catch (const silo::Error& e) {
    h.code = e.code();
    h.error = e.what();
  }
  h.at = Clock::now();
  co_return h;
}

std::int64_t generation_of(const std::string& gateway, const std::string& address) {
  const auto s = cluster_status(gateway);
  if (!s) return 0;
  for (const auto& silo : s->silos())
    if (silo.address() == address && silo.status() == "active") return silo.generation();
  return 0;
}

// One request on a raw silo-to-silo stream into `address`, as a silo named `sender` would send it: Tracker
// `key`.Hit({}) with the given absolute deadline. Returns the response envelope (code 0 when it ran).
in::Envelope raw_hit(const std::string& address, const std::string& target, const std::string& sender,
                     const std::string& key, std::int64_t deadline_unix_ms) {
  auto stub = in::Silo::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  ctx.AddMetadata("silo-to", target);
  auto stream = stub->Connect(&ctx);
  in::Batch batch;
  batch.set_sender(sender);
  auto* env = batch.add_envelopes();
  env->set_id(1);
  env->set_kind(in::Envelope::REQUEST);
  env->set_grain_type(kTracker);
  env->set_grain_key(key);
  env->set_method("Hit");
  env->set_payload(dirtest::HitRequest{}.SerializeAsString());
  env->set_deadline_unix_ms(deadline_unix_ms);
  stream->Write(batch);
  in::Batch reply;
  in::Envelope out;
  out.set_code(-1);
  if (stream->Read(&reply) && reply.envelopes_size() > 0) out = reply.envelopes(0);
  stream->WritesDone();
  while (stream->Read(&reply)) {
  }
  stream->Finish();
  return out;
}

struct PlainResult {
  grpc::StatusCode code;
  std::string message;
  std::string outcome;  // the silo-outcome trailing metadata ("" when absent)
};

// Tracker(key).Hit({}) as a plain gRPC client (no silo client library), through `gateway`.
PlainResult plain_hit(const std::string& gateway, const std::string& key) {
  grpc::GenericStub stub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  ctx.AddMetadata("silo-key", key);
  grpc::Slice slice(dirtest::HitRequest{}.SerializeAsString());
  grpc::ByteBuffer request(&slice, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/dirtest.Tracker/Hit", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const grpc::Status status = done.get_future().get();
  PlainResult r{status.error_code(), status.error_message(), {}};
  const auto& trailing = ctx.GetServerTrailingMetadata();
  if (auto it = trailing.find("silo-outcome"); it != trailing.end())
    r.outcome.assign(it->second.data(), it->second.size());
  return r;
}

// Tracker(key).Hit({}) through `client`, sent again while the gateway's silo answers that its lease
// lapsed (a late probe on a loaded machine; such a refusal did not run, so the count is unaffected).
Hit hit_settled(silo::Client& client, const std::string& key) {
  Hit h;
  wait_until(
      [&] {
        h = client.wait(hit(client.ref<dirtest::TrackerRef>(key), 0, "", 10s));
        return h.ok || h.error.find("cannot confirm its membership") == std::string::npos;
      },
      10s);
  return h;
}

// raw_hit, sent again while the target answers that its lease lapsed: on a loaded machine a probe can be
// late, and that transient refusal (not run, so nothing to undo) is not what these tests look at.
in::Envelope raw_hit_settled(const std::string& address, const std::string& target, const std::string& sender,
                             const std::string& key, const std::function<std::int64_t()>& deadline) {
  in::Envelope r;
  wait_until(
      [&] {
        r = raw_hit(address, target, sender, key, deadline());
        return r.error().find("cannot confirm its membership") == std::string::npos;
      },
      10s);
  return r;
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// The defect's mechanism, made deterministic: a grain turn on silo A sleeps (as Write(196) sat in silo-2's
// queue), A is frozen, declared dead, the grain it will call is written through silo C, then A resumes and
// its turn makes the call at once (its location cache and its stream to B are warm, so nothing else runs
// first). The call must not run: A is fenced and sends nothing (sender side), and B's view holds A dead
// (receiver side); either alone keeps the count right. Before the fix the stale call ran on B's activation.
TEST_CASE("a silo resumed after it was declared dead delivers no call", "[stale]") {
  Cluster cluster("resumed");
  cluster.start_nodes(3);
  Node& a = cluster.node(0);
  auto via_a = client_of(a.gateway());
  auto via_b = client_of(cluster.node(1).gateway());
  auto via_c = client_of(cluster.node(2).gateway());

  // "g" lives on B (placed where its first call arrives); "x" on A has called it once (warm cache, stream).
  REQUIRE(via_b->wait(hit(via_b->ref<dirtest::TrackerRef>("g"), 0, "", 10s)).reply.hits() == 1);
  const Hit warm = via_a->wait(hit(via_a->ref<dirtest::TrackerRef>("x"), 0, "g", 10s));
  INFO(warm.error << warm.reply.called_error());
  REQUIRE(warm.ok);
  REQUIRE(warm.reply.called_code() == 0);  // g's 2nd hit

  // x sleeps 2.5 s, then calls g. Freeze A while it sleeps.
  auto stale = via_a->spawn(hit(via_a->ref<dirtest::TrackerRef>("x"), 2500, "g", 30s));
  std::this_thread::sleep_for(500ms);  // the call reached x (loopback, one hop) and its timer is armed
  a.process->signal(SIGSTOP);
  const bool dead = cluster.wait_active({1, 2}, {1, 2}, kViewTimeout);
  INFO(cluster.logs());
  REQUIRE(dead);
  std::this_thread::sleep_for(2500ms);  // x's timer is overdue: it fires the moment A resumes
  // Newer acknowledged hits of g through C: the 3rd, 4th and 5th.
  for (int i = 3; i <= 5; ++i) {
    const Hit h = hit_settled(*via_c, "g");
    INFO(h.error);
    REQUIRE(h.ok);
    REQUIRE(h.reply.hits() == i);
  }
  a.process->signal(SIGCONT);
  const auto code = a.process->wait_exit(15s);
  std::this_thread::sleep_for(500ms);  // a call that got out would have run by now
  const Hit read = hit_settled(*via_c, "g");
  INFO(cluster.logs());
  REQUIRE(read.ok);
  CHECK(read.reply.hits() == 6);  // 7 when A's stale call ran
  REQUIRE(code.has_value());
  CHECK(*code == 3);
  (void)stale;  // its client gave up or will: A is gone
}

TEST_CASE("a call queued on a silo when it froze does not run once it resumes declared dead", "[stale]") {
  Cluster cluster("queued");
  cluster.start_nodes(3);
  Node& a = cluster.node(0);
  auto via_a = client_of(a.gateway());
  auto via_c = client_of(cluster.node(2).gateway());

  // "y" lives on A (placed where its first call arrives). A 2.5 s turn runs; a second call queues behind it.
  REQUIRE(via_a->wait(hit(via_a->ref<dirtest::TrackerRef>("y"), 0, "", 10s)).reply.hits() == 1);
  auto running = via_a->spawn(hit(via_a->ref<dirtest::TrackerRef>("y"), 2500, "", 30s));
  std::this_thread::sleep_for(300ms);
  auto queued = via_a->spawn(hit(via_a->ref<dirtest::TrackerRef>("y"), 0, "", 30s));
  std::this_thread::sleep_for(300ms);  // both reached y: one sleeping, one in its mailbox
  a.process->signal(SIGSTOP);
  const bool dead = cluster.wait_active({1, 2}, {1, 2}, kViewTimeout);
  INFO(cluster.logs());
  REQUIRE(dead);
  // y starts afresh on a survivor (its first hit there), while A's copy is frozen with a turn queued.
  const Hit elsewhere = hit_settled(*via_c, "y");
  INFO(elsewhere.error);
  REQUIRE(elsewhere.ok);
  CHECK(elsewhere.reply.pid() != a.process->pid());
  std::this_thread::sleep_for(2500ms);  // the sleeping turn is overdue: it ends the moment A resumes
  a.process->signal(SIGCONT);
  const Hit q = queued.get();
  INFO("queued call: ok " << q.ok << " code " << static_cast<int>(q.code) << " " << q.error);
  // Ran on A after its death: the second copy of y served a turn. Refused: UNAVAILABLE, not run (or the
  // connection to A ended before its answer).
  CHECK(!(q.ok && q.reply.pid() == a.process->pid()));
  const auto code = a.process->wait_exit(15s);
  REQUIRE(code.has_value());
  CHECK(*code == 3);
  (void)running.get();  // it was running when A froze: it may finish; nothing to assert
}

// The receiver's two checks on a raw silo-to-silo stream: a request past its absolute deadline, and one
// from an older generation of a silo address its view knows, do not run and are answered "not run".
TEST_CASE("a silo refuses requests past their deadline and from superseded senders, not run", "[stale]") {
  Cluster cluster("receiver");
  cluster.start_nodes(2);
  Node& b = cluster.node(1);
  const std::int64_t gen_a = generation_of(b.gateway(), cluster.node(0).address());
  const std::int64_t gen_b = generation_of(b.gateway(), b.address());
  REQUIRE(gen_a > 0);
  REQUIRE(gen_b > 0);
  const std::string target = b.address() + "@" + std::to_string(gen_b);
  const std::string sender_a = cluster.node(0).address() + "@" + std::to_string(gen_a);
  auto via_b = client_of(b.gateway());

  SECTION("deadline passed in flight") {
    const in::Envelope r =
        raw_hit_settled(b.address(), target, sender_a, "late", [] { return unix_ms_now() - 1; });
    INFO(r.error());
    CHECK(r.code() == static_cast<int>(silo::StatusCode::deadline_exceeded));
    CHECK(r.not_run());
    const in::Envelope ok =
        raw_hit_settled(b.address(), target, sender_a, "in-time", [] { return unix_ms_now() + 5000; });
    INFO(ok.error());
    CHECK(ok.code() == 0);  // the same request in time runs
  }
  SECTION("an earlier generation of a live silo's address") {
    const std::string old_a = cluster.node(0).address() + "@" + std::to_string(gen_a - 1);
    const in::Envelope r =
        raw_hit_settled(b.address(), target, old_a, "ghost", [] { return unix_ms_now() + 5000; });
    INFO(r.error());
    CHECK(r.code() == static_cast<int>(silo::StatusCode::unavailable));
    CHECK(r.not_run());
  }
  // Nothing ran: each grain's first real call is its first turn. (A call refused by a lapsed lease did not
  // run either: it is sent again.)
  for (const char* key : {"late", "ghost"}) {
    const Hit h = hit_settled(*via_b, key);
    INFO(key << ": " << h.error);
    CHECK(h.reply.hits() == 1);
  }
}

// The router dropped Envelope.not_run: a call another silo refused (fenced, dead sender, expired, wrong
// generation) reached the client as "may-have-run". Here silo-2 is frozen; it alone probes one of the other
// two (probed_silos: 1), whose lease then runs out within 800 ms while nobody may declare silo-2 dead for
// 10 * 500 - 500 = 4.5 s. A call through the healthy gateway to the fenced silo's grain is refused by it.
TEST_CASE("a refusal by another silo reaches a plain gRPC client as silo-outcome: not-run", "[stale]") {
  Cluster cluster("refusal", "  probed_silos: 1\n  votes_to_kill: 1\n  missed_probes: 10\n  lease: 800ms\n");
  cluster.start_nodes(3);
  // g0 lives on silo-0, g1 on silo-1 (placed where the first call arrives); each gateway has called the
  // other's grain, so each knows where it lives without asking the directory.
  for (int i = 0; i < 2; ++i) {
    auto c = client_of(cluster.node(i).gateway());
    REQUIRE(c->wait(hit(c->ref<dirtest::TrackerRef>("g" + std::to_string(i)), 0, "", 10s)).ok);
  }
  REQUIRE(plain_hit(cluster.node(0).gateway(), "g1").code == grpc::StatusCode::OK);
  REQUIRE(plain_hit(cluster.node(1).gateway(), "g0").code == grpc::StatusCode::OK);

  const auto frozen_at = Clock::now();
  cluster.node(2).process->signal(SIGSTOP);
  std::this_thread::sleep_for(1500ms);  // past the lease (<= 800 ms + one probe interval), before 4.5 s
  const PlainResult to_g1 = plain_hit(cluster.node(0).gateway(), "g1");
  const PlainResult to_g0 = plain_hit(cluster.node(1).gateway(), "g0");
  const auto at = std::chrono::duration_cast<milliseconds>(Clock::now() - frozen_at).count();
  cluster.node(2).process->signal(SIGCONT);
  INFO("via silo-0 to g1: " << to_g1.code << " " << to_g1.outcome << " " << to_g1.message);
  INFO("via silo-1 to g0: " << to_g0.code << " " << to_g0.outcome << " " << to_g0.message);
  INFO("calls done " << at << " ms after the freeze\n" << cluster.logs());
  REQUIRE(at < 4000);
  // The fenced silo's own gateway refuses at once ("retry on another gateway"); the other gateway's call
  // is refused by the fenced silo on the silo port: that refusal must arrive as not-run.
  const bool remote_g1 = to_g1.message.find("retry on another gateway") == std::string::npos &&
                         to_g1.code != grpc::StatusCode::OK;
  const bool remote_g0 = to_g0.message.find("retry on another gateway") == std::string::npos &&
                         to_g0.code != grpc::StatusCode::OK;
  REQUIRE(remote_g1 != remote_g0);  // exactly one silo was fenced
  const PlainResult& refused = remote_g1 ? to_g1 : to_g0;
  CHECK(refused.code == grpc::StatusCode::UNAVAILABLE);
  CHECK(refused.message.find("cannot confirm its membership") != std::string::npos);
  CHECK(refused.outcome == "not-run");
}
