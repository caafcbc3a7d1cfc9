#include "reminders/reminder_service.hpp"

#include <algorithm>
#include <future>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "runtime/runtime.hpp"

namespace silo::reminders {

namespace asio = boost::asio;
using runtime::Reply;

namespace {
std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
// The next tick after the last one delivered (the first one when none was).
std::int64_t next_due(const ReminderRow& r) {
  return r.last_tick_ms == 0 ? r.start_ms : r.last_tick_ms + r.period_ms;
}
// FNV-1a and a final mix: the same on every silo and build, unlike std::hash.
std::uint64_t stable_hash(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s)
    h = (h ^ c) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}
}  // namespace

std::string keeper_of(const std::vector<Keeper>& active, const std::string& type, const std::string& key) {
  const std::string id = type + "/" + key + "@";
  const Keeper* best = nullptr;
  std::uint64_t best_score = 0;
  for (const auto& k : active) {
    if (std::find(k.grain_types.begin(), k.grain_types.end(), type) == k.grain_types.end()) continue;
    const std::uint64_t score = stable_hash(id + k.silo);
    if (!best || score > best_score || (score == best_score && k.silo > best->silo))
      best = &k, best_score = score;
  }
  return best ? best->silo : std::string();
}

ReminderService::ReminderService(const config::Config& cfg, std::unique_ptr<ReminderTable> table,
                                 runtime::Runtime& rt, std::string self)
    : cfg_(cfg), table_(std::move(table)), rt_(rt), self_(std::move(self)) {}

bool ReminderService::owns(const ReminderRow& r) const {
  return self_.empty() || keeper_of(keepers_, r.grain_type, r.grain_key) == self_;
}

ReminderService::~ReminderService() {
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

template <class F>
void ReminderService::on_thread(F&& f) {
  asio::post(io_, std::forward<F>(f));
}

void ReminderService::start() {
  try {
    table_->init();
  } catch (const TableUnavailable& e) {
    throw std::runtime_error(std::string("reminders: ") + e.what() +
                             " (reminders.provider: " + cfg_.reminders.provider + ")");
  }
  thread_ = std::thread([this] {
    auto guard = asio::make_work_guard(io_);
    io_.run();
  });
  on_thread([this] {
    reload();
    schedule_reload();
  });
  spdlog::info("reminders: table at {}, min period {} ms, refresh every {} ms", table_->describe(),
               cfg_.reminders.min_period.count(), cfg_.reminders.refresh_interval.count());
}

void ReminderService::prepare_stop(Deadline) {
  stopping_ = true;
  auto done = std::make_shared<std::promise<void>>();
  on_thread([this, done] {
    reload_timer_.cancel();
    for (auto& [id, s] : scheduled_)
      s.timer->cancel();
    done->set_value();
  });
  done->get_future().wait_for(std::chrono::seconds(2));
}

void ReminderService::stop(Deadline) {
  stopping_ = true;
  io_.stop();
  if (thread_.joinable()) thread_.join();
  spdlog::info("reminders: stopped ({} were scheduled here)", scheduled_count_.load());
}

void ReminderService::ownership_changed(std::vector<Keeper> active) {
  on_thread([this, active = std::move(active)]() mutable {
    keepers_ = std::move(active);
    reload();
  });
}

void ReminderService::schedule_reload() {
  reload_timer_.expires_after(cfg_.reminders.refresh_interval);
  reload_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || stopping_) return;
    reload();
    schedule_reload();
  });
}

