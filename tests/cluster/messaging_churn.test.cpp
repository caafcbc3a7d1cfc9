// Silo-to-silo messaging under churn (issue 10): streams to peers that break while other threads keep
// sending on them, silods killed with -9 under cross-silo load, and a whole cluster stopped at once.
//
// The first case runs two Messengers in this process (no PostgreSQL); the others run real silod processes
// sharing a PostgreSQL membership table (the PG* environment: pg_virtualenv, as tests/run.sh provides).
// They are most telling in a sanitizer build (docs/ARCHITECTURE.md, "Sanitizer builds"): a silod's log is
// checked for AddressSanitizer and UBSan reports as well as for its exit.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch2/catch.hpp>

#include <silo/client.hpp>
#include <silo/error.hpp>
#include "integration/cluster_admin.hpp"
#include "pg_server.hpp"

#include "bench.pb.h"
#include "bench.silo.h"
#include "config/config.hpp"
#include "messaging/messenger.hpp"
#include "process.hpp"
#include "silo/gateway.grpc.pb.h"

using namespace std::chrono_literals;
using silo::test::SilodProcess;
using silo::test::wait_until;
using silo::test::yaml_quote;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace gw = silo::gateway;
namespace in = silo::internal;

namespace {

using silo::test::tail;

std::int64_t ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
}

// What a sanitizer (or glibc's allocator checks) prints when it finds memory misuse or undefined behaviour.
std::string sanitizer_report(const std::string& log) {
  for (const char* marker :
       {"ERROR: AddressSanitizer", "runtime error:", "double free", "free(): ", "ERROR: LeakSanitizer"}) {
    if (const auto at = log.find(marker); at != std::string::npos)
      return log.substr(at > 200 ? at - 200 : 0, 3000);
  }
  return "";
}

// ---- two messengers in this process ---------------------------------------------------------------------

struct Endpoint {
  silo::config::Config cfg;
  silo::cluster::SiloAddress address;
  std::unique_ptr<silo::messaging::Messenger> messenger;

  explicit Endpoint(std::int64_t generation) {
    const int port = silo::test::free_port();
    cfg.silo.listen = {silo::test::loopback_host(), static_cast<std::uint16_t>(port)};
    address = {silo::test::loopback_host(), static_cast<std::uint16_t>(port), generation};
    messenger = std::make_unique<silo::messaging::Messenger>(cfg, address);
  }
};

}  // namespace

