#include "cluster/membership.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "cluster/directory.hpp"
#include "messaging/messenger.hpp"
#include "runtime/runtime.hpp"

namespace silo::cluster {

namespace asio = boost::asio;
using std::chrono::milliseconds;

namespace {
std::string host_name() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

// The active silos on the probe ring (hash order).
std::vector<const MembershipRow*> ring_of(const MembershipSnapshot& snap, const SiloAddress& self) {
  std::vector<const MembershipRow*> ring;
  for (const auto& row : snap.rows)
    // Shutting-down silos too: one that dies while draining must still be declared dead (the directory
    // keeps its grains, and waits for its re-registrations, while it is not).
    if (row.status == SiloStatus::active || row.status == SiloStatus::shutting_down || row.address == self)
      ring.push_back(&row);
  std::sort(ring.begin(), ring.end(), [](const auto* a, const auto* b) {
    return stable_hash(a->address.str()) < stable_hash(b->address.str());
  });
  return ring;
}

// Fresh votes a death declaration needs (Orleans' rule): votes_to_kill, but at most a majority of the
// active silos whose i_am_alive is fresh. So a lone survivor of three still declares the two others dead
// once their i_am_alive went stale, and of two silos cut from each other the first voter wins and the
// other, reading itself dead, never votes.
std::size_t votes_needed(const MembershipSnapshot& snap, std::int64_t now_ms,
                         const config::MembershipConfig& m) {
  const std::int64_t stale_after = 4 * m.i_am_alive_interval.count();
  std::size_t fresh = 0;
  for (const auto& r : snap.rows)
    if (r.status == SiloStatus::active && now_ms - r.i_am_alive_ms <= stale_after) ++fresh;
  return std::max<std::size_t>(1, std::min<std::size_t>(m.votes_to_kill, (fresh + 1) / 2));
}
}  // namespace

std::vector<std::string> MembershipAgent::probers_of(const MembershipSnapshot& view, const SiloAddress& self,
                                                     unsigned probed_silos) {
  const MembershipRow* mine = view.find(self);
  if (!mine || mine->status != SiloStatus::active) return {};
  const auto ring = ring_of(view, self);
  const std::size_t n = ring.size();
  const auto me = std::find_if(ring.begin(), ring.end(), [&](const auto* r) { return r->address == self; });
  const std::size_t at = static_cast<std::size_t>(me - ring.begin());
  // probe_tick: each silo probes its next min(probed_silos, n - 1) successors, so these predecessors.
  std::vector<std::string> out;
  // Only active probers vote (a draining one never does), so only their silence can precede our death.
  for (std::size_t i = 1; i <= std::min<std::size_t>(probed_silos, n - 1); ++i) {
    const MembershipRow* prober = ring[(at + n - i) % n];
    if (prober->status == SiloStatus::active) out.push_back(prober->address.str());
  }
  return out;
}

MembershipAgent::MembershipAgent(const config::Config& cfg, std::unique_ptr<MembershipTable> table,
                                 messaging::Messenger& messenger, runtime::Runtime& rt, SiloAddress self,
                                 std::string gateway, ViewListener on_view)
    : cfg_(cfg),
      table_(std::move(table)),
      messenger_(messenger),
      rt_(rt),
      self_(std::move(self)),
      gateway_(std::move(gateway)),
      on_view_(std::move(on_view)),
      lease_(cfg.membership.lease) {
  messenger_.set_lease(&lease_);
}

MembershipAgent::~MembershipAgent() {
  stopping_ = true;
  io_.stop();
  if (thread_.joinable()) thread_.join();
  if (listener_.joinable()) listener_.join();
}

std::int64_t MembershipAgent::now_ms() const {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

MembershipRow MembershipAgent::my_row(SiloStatus status) const {
  MembershipRow row;
  row.address = self_;
  row.name = cfg_.silo.name;
  row.host_name = host_name();
  row.status = status;
  row.gateway = gateway_;
  row.start_ms = self_.generation;
  row.i_am_alive_ms = now_ms();
  for (const auto* cls : rt_.classes())
    row.grain_types.emplace_back(cls->name());
  row.activations = static_cast<std::int64_t>(rt_.activation_count());
  return row;
}

bool MembershipAgent::set_status(SiloStatus status, int attempts) {
  for (int i = 0; i < attempts; ++i) {
    MembershipSnapshot snap = table_->read_all();
    MembershipRow row = my_row(status);
    if (const MembershipRow* mine = snap.find(self_)) {
      if (mine->status == SiloStatus::dead && status != SiloStatus::dead) return false;
      // Leaving by itself clears the votes: peers read "dead without votes" as a graceful leave.
      if (status != SiloStatus::dead) row.suspicions = mine->suspicions;
    }
    if (table_->write_row(row, snap.version)) {
      spdlog::info("membership: silo {} is {} (table version {})", self_.str(), to_string(status),
                   snap.version + 1);
      return true;
    }
  }
  return false;
}

void MembershipAgent::found_myself_dead(const char* where) {
  lease_.declare_dead();  // serve nothing from this instruction on
  spdlog::critical(
      "membership: the cluster declared this silo ({}) dead ({}); exiting so it restarts as a new "
      "generation",
      self_.str(), where);
  spdlog::default_logger()->flush();
  std::_Exit(3);
}

// Rows of earlier generations on this address are silos that can no longer run (this one holds the port):
// after a crash they may still read active, and others would keep them in the ring until probes fail.
void MembershipAgent::retire_old_generations() {
  for (int attempt = 0; attempt < 20; ++attempt) {
    MembershipSnapshot snap = table_->read_all();
    const MembershipRow* old = nullptr;
    for (const auto& row : snap.rows) {
      if (row.address.host == self_.host && row.address.port == self_.port &&
          row.address.generation < self_.generation && row.status != SiloStatus::dead) {
        old = &row;
        break;
      }
    }
    if (!old) return;
    MembershipRow row = *old;
    row.status = SiloStatus::dead;
    row.suspicions.push_back(Suspicion{self_.str(), now_ms()});  // "dead with a vote": not a graceful leave
    if (table_->write_row(row, snap.version)) {
      spdlog::info("membership: retired {} (an earlier generation of this silo, was {})", row.address.str(),
                   to_string(old->status));
    }
  }
}

void MembershipAgent::start() {
  table_->init();
  spdlog::info("membership: table at {}; joining cluster '{}' as {}", table_->describe(), cfg_.cluster.id,
               self_.str());
  retire_old_generations();
  if (!set_status(SiloStatus::joining, 20))
    throw std::runtime_error("membership: could not write this silo's row");
  // Connectivity check: every active silo should answer us before we take part.
  MembershipSnapshot snap = table_->read_all();
  unsigned unreachable = 0;
  for (const auto& row : snap.rows) {
    if (row.status != SiloStatus::active || row.address == self_) continue;
    auto done = std::make_shared<std::promise<bool>>();
    messenger_.ping(row.address, cfg_.membership.probe_timeout * 2, [done](bool ok) { done->set_value(ok); });
    if (!done->get_future().get()) {
      ++unreachable;
      spdlog::warn(
          "membership: active silo {} does not answer; it may be dead (the failure detector decides)",
          row.address.str());
    }
  }
  if (!set_status(SiloStatus::active, 20))
    throw std::runtime_error("membership: could not mark this silo active");
  refresh();
  thread_ = std::thread([this] {
    auto guard = asio::make_work_guard(io_);
    io_.run();
  });
  listener_ = std::thread([this] {
    while (!stopping_) {
      if (table_->wait_for_change(milliseconds(500)) && !stopping_) asio::post(io_, [this] { refresh(); });
    }
  });
  asio::post(io_, [this] {
    schedule(probe_timer_, cfg_.membership.probe_interval, &MembershipAgent::probe_tick);
    schedule(heartbeat_timer_, cfg_.membership.i_am_alive_interval, &MembershipAgent::heartbeat_tick);
    schedule(refresh_timer_, cfg_.membership.poll_interval, &MembershipAgent::refresh);
  });
  (void)unreachable;
}

void MembershipAgent::schedule(asio::steady_timer& timer, milliseconds every, void (MembershipAgent::*fn)()) {
  timer.expires_after(every);
  timer.async_wait([this, &timer, every, fn](boost::system::error_code ec) {
    if (ec || stopping_) return;
    (this->*fn)();
    schedule(timer, every, fn);
  });
}

MembershipSnapshot MembershipAgent::view() const {
  std::lock_guard lock(view_mutex_);
  return view_;
}

void MembershipAgent::refresh() {
  MembershipSnapshot snap;
  try {
    snap = table_->read_all();
  } catch (const TableUnavailable& e) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_table_warning_ > std::chrono::seconds(10)) {
      spdlog::warn("membership: {}; keeping the last view (version {})", e.what(), view().version);
      last_table_warning_ = now;
    }
    return;
  }
  if (const MembershipRow* mine = snap.find(self_); mine && mine->status == SiloStatus::dead && !leaving_)
    found_myself_dead("read in the table");
  // Occasionally drop rows of long-dead silos (Orleans users hit tables full of them: dotnet/orleans#7339).
  const auto now = std::chrono::steady_clock::now();
  if (now - last_cleanup_ > std::chrono::minutes(1)) {
    last_cleanup_ = now;
    try {
      if (int n = table_->cleanup_defunct(cfg_.membership.defunct_age); n > 0) {
        spdlog::info("membership: deleted {} rows of silos dead for over {} s", n,
                     std::chrono::duration_cast<std::chrono::seconds>(cfg_.membership.defunct_age).count());
      }
    } catch (const TableUnavailable&) {
    }
  }
  publish(std::move(snap));
}

