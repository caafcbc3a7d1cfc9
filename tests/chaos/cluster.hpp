#pragma once
// The silods of a chaos run: N nodes on fixed loopback ports (a restart is a new generation of the same
// node), their faults (kill -9, SIGTERM, SIGSTOP+SIGCONT), delayed restarts, and a record of every process
// and of how it ended compared with what our own signals allow. Only processes started here are signalled,
// always by pid. Single-threaded: the driver's main loop calls poll() every few milliseconds; nothing
// blocks for long.

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "chaos/model.hpp"
#include "integration/process.hpp"

namespace silo::chaos {

using Clock = std::chrono::steady_clock;

struct ClusterOptions {
  std::string cluster_id;
  int silos = 4;
  std::string plugin_dir;  // where chaosgrains.so is
  std::string out_dir;     // each process's log is copied here when it ends
  Clock::time_point t0;    // the run's time origin
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  int size() const { return static_cast<int>(nodes_.size()); }
  std::vector<std::string> gateways() const;
  /// One flag per node: true while its gateway should take calls (running, ready, not stopped or stopping).
  const std::atomic<bool>* serving() const { return serving_.get(); }

  void start_all();
  /// Polls until every node is ready and every gateway lists all nodes as active.
  bool wait_formed(std::chrono::milliseconds timeout);
  /// Reaps exits, classifies them, sends due SIGCONTs, starts due restarts, notices readiness.
  void poll();

  /// Nodes that are running, ready and not stopped: candidates for the next fault.
  std::vector<int> up_nodes() const;
  /// True when every node is up (no fault in progress).
  bool healthy() const;
  /// True when every node has been up for at least `d`.
  bool quiet_for(std::chrono::milliseconds d) const;
  /// While held, nodes that are down are not restarted (a silod cannot start without PostgreSQL: during the
  /// outage its exit 1 would be our doing, not a crash).
  void hold_restarts(bool hold) { hold_restarts_ = hold; }

  Fault kill9(const std::vector<int>& victims, std::chrono::milliseconds down_for);
  /// SIGTERM; the node restarts `down_for` after it exited (zero: a rolling restart).
  Fault sigterm(int victim, std::chrono::milliseconds down_for, bool restart_kind);
  /// SIGSTOP now, SIGCONT after `stop_for`.
  Fault sigstop(int victim, std::chrono::milliseconds stop_for);
  /// Ends every fault at once: SIGCONT to stopped nodes, restarts due now.
  void heal();
  /// SIGTERM to every node, waits for the exits (SIGKILL after `timeout`), records them.
  void stop_all(std::chrono::milliseconds timeout);

  std::vector<ProcessRecord> records() const { return records_; }
  /// One line: each node's state.
  std::string status_line() const;
  /// The last lines of every node's current log, for a failed start.
  std::string log_tails() const;

 private:
  enum class State { starting, up, stopped, stopping, down };
  struct Node {
    int index = 0;
    std::string name;
    int silo_port = 0, gateway_port = 0;
    std::string yaml;
    std::unique_ptr<silo::test::SilodProcess> process;
    int generation = 0;
    std::size_t record = 0;  // index into records_ of the current process
    State state = State::down;
    std::set<int> expected;   // exit codes our actions allow for the current process
    Clock::time_point since;  // when the current state began
    Clock::time_point restart_at = Clock::time_point::max();
    Clock::time_point cont_at = Clock::time_point::max();
    Clock::time_point kill_at = Clock::time_point::max();  // a graceful stop that overruns is killed then
    std::chrono::milliseconds restart_delay{0};            // after a SIGTERM exit
  };

  void start(Node& n);
  void ended(Node& n, int code);
  void set_state(Node& n, State s);
  std::int64_t now_us() const;

  ClusterOptions options_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unique_ptr<std::atomic<bool>[]> serving_;
  std::vector<ProcessRecord> records_;
  bool hold_restarts_ = false;
};

}  // namespace silo::chaos
