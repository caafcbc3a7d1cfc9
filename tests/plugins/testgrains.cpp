// Implementations of testgrains.proto. Process-wide counters (activations, deactivations, live stateless
// workers, ticks after deactivation) are read through the Probe grain.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include <boost/asio/steady_timer.hpp>
#include <silo/silo.hpp>

#include "testgrains.silo.h"

namespace {

std::mutex counters_mutex;
std::map<std::string, std::int64_t> counters;

void bump(const std::string& name, std::int64_t by = 1) {
  std::lock_guard lock(counters_mutex);
  counters[name] += by;
}
void set_max(const std::string& name, std::int64_t value) {
  std::lock_guard lock(counters_mutex);
  counters[name] = std::max(counters[name], value);
}
std::int64_t get(const std::string& name) {
  std::lock_guard lock(counters_mutex);
  auto it = counters.find(name);
  return it == counters.end() ? 0 : it->second;
}

silo::Task<void> sleep_ms(int ms) {
  if (ms <= 0) co_return;
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, std::chrono::milliseconds(ms));
  co_await t.async_wait(boost::asio::use_awaitable);
}

// Shared by the recorder flavours: counts turns in progress across awaits.
template <class Base>
class RecorderImpl : public Base {
 public:
  silo::Task<void> on_activate() override {
    bump(std::string("activations:") + this->grain_type().name + "/" + this->key());
    co_await sleep_ms(20);  // widen the window in which concurrent first calls arrive
    activated_ = true;
  }
  silo::Task<void> on_deactivate() override {
    deactivated_ = true;
    bump(std::string("deactivations:") + this->grain_type().name + "/" + this->key());
    co_return;
  }

  silo::Task<test::WorkReply> Work(const test::WorkRequest& req) override {
    co_return co_await turn(req, false);
  }

 protected:
  silo::Task<test::WorkReply> turn(const test::WorkRequest& req, bool reader) {
    ++active_;
    if (reader)
      ++readers_;
    else
      ++writers_;
    if (readers_ > 0 && writers_ > 0) stats_.set_reader_writer_overlap(stats_.reader_writer_overlap() + 1);
    stats_.set_max_active(std::max<std::int64_t>(stats_.max_active(), active_));
    stats_.set_max_readers(std::max<std::int64_t>(stats_.max_readers(), readers_));
    if (req.block_ms() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(req.block_ms()));
    co_await sleep_ms(req.sleep_ms());
    stats_.set_calls(stats_.calls() + 1);
    --active_;
    if (reader)
      --readers_;
    else
      --writers_;
    test::WorkReply reply;
    reply.set_max_active(stats_.max_active());
    reply.set_calls(stats_.calls());
    reply.set_activated_first(activated_);
    co_return reply;
  }

  int active_ = 0, readers_ = 0, writers_ = 0;
  bool activated_ = false, deactivated_ = false;
  test::StatsReply stats_;
};

class Recorder final : public RecorderImpl<test::RecorderGrain> {
 public:
  silo::Task<test::WorkReply> Read(const test::WorkRequest& req) override {
    co_return co_await turn(req, true);
  }
  silo::Task<test::StatsReply> Stats(const test::Empty&) override { co_return stats_; }
  silo::Task<test::WorkReply> Interleaved(const test::WorkRequest& req) override {
    test::WorkReply r;
    r.set_max_active(active_);  // how many other turns were in progress when this one started
    co_await sleep_ms(req.sleep_ms());
    co_return r;
  }
  silo::Task<test::Empty> StartTimer(const test::TickRequest& req) override {
    register_timer(
        [this]() -> silo::Task<void> {
          if (deactivated_) bump("ticks_after_deactivate:" + key());
          if (active_ > 0) stats_.set_tick_overlap(stats_.tick_overlap() + 1);
          stats_.set_ticks(stats_.ticks() + 1);
          bump("ticks:" + key());
          co_return;
        },
        std::chrono::milliseconds(req.period_ms()), std::chrono::milliseconds(req.period_ms()));
    co_return test::Empty{};
  }
  silo::Task<test::Empty> Deactivate(const test::Empty&) override {
    deactivate_on_idle();
    co_return test::Empty{};
  }
  silo::Task<test::Empty> Fail(const test::FailRequest& req) override {
    if (req.std_exception()) throw std::runtime_error(req.message());
    throw silo::Error(static_cast<silo::StatusCode>(req.code()), req.message());
  }
};

class ReentrantRecorder final : public RecorderImpl<test::ReentrantRecorderGrain> {
 public:
  silo::Task<test::StatsReply> Stats(const test::Empty&) override { co_return stats_; }
};

class FragileRecorder final : public RecorderImpl<test::FragileRecorderGrain> {
 public:
  silo::Task<test::Empty> Fail(const test::FailRequest& req) override {
    throw silo::Error(static_cast<silo::StatusCode>(req.code()), req.message());
  }
};

std::atomic<std::int64_t> workers_live{0};
std::atomic<std::int64_t> worker_instances{0};