void ReminderService::reload() {
  if (stopping_) return;
  std::vector<ReminderRow> rows;
  try {
    rows = table_->all();
  } catch (const TableUnavailable& e) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_warning_ > std::chrono::seconds(10)) {
      spdlog::warn("reminders: {}; keeping the {} reminders scheduled here", e.what(), scheduled_.size());
      last_warning_ = now;
    }
    return;
  }
  std::map<std::string, ReminderRow> owned;
  for (auto& r : rows) {
    if (owns(r)) owned.emplace(id_of(r), std::move(r));
  }
  for (auto it = scheduled_.begin(); it != scheduled_.end();) {
    auto o = owned.find(it->first);
    const bool gone = o == owned.end() || o->second.start_ms != it->second.row.start_ms ||
                      o->second.period_ms != it->second.row.period_ms;
    if (gone && !it->second.firing) {
      it->second.timer->cancel();
      it = scheduled_.erase(it);
    } else {
      ++it;
    }
  }
  std::size_t added = 0;
  for (auto& [id, row] : owned) {
    auto it = scheduled_.find(id);
    if (it != scheduled_.end()) {
      // Another silo may have delivered ticks meanwhile (ownership moved back and forth).
      it->second.row.last_tick_ms = std::max(it->second.row.last_tick_ms, row.last_tick_ms);
      continue;
    }
    Scheduled s;
    s.row = row;
    s.timer = std::make_unique<asio::steady_timer>(io_);
    auto [pos, ok] = scheduled_.emplace(id, std::move(s));
    arm(pos->second);
    ++added;
  }
  if (added > 0)
    spdlog::info("reminders: {} reminders now scheduled on this silo (+{})", scheduled_.size(), added);
  scheduled_count_ = scheduled_.size();
}

void ReminderService::arm(Scheduled& s) {
  const std::int64_t delay = std::max<std::int64_t>(0, next_due(s.row) - unix_ms());
  const std::string id = id_of(s.row);
  s.timer->expires_after(std::chrono::milliseconds(delay));
  s.timer->async_wait([this, id](boost::system::error_code ec) {
    if (!ec && !stopping_) fire(id);
  });
}

void ReminderService::fire(const std::string& id) {
  auto it = scheduled_.find(id);
  if (it == scheduled_.end() || it->second.firing) return;
  Scheduled& s = it->second;
  const runtime::GrainClass* cls = rt_.find_class(s.row.grain_type);
  if (!cls) {
    spdlog::warn("reminders: reminder {} belongs to grain type {}, which this silo does not load; not firing",
                 id, s.row.grain_type);
    return;
  }
  // Deliver the latest due tick once: ticks missed while no silo could deliver them are not replayed one
  // by one, but the grain learns (late = true) that it was late.
  const std::int64_t now = unix_ms();
  const std::int64_t first = next_due(s.row);
  std::int64_t due = first;
  if (now > first && s.row.period_ms > 0) due = first + (now - first) / s.row.period_ms * s.row.period_ms;
  ReminderTick tick;
  tick.name = s.row.name;
  tick.due = std::chrono::system_clock::time_point(std::chrono::milliseconds(due));
  tick.period = std::chrono::milliseconds(s.row.period_ms);
  tick.late = now - first > s.row.period_ms;
  s.firing = true;
  const std::int64_t start = s.row.start_ms;
  rt_.deliver_reminder(*cls, s.row.grain_key, tick, [this, id, due, start](Reply reply) {
    on_thread([this, id, due, start, reply = std::move(reply)] {
      auto it = scheduled_.find(id);
      if (it == scheduled_.end() || it->second.row.start_ms != start) return;  // re-registered meanwhile
      Scheduled& s = it->second;
      s.firing = false;
      if (stopping_) return;
      if (reply.code == StatusCode::ok) {
        s.row.last_tick_ms = due;
        bool current = true;
        try {
          current = table_->set_last_tick(s.row, due);
        } catch (const TableUnavailable& e) {
          spdlog::warn("reminders: tick of {} delivered but not recorded: {}", id, e.what());
        }
        if (!current) {
          // Unregistered or registered anew since this schedule was read, perhaps by the tick itself (on
          // whichever silo the grain runs): this schedule ends here.
          const ReminderRow row = s.row;
          s.timer->cancel();
          scheduled_.erase(it);
          scheduled_count_ = scheduled_.size();
          resync(row.grain_type, row.grain_key, row.name);
          return;
        }
        arm(s);
      } else {
        // Not delivered: try again soon (the grain's silo may be failing over), not at once in a loop.
        spdlog::warn("reminders: tick of {} not delivered ({} {}); retrying", id, to_string(reply.code),
                     reply.error);
        s.timer->expires_after(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(s.row.period_ms),
                                                                   std::chrono::seconds(2)));
        s.timer->async_wait([this, id](boost::system::error_code ec) {
          if (!ec && !stopping_) fire(id);
        });
      }
    });
  });
}