TEST_CASE("messaging: streams cancelled while other threads send on them, every call answered exactly once",
          "[cluster][messaging]") {
  // A's link to B is cancelled every few ms (as when the membership declares B dead, or B's socket
  // closes) while four threads keep sending requests to B through it. The stream's end races the sends:
  // a send that starts a write on a stream gRPC has already torn down is a use after free (a "double
  // free" abort in a plain build, issue 10). Every request must get exactly one answer: B's response,
  // or A's UNAVAILABLE for the calls waiting on a broken stream.
  std::mutex mutex;
  std::map<std::uint64_t, int> answers;  // id -> how many answers
  std::atomic<long> failed{0}, answered{0};
  Endpoint a(1), b(2);  // after what their handlers use: destroyed first
  silo::messaging::Handlers ha;
  ha.on_request = [](in::Envelope, std::shared_ptr<silo::messaging::ResponseSink>) {};
  ha.on_response = [&](in::Envelope env) {
    (env.code() == 0 ? answered : failed)++;
    std::lock_guard lock(mutex);
    ++answers[env.id()];
  };
  silo::messaging::Handlers hb;
  hb.on_request = [](in::Envelope req, std::shared_ptr<silo::messaging::ResponseSink> sink) {
    if (!sink) return;
    in::Envelope r;
    r.set_id(req.id());
    r.set_kind(in::Envelope::RESPONSE);
    sink->send(std::move(r));
  };
  hb.on_response = [](in::Envelope) {};
  a.messenger->set_handlers(ha);
  b.messenger->set_handlers(hb);
  a.messenger->start();
  b.messenger->start();

  std::atomic<std::uint64_t> next_id{1};
  std::atomic<bool> stop{false};
  std::vector<std::thread> senders;
  for (int t = 0; t < 4; ++t) {
    senders.emplace_back([&] {
      while (!stop.load()) {
        // Sends go on while a stream breaks (each failed write lets the next send start one), but the
        // calls waiting stay bounded: a broken stream fails its calls only when it is done.
        if (next_id.load() - 1 - static_cast<std::uint64_t>(answered.load() + failed.load()) > 20000) {
          std::this_thread::yield();
          continue;
        }
        in::Envelope env;
        env.set_id(next_id++);
        env.set_kind(in::Envelope::REQUEST);
        env.set_grain_type("bench.Counter");
        env.set_grain_key("k");
        env.set_method("Add");
        a.messenger->send(b.address, std::move(env));
      }
    });
  }
  const auto started = Clock::now();
  int kills = 0;
  // Bounded: 200 cancellations or 10 s. Each stream is cancelled once it carries calls (a few answered
  // since the last cancellation): one cancelled before it connects only makes A refuse new streams for
  // 100 ms.
  while (kills < 200 && Clock::now() - started < 10s) {
    const long seen = answered.load();
    const auto since = Clock::now();
    while (answered.load() < seen + 8 && Clock::now() - since < 20ms)
      std::this_thread::sleep_for(50us);
    a.messenger->peer_dead(b.address);
    ++kills;
  }
  stop = true;
  for (auto& s : senders)
    s.join();
  const std::uint64_t sent = next_id.load() - 1;
  // Every call ends: answered by B, or failed when its stream broke (at the latest when A stops).
  const bool all_answered = wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return answers.size() == sent;
      },
      10s);
  a.messenger->stop(Clock::now() + 5s);
  b.messenger->stop(Clock::now() + 5s);

  std::lock_guard lock(mutex);
  std::uint64_t twice = 0;
  for (const auto& [id, n] : answers)
    if (n != 1) ++twice;
  INFO(sent << " requests, " << kills << " cancellations, " << answered.load() << " answered, "
            << failed.load() << " failed, " << answers.size() << " distinct ids answered");
  CHECK(kills > 50);  // the churn happened (200 unless the machine is very slow)
  CHECK(answered.load() > 0);
  CHECK(failed.load() > 0);  // the churn did break streams with calls waiting on them
  CHECK(all_answered);
  CHECK(twice == 0);
}

TEST_CASE("messaging: two silos stopping together do not wait for each other's streams",
          "[cluster][messaging]") {
  // Each messenger's server waits, when it stops, for the streams peers opened into it; a peer closes its
  // stream when it sees this silo leave, or when it stops itself. Two silos stopping together (a
  // whole-cluster stop, their membership agents already gone) each waited for the other's stream until
  // the deadline: shutdown_timeout (issue 10). Here the deadline is 10 s and both must be done in 3.
  std::atomic<int> answers{0};
  Endpoint a(1), b(2);
  silo::messaging::Handlers h;
  h.on_request = [](in::Envelope req, std::shared_ptr<silo::messaging::ResponseSink> sink) {
    in::Envelope r;
    r.set_id(req.id());
    r.set_kind(in::Envelope::RESPONSE);
    sink->send(std::move(r));
  };
  h.on_response = [&](in::Envelope env) {
    if (env.code() == 0) ++answers;
  };
  a.messenger->set_handlers(h);
  b.messenger->set_handlers(h);
  a.messenger->start();
  b.messenger->start();
  // A stream each way, each carrying an answered call.
  for (auto [from, to] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
    in::Envelope env;
    env.set_id(from == &a ? 1 : 2);
    env.set_kind(in::Envelope::REQUEST);
    from->messenger->send(to->address, std::move(env));
  }
  REQUIRE(wait_until([&] { return answers.load() == 2; }, 10s));

  const auto t0 = Clock::now();
  std::int64_t took[2] = {0, 0};
  std::thread stop_a([&] {
    a.messenger->stop(Clock::now() + 10s);
    took[0] = ms_since(t0);
  });
  std::thread stop_b([&] {
    b.messenger->stop(Clock::now() + 10s);
    took[1] = ms_since(t0);
  });
  stop_a.join();
  stop_b.join();
  INFO("a stopped after " << took[0] << " ms, b after " << took[1] << " ms");
  // About 100 ms; 3 s leaves room for a loaded machine and is far from the 10 s deadline.
  CHECK(took[0] < 3000);
  CHECK(took[1] < 3000);
}