void MembershipAgent::publish(MembershipSnapshot snap) {
  bool changed = false;
  {
    std::lock_guard lock(view_mutex_);
    changed = snap.version != view_.version || snap.rows.size() != view_.rows.size();
    if (!changed) {
      for (std::size_t i = 0; i < snap.rows.size() && !changed; ++i) {
        changed =
            snap.rows[i].status != view_.rows[i].status || !(snap.rows[i].address == view_.rows[i].address);
      }
    }
    if (changed) {
      for (const auto& row : snap.rows) {
        const MembershipRow* before = view_.find(row.address);
        if (!before || before->status != row.status) {
          spdlog::info("membership: silo {} ({}) is {}", row.address.str(), row.name, to_string(row.status));
        }
      }
    }
    view_ = snap;
  }
  update_lease(snap);
  // Loads change with every heartbeat; placement wants them even when nobody joined or left.
  on_view_(snap);
}

void MembershipAgent::update_lease(const MembershipSnapshot& snap) {
  // While leaving (shutting_down) nobody probes us, and nobody can vote us dead: no lease to keep.
  lease_.set_probers(
      draining_ ? std::vector<std::string>{} : probers_of(snap, self_, cfg_.membership.probed_silos),
      static_cast<unsigned>(votes_needed(snap, now_ms(), cfg_.membership)));
}

