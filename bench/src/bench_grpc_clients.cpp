// bench_grpc: gateway clients and raw gRPC baselines. Every client keeps `inflight` calls outstanding
// (closed loop: a lane sends its next call when the previous one answered), warms up, then measures.
//   silo-client   silo::Client -> bench.Echo/Echo (key per lane), the batched gateway stream
//   stream-client the same frames (silo.gateway.ClientFrame/ServerFrame) over a raw callback bidi stream
//   unary-client  unary /bench.Echo/Echo through grpc::GenericStub, key in `silo-key`
//   pingpong      silo::Client -> benchpp.Pinger/Run: Pingers on the gateway's silo calling Pongers placed
//                 (hash placement) on silo `place_on`
//   failover      activates Pongers on silo `victim`, kill -9s it (`victim_pid`), and times until every one
//                 of them answers again through the gateway
//   stream-server, unary-server: bench_grpc_servers.cpp

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <silo/client.hpp>

#include "bench.silo.h"
#include "bench_grpc.hpp"
#include "cluster/directory.hpp"
#include "pingpong.silo.h"
#include "silo/gateway.grpc.pb.h"
#include "silo/wire/frames.hpp"
#include "stats.hpp"

namespace bench {

namespace {

namespace gw = silo::gateway;

enum Phase : int { warm = 0, measure = 1, done = 2 };

// The measured window, and what each lane saw in it. Lanes record only calls that started and ended
// inside the window.
struct Window {
  std::atomic<int> phase{warm};
  Clock::time_point start, end;
  void run(double warm_s, double measure_s) {
    std::this_thread::sleep_for(std::chrono::duration<double>(warm_s));
    start = Clock::now();
    phase.store(measure);
    std::this_thread::sleep_for(std::chrono::duration<double>(measure_s));
    phase.store(done);
    end = Clock::now();
  }
  bool counts(Clock::time_point call_start) const {
    return phase.load(std::memory_order_acquire) == measure && call_start >= start;
  }
  double seconds() const { return std::chrono::duration<double>(end - start).count(); }
};

std::string echo_payload(std::size_t size) {
  bench::Payload p;
  p.set_data(std::string(size, 'x'));
  return p.SerializeAsString();
}

struct Common {
  std::string target;
  unsigned inflight;
  std::size_t payload;
  double warmup, seconds;
  explicit Common(const Args& a)
      : target(a.str("target", "127.0.0.1:30000")),
        inflight(static_cast<unsigned>(a.num("inflight", 64))),
        payload(static_cast<std::size_t>(a.num("payload", 64))),
        warmup(a.real("warmup", 1.0)),
        seconds(a.real("seconds", 3.0)) {}
};

int silo_client(const Args& args) {
  const Common c(args);
  silo::Client client({.gateways = {c.target}, .threads = static_cast<unsigned>(args.num("threads", 1))});
  bench::Payload payload;
  payload.set_data(std::string(c.payload, 'x'));
  Window window;
  std::vector<Histogram> hists(c.inflight);
  std::vector<std::uint64_t> ops(c.inflight, 0);
  std::atomic<std::uint64_t> failures{0};
  std::vector<std::future<void>> lanes;
  for (unsigned lane = 0; lane < c.inflight; ++lane) {
    lanes.push_back(client.spawn([&, lane]() -> silo::Task<void> {
      auto ref = client.ref<bench::EchoRef>("e" + std::to_string(lane));
      while (window.phase.load(std::memory_order_acquire) != done) {
        const auto t0 = Clock::now();
        try {
          co_await ref.Echo(payload);
        } catch (const silo::Error&) {
          ++failures;
          continue;
        }
        if (window.counts(t0)) {
          hists[lane].record(t0, Clock::now());
          ++ops[lane];
        }
      }
    }));
  }
  window.run(c.warmup, c.seconds);
  for (auto& f : lanes)
    f.get();
  Histogram h;
  std::uint64_t total = 0;
  for (unsigned i = 0; i < c.inflight; ++i) {
    h.merge(hists[i]);
    total += ops[i];
  }
  print_result("silo-client", total, window.seconds(), &h, "\"failures\":" + std::to_string(failures.load()));
  return 0;
}

// The raw streaming client: the silo::Client's protocol and batching (a frame carries every call queued
// while the previous write was in flight), without coroutines, executors or per-call bookkeeping maps.
class RawStream final : public grpc::ClientBidiReactor<gw::ClientFrame, gw::ServerFrame> {
 public:
  RawStream(gw::Gateway::Stub& stub, const Common& c, Window& window)
      : c_(c), window_(window), payload_(echo_payload(c.payload)), starts_(c.inflight), hist_() {
    for (unsigned lane = 0; lane < c.inflight; ++lane)
      keys_.push_back("e" + std::to_string(lane));
    stub.async()->Connect(&ctx_, this);
    {
      std::lock_guard lock(mutex_);
      for (unsigned lane = 0; lane < c.inflight; ++lane)
        queue_locked(lane);
      flush_locked();
    }
    StartRead(&in_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const auto now = Clock::now();
    {
      std::lock_guard lock(mutex_);
      for (const auto& r : in_.results()) {
        const auto lane = static_cast<unsigned>(r.id() % c_.inflight);
        if (r.code() != 0)
          ++failures_;
        else if (window_.counts(starts_[lane])) {
          hist_.record(starts_[lane], now);
          ++ops_;
        }
        if (window_.phase.load(std::memory_order_acquire) != done)
          queue_locked(lane);
        else
          --live_;
      }
      flush_locked();
      if (live_ == 0 && !writes_done_ && !writing_) {
        writes_done_ = true;
        StartWritesDone();
      }
    }
    in_.Clear();
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    writing_ = false;
    if (!ok) return;
    flush_locked();
    if (live_ == 0 && !writes_done_ && !writing_) {
      writes_done_ = true;
      StartWritesDone();
    }
  }
  void OnDone(const grpc::Status& s) override {
    status_ = s;
    done_.set_value();
  }
  void wait() { done_.get_future().wait(); }
  const Histogram& hist() const { return hist_; }
  std::uint64_t ops() const { return ops_; }
  std::uint64_t failures() const { return failures_; }

 private:
  void queue_locked(unsigned lane) {
    gw::Call call;
    call.set_id(next_seq_++ * c_.inflight + lane);
    call.set_method("/bench.Echo/Echo");
    call.set_key(keys_[lane]);
    call.set_payload(payload_);
    call.set_timeout_ms(30000);
    starts_[lane] = Clock::now();
    queue_.push_back(std::move(call));
  }
  void flush_locked() {
    if (writing_ || writes_done_ || queue_.empty()) return;
    writing_ = true;
    out_.Clear();
    silo::wire::fill_frame(queue_, *out_.mutable_calls(), 4 * 1024 * 1024);
    StartWrite(&out_);
  }

  const Common& c_;
  Window& window_;
  std::string payload_;
  std::vector<std::string> keys_;
  std::vector<Clock::time_point> starts_;
  Histogram hist_;
  std::uint64_t ops_ = 0, failures_ = 0, next_seq_ = 0;
  unsigned live_ = c_.inflight;
  grpc::ClientContext ctx_;
  gw::ClientFrame out_;
  gw::ServerFrame in_;
  std::mutex mutex_;
  std::deque<gw::Call> queue_;
  bool writing_ = false, writes_done_ = false;
  grpc::Status status_;
  std::promise<void> done_;
};

int stream_client(const Args& args) {
  const Common c(args);
  auto channel = grpc::CreateChannel(c.target, grpc::InsecureChannelCredentials());
  auto stub = gw::Gateway::NewStub(channel);
  Window window;
  RawStream stream(*stub, c, window);
  window.run(c.warmup, c.seconds);
  stream.wait();
  print_result("stream-client", stream.ops(), window.seconds(), &stream.hist(),
               "\"failures\":" + std::to_string(stream.failures()));
  return 0;
}

// Plain unary calls: one ClientContext per call (gRPC requires it), completions on gRPC's threads.
class UnaryLanes {
 public:
  UnaryLanes(const Common& c, Window& window)
      : c_(c),
        window_(window),
        channel_(grpc::CreateChannel(c.target, grpc::InsecureChannelCredentials())),
        stub_(channel_),
        payload_(echo_payload(c.payload)),
        lanes_(c.inflight) {}