// ---- real silods -----------------------------------------------------------------------------------------

namespace {

constexpr auto kReadyTimeout = 30s;
constexpr auto kViewTimeout = 20s;

std::string unique_cluster(const std::string& what) {
  return silo::test::unique_cluster("mc", what);
}

std::set<std::string> active_addresses(const std::string& gateway) {
  auto stub = gw::Gateway::NewStub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  gw::ClusterStatus out;
  std::set<std::string> active;
  if (!stub->Status(&ctx, gw::StatusRequest{}, &out).ok()) return {"(Status failed)"};
  for (const auto& s : out.silos())
    if (s.status() == "active") active.insert(s.address());
  return active;
}

struct Node {
  std::string name;
  int silo_port = 0;
  int gateway_port = 0;
  std::unique_ptr<SilodProcess> process;
  std::string earlier_logs;  // of the generations that ran before this one

  std::string address() const { return silo::test::loopback_host() + ":" + std::to_string(silo_port); }
  std::string gateway() const { return silo::test::loopback_host() + ":" + std::to_string(gateway_port); }
  bool running() const { return process && process->running(); }
  std::string all_logs() const { return earlier_logs + (process ? process->log() : ""); }
};

// Three silods on loopback sharing the PG* environment's membership table under their own cluster.id.
class Trio {
 public:
  Trio(const std::string& what, std::string shutdown_timeout)
      : id_(unique_cluster(what)), shutdown_timeout_(std::move(shutdown_timeout)) {
    silo::test::require_postgres("silo_messaging_tests");
    std::set<int> used;
    for (int i = 0; i < 3; ++i) {
      Node& n = nodes_[i];
      n.name = "silo-" + std::to_string(i);
      for (int* port : {&n.silo_port, &n.gateway_port}) {
        do {
          *port = silo::test::free_port();
        } while (!used.insert(*port).second);
      }
    }
  }

  Node& node(int i) { return nodes_[i]; }

  void start(Node& n) {
    if (n.process) n.earlier_logs += "---- earlier generation:\n" + n.process->log();
    n.process = std::make_unique<SilodProcess>(config(n));
  }

  void require_ready(Node& n) {
    const bool ready = n.process->wait_ready(kReadyTimeout);
    INFO(n.name << " output:\n" << tail(n.process->log()));
    REQUIRE(ready);
  }

  // Starts all three and waits until each gateway lists the three as active.
  void start_all() {
    for (auto& n : nodes_)
      start(n);
    for (auto& n : nodes_)
      require_ready(n);
    require_view();
  }

  void require_view() {
    std::set<std::string> expected;
    for (auto& n : nodes_)
      if (n.running()) expected.insert(n.address());
    std::string last;
    const bool ok = wait_until(
        [&] {
          last.clear();
          for (auto& n : nodes_) {
            if (!n.running()) continue;
            const auto seen = active_addresses(n.gateway());
            for (const auto& s : seen)
              last += n.name + " sees " + s + "\n";
            if (seen != expected) return false;
          }
          return true;
        },
        kViewTimeout);
    INFO("views:\n" << last);
    REQUIRE(ok);
  }

  std::vector<std::string> gateways() const {
    std::vector<std::string> out;
    for (const auto& n : nodes_)
      out.push_back(n.gateway());
    return out;
  }