void MembershipAgent::log_fence() {
  const bool fenced = lease_.fenced();
  if (fenced == fence_logged_) return;
  fence_logged_ = fenced;
  if (fenced)
    spdlog::warn("membership: serving no grain calls: {}", lease_.why());
  else
    spdlog::info("membership: lease confirmed again; serving grain calls");
}

void MembershipAgent::probe_tick() {
  log_fence();
  MembershipSnapshot snap = view();
  const auto ring = ring_of(snap, self_);
  auto me = std::find_if(ring.begin(), ring.end(), [this](const auto* r) { return r->address == self_; });
  if (me == ring.end() || ring.size() < 2) return;
  const std::size_t n = ring.size();
  const std::size_t start = static_cast<std::size_t>(me - ring.begin());
  const std::size_t count = std::min<std::size_t>(cfg_.membership.probed_silos, n - 1);
  for (std::size_t i = 1; i <= count; ++i) {
    const SiloAddress target = ring[(start + i) % n]->address;
    if (in_flight_[target.str()]) continue;
    in_flight_[target.str()] = true;
    messenger_.ping(target, cfg_.membership.probe_timeout, [this, target](bool ok) {
      asio::post(io_, [this, target, ok] { on_probe(target, ok); });
    });
  }
}

void MembershipAgent::on_probe(const SiloAddress& target, bool ok) {
  in_flight_[target.str()] = false;
  unsigned& missed = missed_[target.str()];
  if (ok) {
    missed = 0;
    return;
  }
  ++missed;
  spdlog::debug("membership: silo {} missed probe {} of {}", target.str(), missed,
                cfg_.membership.missed_probes);
  if (missed >= cfg_.membership.missed_probes) vote(target);
}

