#pragma once
// The chaos test's load: one coroutine per grain writing increasing sequence numbers (and reading now and
// then) through every gateway in turn, recording each call's outcome and the activation that answered.
// A grain's calls never overlap, so its log is a timeline (model.hpp). The coroutines run on one thread of
// their own; each call goes out through the silo::Client of the chosen gateway (one client per gateway,
// bound to it alone, so the driver decides where calls enter the cluster).

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <silo/asio.hpp>  // first: <utility> before Asio (Boost 1.74 under GCC 12)

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <silo/client.hpp>
#include <silo/task.hpp>

#include "chaos/model.hpp"

namespace silo::chaos {

struct WorkloadOptions {
  std::vector<std::string> gateways;
  const std::atomic<bool>* serving = nullptr;  // per gateway: take calls now (the cluster's view)
  int grains = 128;
  std::uint64_t seed = 1;
  std::chrono::steady_clock::time_point t0;
  std::chrono::milliseconds timeout{3000};                   // per call: what a caller would wait
  std::chrono::milliseconds pause_min{100}, pause_max{300};  // between a grain's calls
};

/// Counters for the progress line (updated as calls complete).
struct Progress {
  std::atomic<long> acked{0}, write_failed{0}, reads{0}, read_failed{0}, stale{0}, lost{0};
};

class Workload {
 public:
  explicit Workload(WorkloadOptions options);
  ~Workload();
  Workload(const Workload&) = delete;
  Workload& operator=(const Workload&) = delete;

  void start();
  void set_phase(Phase p) { phase_ = p; }
  /// Stops the grain loops and waits for their last calls (bounded by the call timeout).
  void stop();
  /// After stop(): reads every grain through every gateway, twice round, retrying a failed read for up to
  /// `budget` overall. Returns when done or when the budget (plus a call timeout) is spent.
  void final_check(std::chrono::milliseconds budget);
  /// The timelines; call after stop() / final_check().
  const std::vector<GrainLog>& logs() const { return logs_; }
  const Progress& progress() const { return progress_; }

 private:
  silo::Task<void> grain_loop(int g);
  silo::Task<void> final_reads(int g, std::chrono::steady_clock::time_point deadline);
  silo::Task<bool> call(int g, int gateway, Op op);
  int pick_gateway(int g, std::int64_t n) const;
  std::int64_t now_us() const;

  WorkloadOptions options_;
  // Before the clients: they are destroyed first, while the io_context their completions are posted to
  // (stopped by then) still exists.
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{io_.get_executor()};
  std::vector<std::unique_ptr<silo::Client>> clients_;
  std::vector<GrainLog> logs_;
  std::vector<std::int64_t> acked_;  // per grain, for the live counters
  Progress progress_;
  std::atomic<Phase> phase_{Phase::chaos};
  std::atomic<bool> stopping_{false};
  std::atomic<int> running_{0};
  std::thread thread_;
};

}  // namespace silo::chaos
