#include "chaos/cluster.hpp"

#include <csignal>
#include <filesystem>
#include <set>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "silo/gateway.grpc.pb.h"

namespace silo::chaos {

namespace fs = std::filesystem;
namespace gw = silo::gateway;
using namespace std::chrono_literals;
using silo::test::yaml_quote;
using std::chrono::milliseconds;

namespace {

constexpr auto kReadyTimeout = 30s;     // a silod start (plugin load, schema, join) on a loaded machine
constexpr auto kStopGrace = 20s;        // shutdown_timeout (10 s) plus margin, then SIGKILL
constexpr auto kRestartAfterExit = 1s;  // a node that exited on its own (or by exit 3) comes back after this

std::string tail_lines(const std::string& text, int n) {
  std::size_t at = text.size();
  for (int i = 0; i <= n && at != std::string::npos && at > 0; ++i)
    at = text.rfind('\n', at - 1);
  return at == std::string::npos || at == 0 ? text : text.substr(at + 1);
}

std::string join(const std::set<int>& codes) {
  if (codes.empty()) return "none (must keep running)";
  std::string out;
  for (int c : codes)
    out += (out.empty() ? "" : " or ") + std::to_string(c);
  return out;
}

// The silos the gateway's Status lists as active, or -1 when it does not answer.
int active_silos(const std::string& gateway) {
  auto stub = gw::Gateway::NewStub(grpc::CreateChannel(gateway, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 2s);
  gw::ClusterStatus out;
  if (!stub->Status(&ctx, gw::StatusRequest{}, &out).ok()) return -1;
  int n = 0;
  for (const auto& silo : out.silos())
    if (silo.status() == "active") ++n;
  return n;
}

int fresh_port(std::set<int>& used) {
  for (;;) {
    const int p = silo::test::free_port();
    if (used.insert(p).second) return p;
  }
}

}  // namespace

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  serving_ = std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(options_.silos));
  std::set<int> used;
  for (int i = 0; i < options_.silos; ++i) {
    auto n = std::make_unique<Node>();
    n->index = i;
    n->name = "silo-" + std::to_string(i);
    n->silo_port = fresh_port(used);
    n->gateway_port = fresh_port(used);
    std::ostringstream y;
    y << "cluster:\n"
      << "  id: " << yaml_quote(options_.cluster_id) << "\n"
      << "silo:\n"
      << "  name: " << yaml_quote(n->name) << "\n"
      << "  listen: " << silo::test::loopback_host() << ":" << n->silo_port << "\n"
      << "  threads: 2\n"
      << "  shutdown_timeout: 10s\n"
      << "gateway:\n"
      << "  listen: " << silo::test::loopback_host() << ":" << n->gateway_port << "\n"
      << "membership:\n"
      << "  provider: postgres\n"  // dsn empty: the PG* environment
      << "storage:\n"
      << "  pg:\n"
      << "    provider: postgres\n"
      << "plugins:\n"
      << "  dir: " << yaml_quote(options_.plugin_dir) << "\n"
      << "  load: [chaosgrains]\n"
      << "  required: true\n"
      << "logging:\n"
      << "  level: info\n";
    n->yaml = y.str();
    serving_[i] = false;
    nodes_.push_back(std::move(n));
  }
}

Cluster::~Cluster() = default;  // SilodProcess SIGKILLs and reaps what is still running

std::int64_t Cluster::now_us() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - options_.t0).count();
}

std::vector<std::string> Cluster::gateways() const {
  std::vector<std::string> out;
  for (const auto& n : nodes_)
    out.push_back(silo::test::loopback_host() + ":" + std::to_string(n->gateway_port));
  return out;
}

void Cluster::set_state(Node& n, State s) {
  n.state = s;
  n.since = Clock::now();
  serving_[n.index] = s == State::up;
}

void Cluster::start(Node& n) {
  n.process = std::make_unique<silo::test::SilodProcess>(n.yaml);
  ++n.generation;
  n.expected.clear();
  n.restart_at = n.cont_at = n.kill_at = Clock::time_point::max();
  ProcessRecord r;
  r.node = n.name;
  r.generation = n.generation;
  r.pid = n.process->pid();
  r.started_us = now_us();
  r.expected = join(n.expected);
  n.record = records_.size();
  records_.push_back(r);
  set_state(n, State::starting);
}

void Cluster::start_all() {
  for (auto& n : nodes_)
    start(*n);
}