void MembershipAgent::vote(const SiloAddress& target) {
  for (int attempt = 0; attempt < 5; ++attempt) {
    MembershipSnapshot snap;
    try {
      snap = table_->read_all();
    } catch (const TableUnavailable& e) {
      spdlog::warn("membership: cannot vote against {}: {}", target.str(), e.what());
      return;
    }
    // Only an active silo votes: one declared dead stops at once (in a partition of two, the loser of
    // the race reads itself dead here instead of taking the winner down with it).
    const MembershipRow* mine = snap.find(self_);
    if (mine && mine->status == SiloStatus::dead && !leaving_) found_myself_dead("found while voting");
    if (!mine || mine->status != SiloStatus::active || draining_) return;
    const MembershipRow* found = snap.find(target);
    if (!found || found->status == SiloStatus::dead) return publish(std::move(snap));
    MembershipRow row = *found;
    const std::int64_t now = now_ms();
    const std::int64_t expiry = cfg_.membership.vote_expiry.count();
    std::erase_if(row.suspicions,
                  [&](const Suspicion& s) { return now - s.at_ms > expiry || s.voter == self_.str(); });
    row.suspicions.push_back(Suspicion{self_.str(), now});
    // Votes count only from silos still active (a dead or departed voter's suspicion is history).
    std::size_t votes = 0;
    std::string voters;
    for (const auto& s : row.suspicions) {
      SiloAddress voter;
      const MembershipRow* v = parse_silo_address(s.voter, voter) ? snap.find(voter) : nullptr;
      if (!v || v->status != SiloStatus::active) continue;
      ++votes;
      voters += (voters.empty() ? "" : ", ") + s.voter;
    }
    const std::size_t needed = votes_needed(snap, now, cfg_.membership);
    if (votes >= needed) row.status = SiloStatus::dead;
    bool written = false;
    try {
      written = table_->write_row(row, snap.version);
    } catch (const TableUnavailable& e) {
      spdlog::warn("membership: cannot vote against {}: {}", target.str(), e.what());
      return;
    }
    if (written) {
      if (row.status == SiloStatus::dead) {
        spdlog::warn("membership: declared silo {} ({}) dead: {} of {} needed votes ({})", target.str(),
                     row.name, votes, needed, voters);
      } else {
        spdlog::info("membership: suspect silo {} ({}): {} of {} needed votes", target.str(), row.name, votes,
                     needed);
      }
      // A suspicion only: the next missed probe votes again (with a fresher tally: once the silos that
      // went silent with it turn stale, fewer votes suffice), not missed_probes later.
      if (row.status == SiloStatus::dead) missed_[target.str()] = 0;
      refresh();
      return;
    }
  }
}

void MembershipAgent::heartbeat_tick() {
  try {
    table_->heartbeat(self_, now_ms(), static_cast<std::int64_t>(rt_.activation_count()));
  } catch (const TableUnavailable& e) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_table_warning_ > std::chrono::seconds(10)) {
      spdlog::warn("membership: {}", e.what());
      last_table_warning_ = now;
    }
  }
}

void MembershipAgent::prepare_stop(Deadline) {
  // Others stop placing new grains here while we drain.
  auto done = std::make_shared<std::promise<void>>();
  asio::post(io_, [this, done] {
    draining_ = true;  // nobody probes a shutting_down silo: no lease to keep, no votes to cast
    lease_.set_probers({}, 1);
    try {
      set_status(SiloStatus::shutting_down, 5);
    } catch (const std::exception& e) {
      spdlog::warn("membership: could not announce shutting_down: {}", e.what());
    }
    done->set_value();
  });
  done->get_future().wait_for(std::chrono::seconds(5));
}

void MembershipAgent::stop(Deadline) {
  auto done = std::make_shared<std::promise<void>>();
  asio::post(io_, [this, done] {
    leaving_ = true;
    try {
      set_status(SiloStatus::dead, 5);
    } catch (const std::exception& e) {
      spdlog::warn("membership: could not mark this silo dead on the way out: {}", e.what());
    }
    done->set_value();
  });
  done->get_future().wait_for(std::chrono::seconds(5));
  stopping_ = true;
  io_.stop();
  if (thread_.joinable()) thread_.join();
  if (listener_.joinable()) listener_.join();
  spdlog::info("membership: left cluster '{}'", cfg_.cluster.id);
}

}  // namespace silo::cluster