  std::string logs() const {
    std::string out;
    for (const auto& n : nodes_)
      out += "---- " + n.name + ":\n" + tail(n.all_logs(), 4000) + "\n";
    return out;
  }

 private:
  std::string config(const Node& n) const {
    std::ostringstream y;
    y << "cluster:\n"
      << "  id: " << yaml_quote(id_) << "\n"
      << "silo:\n"
      << "  name: " << yaml_quote(n.name) << "\n"
      << "  listen: " << n.address() << "\n"
      << "  threads: 2\n"
      << "  shutdown_timeout: " << shutdown_timeout_ << "\n"
      << "gateway:\n"
      << "  listen: " << n.gateway() << "\n"
      << "membership:\n"
      << "  provider: postgres\n"  // dsn empty: the PG* environment
      << "plugins:\n"
      << "  dir: " << yaml_quote(SILO_PLUGIN_DIR) << "\n"
      << "  load: [iot, bench]\n"
      << "  required: true\n"
      << "logging:\n"
      << "  level: info\n";
    return y.str();
  }

  std::string id_;
  std::string shutdown_timeout_;
  Node nodes_[3];
};

std::unique_ptr<silo::Client> make_client(std::vector<std::string> gateways) {
  silo::ClientOptions o;
  o.gateways = std::move(gateways);
  o.default_timeout = 5s;
  return std::make_unique<silo::Client>(std::move(o));
}

struct Load {
  std::atomic<bool> stop{false};
  std::atomic<long> ok{0}, failed{0};
};

// Calls bench.Counter/Add on `keys` keys, back to back: grains live on all three silos, so most calls
// cross from the gateway's silo to another. A coroutine with by-value parameters rather than a capturing
// lambda: GCC 12 mishandles temporaries in co_await expressions inside lambda coroutines (see router.cpp).
silo::Task<void> load_worker(silo::Client& client, Load& load, int keys, int worker) {
  boost::asio::steady_timer pause(co_await boost::asio::this_coro::executor);
  for (long n = worker; !load.stop.load(); n += 13) {
    bench::AddRequest add;
    add.set_delta(1);
    bool ok = false;
    try {
      silo::CallOptions o;
      o.timeout = 3s;
      co_await client.ref<bench::CounterRef>("churn-" + std::to_string(n % keys)).Add(add, o);
      ok = true;
    } catch (const silo::Error&) {
    }
    (ok ? load.ok : load.failed)++;
    if (!ok) {  // the gateway or the grain's silo is gone: don't spin on failures
      pause.expires_after(20ms);
      co_await pause.async_wait(boost::asio::use_awaitable);
    }
  }
}

}  // namespace

