#pragma once
// The membership agent: joins the cluster (joining -> connectivity check -> active), refreshes its row
// (i_am_alive, load), probes its ring successors over the silo-to-silo channel, votes against silos that
// miss probes, declares them dead once enough fresh votes agree, and publishes each new view. A silo that
// reads itself dead exits with code 3 (systemd restarts it as a new generation). Losing the table freezes
// membership changes but not the silo: the last view stays in force.
// It owns the silo's Lease (lease.hpp): fenced() is what the gateway and the silo port ask before serving.
// A starting silo retires (marks dead) the older generations of its own address.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <silo/asio.hpp>

#include "app/component.hpp"
#include "cluster/lease.hpp"
#include "cluster/membership_table.hpp"
#include "config/config.hpp"

namespace silo::messaging {
class Messenger;
}
namespace silo::runtime {
class Runtime;
}

namespace silo::cluster {

class MembershipAgent final : public app::Component {
 public:
  using ViewListener = std::function<void(const MembershipSnapshot&)>;

  MembershipAgent(const config::Config& cfg, std::unique_ptr<MembershipTable> table,
                  messaging::Messenger& messenger, runtime::Runtime& rt, SiloAddress self,
                  std::string gateway, ViewListener on_view);
  ~MembershipAgent() override;
  std::string_view name() const override { return "membership"; }
  void start() override;
  void prepare_stop(Deadline deadline) override;
  void stop(Deadline deadline) override;

  /// The latest view (copy).
  MembershipSnapshot view() const;

  /// True when this silo must serve no grain call: declared dead, or its lease ran out.
  bool fenced() const { return lease_.fenced(); }
  const Lease& lease() const { return lease_; }

  /// The silos that probe `self` in `view`: its ring predecessors among the active silos (none when
  /// `self` is not active: nobody probes it).
  static std::vector<std::string> probers_of(const MembershipSnapshot& view, const SiloAddress& self,
                                             unsigned probed_silos);

 private:
  MembershipRow my_row(SiloStatus status) const;
  [[noreturn]] void found_myself_dead(const char* where);
  void retire_old_generations();
  void update_lease(const MembershipSnapshot& snap);
  void log_fence();
  bool set_status(SiloStatus status, int attempts);
  void refresh();
  void publish(MembershipSnapshot snapshot);
  void probe_tick();
  void on_probe(const SiloAddress& target, bool ok);
  void vote(const SiloAddress& target);
  void heartbeat_tick();
  void schedule(boost::asio::steady_timer& timer, std::chrono::milliseconds every,
                void (MembershipAgent::*fn)());
  std::int64_t now_ms() const;

  const config::Config& cfg_;
  std::unique_ptr<MembershipTable> table_;
  messaging::Messenger& messenger_;
  runtime::Runtime& rt_;
  SiloAddress self_;
  std::string gateway_;
  ViewListener on_view_;
  Lease lease_;
  bool fence_logged_ = false;  // the last fence state logged (membership thread)

  boost::asio::io_context io_{1};
  std::thread thread_, listener_;
  std::atomic<bool> stopping_{false};
  bool leaving_ = false;   // we mark ourselves dead on the way out: not a reason to exit(3)
  bool draining_ = false;  // shutting_down: not probed, so no lease to keep and no votes to cast
  boost::asio::steady_timer probe_timer_{io_}, heartbeat_timer_{io_}, refresh_timer_{io_};

  mutable std::mutex view_mutex_;
  MembershipSnapshot view_;
  std::unordered_map<std::string, unsigned> missed_;  // by target str: consecutive missed probes
  std::unordered_map<std::string, bool> in_flight_;   // a probe is outstanding
  std::chrono::steady_clock::time_point last_table_warning_{};
  std::chrono::steady_clock::time_point last_cleanup_{};
};

}  // namespace silo::cluster