bool Cluster::wait_formed(milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    poll();
    bool formed = healthy();
    if (formed) {
      for (const auto& g : gateways())
        if (active_silos(g) != size()) formed = false;
    }
    if (formed) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

void Cluster::ended(Node& n, int code) {
  ProcessRecord& r = records_[n.record];
  r.ended_us = now_us();
  r.exit_code = code;
  r.expected = join(n.expected);
  r.unexpected = !n.expected.contains(code);
  r.log_file = (fs::path(options_.out_dir) / (n.name + "-" + std::to_string(n.generation) + ".log")).string();
  const std::string log = n.process->log();
  silo::test::write_file(r.log_file, log);
  if (r.unexpected || r.never_ready) r.log_tail = tail_lines(log, 25);
  const State was = n.state;
  set_state(n, State::down);
  if (n.restart_at == Clock::time_point::max())
    n.restart_at = Clock::now() + (was == State::stopping ? n.restart_delay : kRestartAfterExit);
}

void Cluster::poll() {
  const auto now = Clock::now();
  for (auto& np : nodes_) {
    Node& n = *np;
    if (n.state == State::down) {
      if (!hold_restarts_ && now >= n.restart_at) start(n);
      continue;
    }
    if (const auto code = n.process->wait_exit(milliseconds(0))) {
      ended(n, *code);
      continue;
    }
    switch (n.state) {
      case State::starting:
        if (n.process->has_notification("READY=1")) {
          set_state(n, State::up);
        } else if (now - n.since > kReadyTimeout) {
          records_[n.record].never_ready = true;
          n.expected.insert(128 + SIGKILL);
          n.process->signal(SIGKILL);
          n.kill_at = Clock::time_point::max();
        }
        break;
      case State::stopped:
        if (now >= n.cont_at) {
          n.process->signal(SIGCONT);
          // Declared dead while frozen, it exits 3 when it reads so; else it goes on serving, and it must
          // then answer correctly (calls go to it again at once: this is where a zombie would show).
          n.expected.insert(3);
          set_state(n, State::up);
        }
        break;
      case State::stopping:
        if (now >= n.kill_at) {
          records_[n.record].note =
              "graceful stop overran " + std::to_string(kStopGrace.count()) + " s: SIGKILL";
          n.expected.insert(128 + SIGKILL);
          n.process->signal(SIGKILL);
          n.kill_at = Clock::time_point::max();
        }
        break;
      default:
        break;
    }
  }
}

std::vector<int> Cluster::up_nodes() const {
  std::vector<int> out;
  for (const auto& n : nodes_)
    if (n->state == State::up) out.push_back(n->index);
  return out;
}

bool Cluster::healthy() const {
  return static_cast<int>(up_nodes().size()) == size();
}

bool Cluster::quiet_for(milliseconds d) const {
  const auto now = Clock::now();
  for (const auto& n : nodes_)
    if (n->state != State::up || now - n->since < d) return false;
  return true;
}

Fault Cluster::kill9(const std::vector<int>& victims, milliseconds down_for) {
  Fault f;
  f.kind = victims.size() > 1 ? "kill9x2" : "kill9";
  f.at_us = now_us();
  for (int i : victims) {
    Node& n = *nodes_[i];
    f.victims.push_back(n.name);
    f.pids.push_back(n.process->pid());
    n.expected.insert(128 + SIGKILL);
    n.process->signal(SIGKILL);
    set_state(n, State::stopping);
    n.restart_at = Clock::now() + down_for;
  }
  return f;
}

Fault Cluster::sigterm(int victim, milliseconds down_for, bool restart_kind) {
  Node& n = *nodes_[victim];
  Fault f;
  f.kind = restart_kind ? "restart" : "sigterm";
  f.at_us = now_us();
  f.victims = {n.name};
  f.pids = {n.process->pid()};
  n.expected.insert(0);
  records_[n.record].term_us = now_us();
  n.process->signal(SIGTERM);
  set_state(n, State::stopping);
  n.restart_delay = down_for;
  n.kill_at = Clock::now() + kStopGrace;
  return f;
}

Fault Cluster::sigstop(int victim, milliseconds stop_for) {
  Node& n = *nodes_[victim];
  Fault f;
  f.kind = "sigstop";
  f.at_us = now_us();
  f.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(stop_for).count();
  f.victims = {n.name};
  f.pids = {n.process->pid()};
  n.process->signal(SIGSTOP);
  set_state(n, State::stopped);
  n.cont_at = Clock::now() + stop_for;
  return f;
}

void Cluster::heal() {
  const auto now = Clock::now();
  for (auto& n : nodes_) {
    if (n->state == State::stopped) n->cont_at = now;
    if (n->state == State::down) n->restart_at = now;
    if (n->state == State::stopping) {
      n->restart_delay = milliseconds(0);
      if (n->restart_at != Clock::time_point::max()) n->restart_at = now;  // killed, not yet reaped
    }
  }
  poll();
}

void Cluster::stop_all(milliseconds timeout) {
  for (auto& n : nodes_) {
    if (n->state == State::down) continue;
    if (n->state == State::stopped) n->process->signal(SIGCONT);
    n->expected.insert(0);
    records_[n->record].term_us = now_us();
    n->process->signal(SIGTERM);
    n->restart_at = Clock::time_point::max() - 1h;  // never restarted (poll() restarts nodes whose time came)
    set_state(*n, State::stopping);
    n->kill_at = Clock::now() + timeout;
  }
  const auto deadline = Clock::now() + timeout + 5s;
  while (Clock::now() < deadline) {
    bool all = true;
    for (auto& n : nodes_) {
      if (n->state == State::down) continue;
      all = false;
      if (const auto code = n->process->wait_exit(milliseconds(0))) {
        ended(*n, *code);
        n->restart_at = Clock::time_point::max();
      } else if (Clock::now() >= n->kill_at) {
        records_[n->record].note = "graceful stop at the end overran: SIGKILL";
        n->expected.insert(128 + SIGKILL);
        n->process->signal(SIGKILL);
        n->kill_at = Clock::time_point::max();
      }
    }
    if (all) return;
    std::this_thread::sleep_for(20ms);
  }
}

std::string Cluster::status_line() const {
  std::ostringstream out;
  for (const auto& n : nodes_) {
    const char* s = "?";
    switch (n->state) {
      case State::starting:
        s = "starting";
        break;
      case State::up:
        s = "up";
        break;
      case State::stopped:
        s = "SIGSTOPPED";
        break;
      case State::stopping:
        s = "stopping";
        break;
      case State::down:
        s = "down";
        break;
    }
    out << n->name << "#" << n->generation << " " << s << "  ";
  }
  return out.str();
}

std::string Cluster::log_tails() const {
  std::string out;
  for (const auto& n : nodes_)
    if (n->process) out += "---- " + n->name + ":\n" + tail_lines(n->process->log(), 30) + "\n";
  return out;
}

}  // namespace silo::chaos