TEST_CASE("kill -9 churn: peers killed under cross-silo load, no other silod crashes",
          "[cluster][messaging]") {
  // The incident (issue 10): a survivor aborted with "double free" 16 ms after failing the calls waiting
  // on its stream to a killed peer. Twelve kills, alternating between two victims; silo-0 is never
  // killed, and every silod not killed by the test must keep running and log no sanitizer report.
  Trio trio("churn", "5s");
  trio.start_all();
  Load load;
  auto client = make_client(trio.gateways());
  std::vector<std::future<void>> workers;
  for (int w = 0; w < 12; ++w)
    workers.push_back(client->spawn(load_worker(*client, load, 300, w)));
  std::this_thread::sleep_for(1s);

  constexpr int kKills = 12;
  std::string crashed;
  for (int k = 0; k < kKills && crashed.empty(); ++k) {
    Node& victim = trio.node(1 + k % 2);
    const long before = load.ok.load();
    victim.process->signal(SIGKILL);
    REQUIRE(victim.process->wait_exit(5s) == std::optional<int>(128 + SIGKILL));
    // Under load, the survivors' streams to the victim break with calls waiting on them (the incident's
    // path); a little later they declare it dead.
    std::this_thread::sleep_for(milliseconds(300 + 100 * (k % 4)));
    for (int i = 0; i < 3; ++i) {
      Node& n = trio.node(i);
      if (&n != &victim && !n.running()) crashed += n.name + " exited after kill " + std::to_string(k) + "\n";
    }
    trio.start(victim);
    trio.require_ready(victim);
    std::this_thread::sleep_for(300ms);
    INFO("kill " << k << ": calls before " << before << ", after " << load.ok.load());
  }
  load.stop = true;
  for (auto& w : workers)
    REQUIRE(w.wait_for(30s) == std::future_status::ready);
  std::cout << "kill -9 churn: " << load.ok << " calls succeeded, " << load.failed << " failed around "
            << kKills << " kills" << std::endl;

  for (int i = 0; i < 3; ++i)
    if (trio.node(i).running()) trio.node(i).process->signal(SIGTERM);
  std::string reports;
  for (int i = 0; i < 3; ++i) {
    Node& n = trio.node(i);
    if (n.process->wait_exit(30s) != std::optional<int>(0))
      crashed += n.name + " did not exit 0 on SIGTERM\n";
    if (const auto r = sanitizer_report(n.all_logs()); !r.empty()) reports += "---- " + n.name + ":\n" + r;
  }
  INFO(trio.logs());
  INFO("sanitizer reports:\n" << reports);
  CHECK(crashed.empty());
  CHECK(reports.empty());
  CHECK(load.ok > 1000);
}

TEST_CASE("a whole cluster stopped at once: every silod exits well before shutdown_timeout",
          "[cluster][messaging]") {
  // Issue 10: with SIGTERM sent to every silo at once, silods waited the full shutdown_timeout between
  // "stopping messaging" and "messaging: stopped": each one's server waited for the peers' streams into
  // it, which the peers close only after their own servers stopped. shutdown_timeout is 30 s here; a
  // stop takes about a second, 10 s leaves room for a loaded test machine and still tells the two apart.
  for (int round = 0; round < 5; ++round) {
    Trio trio("stop", "30s");
    trio.start_all();
    {
      // Streams in every direction, with calls in flight when the signal arrives.
      Load load;
      auto client = make_client(trio.gateways());
      std::vector<std::future<void>> workers;
      for (int w = 0; w < 6; ++w)
        workers.push_back(client->spawn(load_worker(*client, load, 60, w)));
      std::this_thread::sleep_for(700ms);
      // In step: frozen, signalled, thawed, so the three stop together (with the load still running). The
      // hang needs two silos that each leave the membership before seeing the other leave; that is a
      // race (about 1 round in 10 before the fix here), which the in-process case above makes certain.
      for (int i = 0; i < 3; ++i)
        trio.node(i).process->signal(SIGSTOP);
      for (int i = 0; i < 3; ++i)
        trio.node(i).process->signal(SIGTERM);
      const auto t0 = Clock::now();
      for (int i = 0; i < 3; ++i)
        trio.node(i).process->signal(SIGCONT);
      std::string slow;
      for (int i = 0; i < 3; ++i) {
        Node& n = trio.node(i);
        const auto code = n.process->wait_exit(45s);
        const auto took = ms_since(t0);
        if (code != std::optional<int>(0) || took > 10'000) {
          slow += n.name + ": exit " + (code ? std::to_string(*code) : std::string("none")) + " after " +
                  std::to_string(took) + " ms\n";
        }
      }
      load.stop = true;
      for (auto& w : workers)
        REQUIRE(w.wait_for(30s) == std::future_status::ready);
      INFO("round " << round << ":\n" << slow << trio.logs());
      std::cout << "whole-cluster stop, round " << round << ": all exited within " << ms_since(t0) << " ms"
                << std::endl;
      REQUIRE(slow.empty());
      std::string reports;
      for (int i = 0; i < 3; ++i)
        reports += sanitizer_report(trio.node(i).all_logs());
      INFO(reports);
      CHECK(reports.empty());
    }
  }
}