void ReminderService::resync(const std::string& type, const std::string& key, const std::string& name) {
  std::vector<ReminderRow> rows;
  try {
    rows = table_->for_grain(type, key);
  } catch (const TableUnavailable&) {
    return;  // the next reload picks up whatever is stored
  }
  for (auto& row : rows) {
    if (row.name != name || !owns(row)) continue;
    Scheduled s;
    s.row = std::move(row);
    s.timer = std::make_unique<asio::steady_timer>(io_);
    auto [pos, ok] = scheduled_.emplace(id_of(s.row), std::move(s));
    if (ok) arm(pos->second);
  }
  scheduled_count_ = scheduled_.size();
}

void ReminderService::register_reminder(std::string type, std::string key, std::string name,
                                        std::int64_t start_ms, std::int64_t period_ms,
                                        std::function<void(Reply)> done) {
  on_thread([this,
             row = ReminderRow{std::move(type), std::move(key), std::move(name), start_ms, period_ms, 0},
             done = std::move(done)] {
    try {
      table_->upsert(row);
    } catch (const TableUnavailable& e) {
      return done(Reply::failure(StatusCode::unavailable, e.what()));
    }
    spdlog::info("reminders: registered {} (first tick in {} ms, every {} ms)", id_of(row),
                 std::max<std::int64_t>(0, row.start_ms - unix_ms()), row.period_ms);
    if (owns(row)) {
      auto it = scheduled_.find(id_of(row));
      if (it != scheduled_.end()) {
        it->second.timer->cancel();
        scheduled_.erase(it);
      }
      Scheduled s;
      s.row = row;
      s.timer = std::make_unique<asio::steady_timer>(io_);
      auto [pos, ok] = scheduled_.emplace(id_of(row), std::move(s));
      arm(pos->second);
      scheduled_count_ = scheduled_.size();
    }
    done(Reply{});
  });
}

void ReminderService::unregister_reminder(std::string type, std::string key, std::string name,
                                          std::function<void(Reply)> done) {
  on_thread(
      [this, type = std::move(type), key = std::move(key), name = std::move(name), done = std::move(done)] {
        try {
          table_->remove(type, key, name);
        } catch (const TableUnavailable& e) {
          return done(Reply::failure(StatusCode::unavailable, e.what()));
        }
        // Also while its tick runs (the tick may be what unregisters it): the tick's completion then finds
        // nothing to re-arm. A keeper on another silo learns it from the tick's record (set_last_tick).
        auto it = scheduled_.find(type + "/" + key + "/" + name);
        if (it != scheduled_.end()) {
          it->second.timer->cancel();
          scheduled_.erase(it);
        }
        scheduled_count_ = scheduled_.size();
        spdlog::info("reminders: unregistered {}/{}/{}", type, key, name);
        done(Reply{});
      });
}

void ReminderService::list(std::string type, std::string key,
                           std::function<void(Reply, std::vector<ReminderInfo>)> done) {
  on_thread([this, type = std::move(type), key = std::move(key), done = std::move(done)] {
    std::vector<ReminderInfo> out;
    try {
      for (const auto& r : table_->for_grain(type, key)) {
        out.push_back(
            ReminderInfo{r.name, std::chrono::system_clock::time_point(std::chrono::milliseconds(r.start_ms)),
                         std::chrono::milliseconds(r.period_ms)});
      }
    } catch (const TableUnavailable& e) {
      return done(Reply::failure(StatusCode::unavailable, e.what()), {});
    }
    done(Reply{}, std::move(out));
  });
}

}  // namespace silo::reminders