  void run() {
    for (unsigned lane = 0; lane < c_.inflight; ++lane)
      start(lane);
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return live_ == 0; });
  }
  const Histogram& hist() const { return hist_; }
  std::uint64_t ops() const { return ops_; }
  std::uint64_t failures() const { return failures_; }

 private:
  struct Lane {
    std::unique_ptr<grpc::ClientContext> ctx;
    grpc::ByteBuffer request, response;
    Clock::time_point start;
  };
  void start(unsigned lane) {
    Lane& l = lanes_[lane];
    l.ctx = std::make_unique<grpc::ClientContext>();
    l.ctx->AddMetadata("silo-key", "e" + std::to_string(lane));
    grpc::Slice slice(payload_);
    l.request = grpc::ByteBuffer(&slice, 1);
    l.start = Clock::now();
    stub_.UnaryCall(l.ctx.get(), "/bench.Echo/Echo", grpc::StubOptions(), &l.request, &l.response,
                    [this, lane](grpc::Status s) { finished(lane, s); });
  }
  void finished(unsigned lane, const grpc::Status& s) {
    const auto now = Clock::now();
    bool again = false;
    {
      std::lock_guard lock(mutex_);
      if (!s.ok())
        ++failures_;
      else if (window_.counts(lanes_[lane].start)) {
        hist_.record(lanes_[lane].start, now);
        ++ops_;
      }
      again = window_.phase.load(std::memory_order_acquire) != done;
      if (!again && --live_ == 0) cv_.notify_all();
    }
    if (again) start(lane);
  }