class Worker final : public test::WorkerGrain {
 public:
  silo::Task<void> on_activate() override {
    set_max("workers_max", ++workers_live);
    co_return;
  }
  silo::Task<void> on_deactivate() override {
    --workers_live;
    co_return;
  }
  silo::Task<test::WorkReply> Work(const test::WorkRequest& req) override {
    co_await sleep_ms(req.sleep_ms());
    test::WorkReply r;
    r.set_instance(instance_);
    co_return r;
  }

 private:
  std::int64_t instance_ = ++worker_instances;
};

template <class Base, class Ref>
class CycleImpl final : public Base {
 public:
  silo::Task<test::CycleReply> Call(const test::CycleRequest& req) override {
    test::CycleReply reply;
    reply.add_visited(this->key());
    if (req.path_size() > 0) {
      test::CycleRequest next;
      next.mutable_path()->CopyFrom(req.path());
      next.mutable_path()->erase(next.mutable_path()->begin());
      const test::CycleReply rest = co_await this->template grain<Ref>(req.path(0)).Call(next);
      reply.mutable_visited()->MergeFrom(rest.visited());
    }
    co_return reply;
  }
};

class Probe final : public test::ProbeGrain {
 public:
  silo::Task<test::ProbeReply> Get(const test::ProbeRequest& req) override {
    test::ProbeReply r;
    if (req.name() == "workers_live")
      r.set_value(workers_live.load());
    else
      r.set_value(get(req.name()));
    co_return r;
  }
};

class FailsToActivate final : public test::FailsToActivateGrain {
 public:
  silo::Task<void> on_activate() override {
    throw silo::Error(silo::StatusCode::failed_precondition, "refusing to activate " + key());
  }
  silo::Task<test::WorkReply> Work(const test::WorkRequest&) override { co_return test::WorkReply{}; }
};

class Timeouts final : public test::TimeoutsGrain {
 public:
  silo::Task<test::WorkReply> Slow(const test::WorkRequest& req) override {
    co_await sleep_ms(req.sleep_ms());
    test::WorkReply r;
    r.set_calls(++calls_);
    co_return r;
  }

 private:
  std::int64_t calls_ = 0;
};

class Alarm final : public test::AlarmGrain {
 public:
  silo::Task<void> on_activate() override {
    bump("alarm_activations:" + key());
    co_return;
  }
  silo::Task<test::Empty> Set(const test::AlarmRequest& req) override {
    co_await register_reminder(req.name(), std::chrono::milliseconds(req.due_ms()),
                               std::chrono::milliseconds(req.period_ms()));
    co_return test::Empty{};
  }
  silo::Task<test::Empty> Cancel(const test::AlarmRequest& req) override {
    co_await unregister_reminder(req.name());
    co_return test::Empty{};
  }
  silo::Task<test::AlarmList> List(const test::Empty&) override {
    test::AlarmList out;
    for (const auto& r : co_await reminders())
      out.add_names(r.name);
    co_return out;
  }
  silo::Task<test::Empty> Deactivate(const test::Empty&) override {
    deactivate_on_idle();
    co_return test::Empty{};
  }
  silo::Task<test::TickLog> Ticks(const test::Empty&) override {
    test::TickLog log;
    {
      std::lock_guard lock(counters_mutex);
      log = tick_logs[key()];
    }
    co_return log;
  }
  silo::Task<void> on_reminder(const silo::ReminderTick& tick) override {
    bump("alarm:" + key() + "/" + tick.name);
    if (tick.late) bump("alarm_late:" + key());
    {
      using std::chrono::duration_cast;
      using std::chrono::milliseconds;
      std::lock_guard lock(counters_mutex);
      auto* r = tick_logs[key()].add_ticks();
      r->set_name(tick.name);
      r->set_due_ms(duration_cast<milliseconds>(tick.due.time_since_epoch()).count());
      r->set_at_ms(duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
      r->set_late(tick.late);
    }
    co_return;
  }

 private:
  // Process-wide, so a test sees the ticks of every activation this process ran (under counters_mutex).
  static inline std::map<std::string, test::TickLog> tick_logs;
};

}  // namespace

namespace {
// Places every grain on the last candidate: deterministic, so a cluster test can tell it ran.
std::size_t last_candidate(std::string_view, std::string_view, std::span<const silo::PlacementCandidate> c) {
  return c.empty() ? 0 : c.size() - 1;
}
}  // namespace

SILO_PLUGIN(testgrains) {
  registry.add_director("last", last_candidate);
  registry.add<Alarm>();
  registry.add<Recorder>();
  registry.add<ReentrantRecorder>();
  registry.add<FragileRecorder>();
  registry.add<Worker>();
  registry.add<CycleImpl<test::CycleGrain, test::CycleRef>>();
  registry.add<CycleImpl<test::ChainReentrantGrain, test::ChainReentrantRef>>();
  registry.add<Probe>();
  registry.add<FailsToActivate>();
  registry.add<Timeouts>();
}
