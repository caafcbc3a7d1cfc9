#pragma once
// Whether this silo may serve grain calls: the one place the inbound edges (gateway, silo port, directory
// rpcs) ask. Two fences:
//  - dead: the membership declared this silo dead. Set once, never cleared (the process exits).
//  - lease: the silos that probe this one vote it dead after `missed_probes` failed probes in a row, so
//    `missed_probes * probe_interval - probe_timeout` after the last probe it answered it may already be
//    dead and its grains active elsewhere. A silo that has not answered probes from enough of its probers
//    (as many as a death declaration needs) within `membership.lease` (shorter than that, as config
//    validation enforces) stops serving until probes arrive again. It is computed from timestamps at each
//    question, so a silo resumed after SIGSTOP is fenced at its first instruction, before any timer runs.
// A table read does not renew the lease: reading "active" now says nothing about a peer that has been
// failing probes for a while and votes a moment later. Without the table nobody can be declared dead, so
// losing PostgreSQL alone never fences a silo whose peers still reach it.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace silo::cluster {

class Lease {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Lease(std::chrono::milliseconds length) : length_(length) {}

  /// A probe from `silo` (SiloAddress::str()) sent at `sent_unix_ms` (its clock; 0: unknown) reached
  /// this silo. It counts from when it was sent: a probe that sat in the socket of a silo frozen by SIGSTOP
  /// was counted as missed by its sender long ago, and must not renew the lease on resume. (This assumes
  /// the silos' clocks agree to well under the margin between the lease and the earliest death.)
  void heard_from(std::string_view silo, std::int64_t sent_unix_ms) {
    auto at = Clock::now();
    if (sent_unix_ms > 0) {
      const auto age = std::chrono::system_clock::now() -
                       std::chrono::system_clock::time_point(std::chrono::milliseconds(sent_unix_ms));
      if (age > Clock::duration::zero()) at -= std::chrono::duration_cast<Clock::duration>(age);
    }
    std::lock_guard lock(mutex_);
    for (auto& p : probers_)
      if (p.silo == silo && p.last < at) p.last = at;
  }

  /// The silos that probe this one under the latest view, and how many of them must vote to declare it
  /// dead. A prober new to the set starts with a full lease: it cannot have missed probes of a silo it
  /// did not know.
  void set_probers(const std::vector<std::string>& silos, unsigned needed) {
    const auto now = Clock::now();
    std::lock_guard lock(mutex_);
    std::vector<Prober> next;
    for (const auto& s : silos) {
      auto it = std::find_if(probers_.begin(), probers_.end(), [&](const Prober& p) { return p.silo == s; });
      next.push_back(it != probers_.end() ? *it : Prober{s, now});
    }
    probers_ = std::move(next);
    needed_ = std::max(1u, needed);
  }

  /// The membership declared this silo dead: serve nothing from now on.
  void declare_dead() { dead_.store(true, std::memory_order_release); }
  bool dead() const { return dead_.load(std::memory_order_acquire); }

  /// True when this silo must not serve grain calls (dead, or its lease ran out).
  bool fenced() const { return dead() || silent_probers() > 0; }

  /// Why fenced() is true, for the refusal's message; empty when it is not.
  std::string why() const {
    if (dead()) return "this silo was declared dead";
    const unsigned n = silent_probers();
    if (n == 0) return {};
    return "this silo cannot confirm its membership: " + std::to_string(n) +
           " of the silos that probe it sent no probe within its lease of " +
           std::to_string(length_.count()) + " ms";
  }

  std::chrono::milliseconds length() const { return length_; }

 private:
  struct Prober {
    std::string silo;
    Clock::time_point last;
  };

  // How many probers fell silent, when they are enough to declare this silo dead; else 0.
  unsigned silent_probers() const {
    const auto cutoff = Clock::now() - length_;
    std::lock_guard lock(mutex_);
    unsigned n = 0;
    for (const auto& p : probers_)
      if (p.last < cutoff) ++n;
    return n >= needed_ ? n : 0;
  }

  const std::chrono::milliseconds length_;
  std::atomic<bool> dead_{false};
  mutable std::mutex mutex_;
  std::vector<Prober> probers_;
  unsigned needed_ = 1;
};

}  // namespace silo::cluster