  const Common& c_;
  Window& window_;
  std::shared_ptr<grpc::Channel> channel_;
  grpc::GenericStub stub_;
  std::string payload_;
  std::vector<Lane> lanes_;
  std::mutex mutex_;
  std::condition_variable cv_;
  Histogram hist_;
  std::uint64_t ops_ = 0, failures_ = 0;
  unsigned live_ = c_.inflight;
};

int unary_client(const Args& args) {
  const Common c(args);
  Window window;
  UnaryLanes lanes(c, window);
  std::thread timer([&] { window.run(c.warmup, c.seconds); });
  lanes.run();
  timer.join();
  print_result("unary-client", lanes.ops(), window.seconds(), &lanes.hist(),
               "\"failures\":" + std::to_string(lanes.failures()));
  return 0;
}

// The active silos as the gateway's Status reports them.
std::vector<gw::SiloInfo> cluster_status(const std::string& target) {
  auto stub = gw::Gateway::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  gw::ClusterStatus status;
  const auto s = stub->Status(&ctx, gw::StatusRequest{}, &status);
  if (!s.ok()) throw std::runtime_error("Status from " + target + ": " + s.error_message());
  std::vector<gw::SiloInfo> out;
  for (const auto& silo : status.silos())
    if (silo.status() == "active") out.push_back(silo);
  return out;
}

// Waits (30 s at most) until the gateway sees `expect` active silos.
std::vector<gw::SiloInfo> wait_for_silos(const std::string& target, std::size_t expect) {
  const auto until = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    auto silos = cluster_status(target);
    if (silos.size() == expect) return silos;
    if (Clock::now() > until) {
      throw std::runtime_error("expected " + std::to_string(expect) + " active silos, the gateway sees " +
                               std::to_string(silos.size()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// `count` keys of grain type `type` that hash placement (rendezvous hashing over the active silos, as
// silod's ClusterRouter::place does it) puts on silo `name`.
std::vector<std::string> keys_on(const std::vector<gw::SiloInfo>& silos, const std::string& name,
                                 const std::string& type, const std::string& prefix, unsigned count) {
  std::vector<std::string> keys;
  for (unsigned n = 0; keys.size() < count; ++n) {
    if (n > count * 1000) throw std::runtime_error("silo " + name + " never wins hash placement");
    const std::string key = prefix + std::to_string(n);
    const std::string id = type + "/" + key;
    const gw::SiloInfo* best = nullptr;
    std::uint64_t best_score = 0;
    for (const auto& s : silos) {
      const auto score =
          silo::cluster::stable_hash(id + "@" + s.address() + "@" + std::to_string(s.generation()));
      if (!best || score > best_score) best = &s, best_score = score;
    }
    if (best && best->name() == name) keys.push_back(key);
  }
  return keys;
}

// Cross-silo: `inflight` Pinger grains on the gateway's silo (prefer_local), each calling its own Ponger
// `calls` times; the Pongers live on silo `place_on`.
int pingpong(const Args& args) {
  const Common c(args);
  const auto calls = static_cast<std::uint32_t>(args.num("calls", 2000));
  const auto warmup = static_cast<std::uint32_t>(args.num("warmup_calls", 200));
  const auto silos = wait_for_silos(c.target, static_cast<std::size_t>(args.num("silos", 2)));
  const auto pongers = keys_on(silos, args.str("place_on"), "benchpp.Ponger", "ponger-", c.inflight);
  silo::Client client({.gateways = {c.target}, .default_timeout = std::chrono::seconds(120)});
  auto run_all = [&](std::uint32_t n, bool record) {
    std::vector<std::future<benchpp::RunResult>> futures;
    for (unsigned i = 0; i < c.inflight; ++i) {
      benchpp::RunRequest req;
      req.set_ponger(pongers[i]);
      req.set_calls(n);
      req.set_record(record);
      futures.push_back(client.spawn(client.ref<benchpp::PingerRef>("pinger-" + std::to_string(i)).Run(req)));
    }
    Histogram h;
    std::uint64_t total = 0;
    for (auto& f : futures) {
      const auto r = f.get();
      total += r.calls();
      for (int j = 0; j < r.latency().index_size(); ++j)
        h.add(r.latency().index(j), r.latency().count(j));
    }
    return std::make_pair(total, h);
  };
  run_all(warmup, false);
  const auto t0 = Clock::now();
  auto [total, h] = run_all(calls, true);
  print_result("pingpong", total, seconds_since(t0), &h);
  return 0;
}

// Failover: waits for `silos` active silos, activates `grains` Pongers on `victim`, kills it with SIGKILL
// and polls all of them (each round in parallel, 1 s timeout per call) until one round succeeds entirely.
int failover(const Args& args) {
  const std::string target = args.str("target", "127.0.0.1:30000");
  const std::string victim = args.str("victim");
  const auto victim_pid = static_cast<pid_t>(args.num("victim_pid", 0));
  const auto grains = static_cast<unsigned>(args.num("grains", 200));
  const auto expect = static_cast<std::size_t>(args.num("silos", 3));
  const auto limit = std::chrono::duration<double>(args.real("limit", 60));
  if (victim_pid <= 0) throw std::runtime_error("victim_pid= is required");
  const auto silos = wait_for_silos(target, expect);
  const auto keys =
      keys_on(silos, victim, "benchpp.Ponger", "fo-" + std::to_string(::getpid()) + "-", grains);
  silo::Client client({.gateways = {target}});
  auto round = [&](std::chrono::milliseconds timeout) {
    std::vector<std::future<benchpp::Ball>> futures;
    silo::CallOptions options;
    options.timeout = timeout;
    for (const auto& k : keys)
      futures.push_back(client.spawn(client.ref<benchpp::PongerRef>(k).Ping(benchpp::Ball{}, options)));
    unsigned ok = 0;
    for (auto& f : futures) {
      try {
        f.get();
        ++ok;
      } catch (const silo::Error&) {
      }
    }
    return ok;
  };
  if (round(std::chrono::seconds(10)) != keys.size()) throw std::runtime_error("grains did not activate");
  const auto t0 = Clock::now();
  ::kill(victim_pid, SIGKILL);
  unsigned rounds = 0;
  while (Clock::now() - t0 < limit) {
    ++rounds;
    if (round(std::chrono::milliseconds(1000)) == keys.size()) {
      print_result(
          "failover", keys.size(), seconds_since(t0), nullptr,
          "\"recovery_s\":" + std::to_string(seconds_since(t0)) + ",\"rounds\":" + std::to_string(rounds));
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("grains of the killed silo still fail after the limit");
}

}  // namespace

}  // namespace bench

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_grpc {silo-client|stream-client|unary-client|pingpong|failover|stream-server|"
                 "unary-server} [key=value ...]\n");
    return 2;
  }
  try {
    const std::string mode = argv[1];
    const bench::Args args(argc, argv, 2);
    if (mode == "silo-client") return bench::silo_client(args);
    if (mode == "stream-client") return bench::stream_client(args);
    if (mode == "unary-client") return bench::unary_client(args);
    if (mode == "pingpong") return bench::pingpong(args);
    if (mode == "failover") return bench::failover(args);
    if (mode == "stream-server") return bench::stream_server(args);
    if (mode == "unary-server") return bench::unary_server(args);
    std::fprintf(stderr, "bench_grpc: unknown mode %s\n", mode.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_grpc: %s\n", e.what());
    return 1;
  }
}
