// silo::Client: one batched bidirectional stream per gateway (silo.gateway.Gateway/Connect), correlation ids,
// client-side deadlines, and failover to the next gateway of the list.

#include "silo/client.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "silo/gateway.grpc.pb.h"
#include "silo/wire/frames.hpp"

namespace silo {

const char* to_string(Outcome outcome) noexcept {
  return outcome == Outcome::not_run ? "not_run" : "may_have_run";
}

Outcome outcome_of(const std::exception& e) noexcept {
  const auto* c = dynamic_cast<const CallError*>(&e);
  return c ? c->outcome() : Outcome::may_have_run;
}

namespace asio = boost::asio;
namespace gw = silo::gateway;
using Clock = std::chrono::steady_clock;

namespace {

struct Reply {
  StatusCode code = StatusCode::ok;
  std::string error;
  std::string payload;
  bool not_run = false;  // failures: the call provably never reached a grain
};

// A caller waiting for its reply; complete() runs on the client's executor.
struct Waiter {
  virtual ~Waiter() = default;
  virtual void complete(Reply reply) = 0;
};

struct PendingCall {
  std::unique_ptr<Waiter> waiter;
  gw::Call call;  // kept to resend it when no gateway accepted it, or a draining one did not run it
  Clock::time_point deadline;
  unsigned attempts = 1;
};

}  // namespace

struct Client::Impl {
  class Connection;

  explicit Impl(ClientOptions o) : options(std::move(o)) {}

  void send(PendingCall pending);
  void fail(PendingCall pending, StatusCode code, std::string message, bool not_run) {
    auto waiter = std::move(pending.waiter);
    if (!waiter) return;
    asio::post(io, [w = std::move(waiter), code, message = std::move(message), not_run]() mutable {
      w->complete(Reply{code, std::move(message), {}, not_run});
    });
  }
  void sweep_deadlines();
  void refresh_gateways();
  std::size_t gateway_count() {
    std::lock_guard lock(mutex);
    return gateways.size();
  }
  void connection_done(Connection* c);

  ClientOptions options;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::vector<std::thread> threads;
  asio::steady_timer sweep_timer{io};
  asio::steady_timer refresh_timer{io};

  std::mutex mutex;  // guards the members below
  std::shared_ptr<Connection> current;
  std::vector<std::shared_ptr<Connection>> live;  // every connection not yet done
  std::size_t next_gateway = 0;
  std::vector<std::string> gateways;  // configured + learned from the cluster
  bool refreshing = false;            // a Status call is in flight (the destructor waits for it)
  struct RefreshCall {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<gw::Gateway::Stub> stub;
    std::unique_ptr<grpc::ClientContext> ctx;
    gw::StatusRequest request;
    gw::ClusterStatus reply;
  };
  std::unique_ptr<RefreshCall> refresh_call;
  bool closing = false;
  std::condition_variable all_done;

  std::atomic<std::uint64_t> next_id{1};
};

class Client::Impl::Connection final : public grpc::ClientBidiReactor<gw::ClientFrame, gw::ServerFrame> {
 public:
  Connection(Impl& impl, std::string target) : impl_(impl), target_(std::move(target)) {
    grpc::ChannelArguments args;
    const int max = static_cast<int>(std::min<std::size_t>(impl.options.max_message_size, INT32_MAX));
    args.SetMaxReceiveMessageSize(max);
    args.SetMaxSendMessageSize(max);
    channel_ = grpc::CreateCustomChannel(target_, grpc::InsecureChannelCredentials(), args);
    stub_ = gw::Gateway::NewStub(channel_);
  }

  void start() {
    stub_->async()->Connect(&ctx_, this);
    // Writes start on callers' and the timer's threads, outside gRPC's reactions: without a hold, gRPC may
    // destroy the call (before OnDone) while a write starts on it (the silod double free of issue 10 had
    // this cause). Held until the read side fails; dead_, set first, stops every later write.
    AddHold();
    StartRead(&in_);
    StartCall();
  }

  const std::string& target() const { return target_; }

  /// Queues a call; false when this connection no longer takes calls.
  bool send(PendingCall& pending) {
    std::lock_guard lock(mutex_);
    if (dead_ || draining_) return false;
    const std::uint64_t id = pending.call.id();
    queue_.push_back(pending.call);
    if (pending.waiter) {
      pending_.emplace(id, std::move(pending));
    }
    flush_locked();
    return true;
  }

  bool usable() {
    std::lock_guard lock(mutex_);
    return !dead_ && !draining_;
  }

  /// Fails the calls whose deadline passed. One still queued here is withdrawn: it never ran.
  void expire(Clock::time_point now) {
    std::vector<std::pair<PendingCall, bool>> expired;  // call, never sent
    {
      std::lock_guard lock(mutex_);
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.deadline <= now) {
          expired.emplace_back(std::move(it->second), withdraw_locked(it->first));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      maybe_close_locked();
    }
    for (auto& [p, unsent] : expired) {
      impl_.fail(std::move(p), StatusCode::deadline_exceeded,
                 unsent ? "gateway " + target_ + " did not accept the call before its deadline; not run"
                        : "no answer from gateway " + target_ +
                              " before the call's deadline; it may have run and was not resent",
                 unsent);
    }
  }

  void cancel() { ctx_.TryCancel(); }

  // Calls are written only after the gateway's initial metadata arrived: until then nothing left this
  // process, so a stream that fails before it may resend every call elsewhere. (Writing at once and
  // resending when no metadata came ran calls twice behind a proxy that withheld the gateway's headers.)
  void OnReadInitialMetadataDone(bool ok) override {
    if (!ok) return;
    std::lock_guard lock(mutex_);
    established_ = true;
    flush_locked();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // OnDone follows once the writes in flight end
      {
        std::lock_guard lock(mutex_);
        dead_ = true;
      }
      RemoveHold();
      return;
    }
    std::vector<std::pair<PendingCall, Reply>> done;
    std::vector<PendingCall> retry;  // refused, not run, by a gateway that asks for another one
    {
      std::lock_guard lock(mutex_);
      for (auto& r : *in_.mutable_results()) {
        auto it = pending_.find(r.id());
        if (it == pending_.end()) continue;  // timed out already
        // Never ran, and the refusal is transient (the gateway asks for another one, or the cluster was
        // converging: a directory that could not confirm, a call that bounced between silos): resend it.
        if (r.retry_elsewhere() ||
            (r.not_run() && static_cast<StatusCode>(r.code()) == StatusCode::unavailable)) {
          retry.push_back(std::move(it->second));
          pending_.erase(it);
          continue;
        }
        done.emplace_back(std::move(it->second),
                          Reply{static_cast<StatusCode>(r.code()), std::move(*r.mutable_error()),
                                std::move(*r.mutable_payload()), r.not_run()});
        pending_.erase(it);
      }
      if (in_.draining()) draining_ = true;
      maybe_close_locked();
    }
    for (auto& p : retry) {
      if (p.attempts++ <= impl_.gateway_count())
        impl_.send(std::move(p));
      else
        impl_.fail(std::move(p), StatusCode::unavailable,
                   "every gateway refused the call (shutting down, fenced, or the cluster was changing); not "
                   "run, retry later",
                   true);
    }
    for (auto& [p, reply] : done) {
      asio::post(impl_.io,
                 [w = std::move(p.waiter), r = std::move(reply)]() mutable { w->complete(std::move(r)); });
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    writing_ = false;
    if (ok) flush_locked();
  }

  void OnDone(const grpc::Status& status) override {
    std::vector<std::pair<PendingCall, bool>> orphans;  // call, never sent
    {
      std::lock_guard lock(mutex_);
      dead_ = true;
      for (auto& [id, p] : pending_)
        orphans.emplace_back(std::move(p), withdraw_locked(id));
      pending_.clear();
      // One-way calls left unwritten are dropped, as those written to a broken stream always were.
    }
    for (auto& [p, unsent] : orphans) {
      if (unsent && p.attempts < impl_.gateway_count()) {
        ++p.attempts;
        impl_.send(std::move(p));  // never left this process: safe to try the next gateway
      } else if (unsent) {
        impl_.fail(
            std::move(p), StatusCode::unavailable,
            "no gateway accepted the call (last: " + target_ + ": " + status.error_message() + "); not run",
            true);
      } else {
        impl_.fail(std::move(p), StatusCode::unavailable,
                   "gateway " + target_ + " failed (" + status.error_message() +
                       "); the call may or may not have run; retry if it is idempotent",
                   false);
      }
    }
    impl_.connection_done(this);
  }

 private:
  // Removes call `id` from the calls not yet written; true when it was there (it never left the process).
  bool withdraw_locked(std::uint64_t id) {
    const auto it =
        std::find_if(queue_.begin(), queue_.end(), [id](const gw::Call& c) { return c.id() == id; });
    if (it == queue_.end()) return false;
    queue_.erase(it);
    return true;
  }

  void flush_locked() {
    if (writing_ || dead_ || !established_ || queue_.empty()) return;
    writing_ = true;
    out_.Clear();
    wire::fill_frame(queue_, *out_.mutable_calls(), impl_.options.max_message_size);
    StartWrite(&out_);
  }

  // A draining connection closes its side once its last call is answered.
  void maybe_close_locked() {
    if (draining_ && pending_.empty() && !writes_done_ && !writing_ && !dead_) {
      writes_done_ = true;
      StartWritesDone();
    }
  }

  Impl& impl_;
  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<gw::Gateway::Stub> stub_;
  grpc::ClientContext ctx_;
  gw::ServerFrame in_;
  std::mutex mutex_;
  std::deque<gw::Call> queue_;  // calls not yet written
  gw::ClientFrame out_;         // the frame being written
  std::unordered_map<std::uint64_t, PendingCall> pending_;
  bool writing_ = false, dead_ = false, draining_ = false, established_ = false, writes_done_ = false;
};

void Client::Impl::send(PendingCall pending) {
  if (const auto size = pending.call.ByteSizeLong(); !wire::fits(size, options.max_message_size)) {
    return fail(std::move(pending), StatusCode::resource_exhausted,
                "request of " + std::to_string(size) + " bytes exceeds the client's max_message_size (" +
                    std::to_string(options.max_message_size) + ")",
                true);
  }
  std::size_t count = 0;
  {
    std::lock_guard lock(mutex);
    count = gateways.size();
  }
  for (std::size_t tries = 0; tries <= count; ++tries) {
    std::shared_ptr<Connection> conn;
    {
      std::lock_guard lock(mutex);
      if (closing) break;
      if (!current || !current->usable()) {
        const std::string& target = gateways[next_gateway++ % gateways.size()];
        current = std::make_shared<Connection>(*this, target);
        live.push_back(current);
        current->start();
      }
      conn = current;
    }
    if (conn->send(pending)) return;
  }
  fail(std::move(pending), StatusCode::unavailable, "no gateway of the client's list accepts calls; not run",
       true);
}

void Client::Impl::connection_done(Connection* c) {
  std::lock_guard lock(mutex);
  if (current.get() == c) current.reset();
  // The connection is still running its OnDone: destroy it later, on the executor.
  for (auto it = live.begin(); it != live.end(); ++it) {
    if (it->get() == c) {
      asio::post(io, [keep = std::move(*it)] {});
      live.erase(it);
      break;
    }
  }
  all_done.notify_all();
}

void Client::Impl::refresh_gateways() {
  // Ask the gateway in use (or the first known one) which silos are active and where their gateways are.
  std::string target;
  {
    std::lock_guard lock(mutex);
    if (closing) return;
    target = current ? current->target() : gateways.front();
    refreshing = true;
  }
  // Owned by Impl and replaced only here (on the executor): gRPC aborts when the last reference to a
  // channel is dropped on one of its own callback threads, so the callback must not own the call.
  if (!refresh_call || refresh_call->target != target) {
    refresh_call = std::make_unique<RefreshCall>();
    refresh_call->target = target;
    refresh_call->channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    refresh_call->stub = gw::Gateway::NewStub(refresh_call->channel);
  }
  auto* call = refresh_call.get();
  call->ctx = std::make_unique<grpc::ClientContext>();
  call->ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  call->reply.Clear();
  call->stub->async()->Status(call->ctx.get(), &call->request, &call->reply, [this, call](grpc::Status s) {
    std::unique_lock lock(mutex);
    refreshing = false;
    all_done.notify_all();
    if (closing) return;
    if (s.ok()) {
      std::vector<std::string> learned;
      for (const auto& silo : call->reply.silos())
        if (silo.status() == "active" && !silo.gateway().empty()) learned.push_back(silo.gateway());
      // Active silos first (they take calls), then configured ones nobody mentioned (a fallback to start
      // over from when the whole list is stale).
      std::vector<std::string> merged = learned;
      for (const auto& g : options.gateways)
        if (std::find(merged.begin(), merged.end(), g) == merged.end()) merged.push_back(g);
      gateways = std::move(merged);
    }
    lock.unlock();
    asio::post(io, [this] {
      refresh_timer.expires_after(options.gateway_refresh);
      refresh_timer.async_wait([this](boost::system::error_code ec) {
        if (!ec) refresh_gateways();
      });
    });
  });
}

void Client::Impl::sweep_deadlines() {
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Connection>> conns;
  {
    std::lock_guard lock(mutex);
    conns = live;
  }
  for (auto& c : conns)
    c->expire(now);
  sweep_timer.expires_after(std::chrono::milliseconds(10));
  sweep_timer.async_wait([this](boost::system::error_code ec) {
    if (!ec) sweep_deadlines();
  });
}

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  if (impl_->options.gateways.empty()) {
    throw Error(StatusCode::invalid_argument, "silo::Client needs at least one gateway (host:port)");
  }
  impl_->gateways = impl_->options.gateways;
  impl_->sweep_deadlines();
  if (impl_->options.gateway_refresh.count() > 0) {
    asio::post(impl_->io, [this] { impl_->refresh_gateways(); });
  }
  const unsigned n = std::max(1u, impl_->options.threads);
  for (unsigned i = 0; i < n; ++i)
    impl_->threads.emplace_back([this] { impl_->io.run(); });
}

Client::~Client() {
  {
    std::unique_lock lock(impl_->mutex);
    impl_->closing = true;
    for (auto& c : impl_->live)
      c->cancel();
    impl_->all_done.wait_for(lock, std::chrono::seconds(5),
                             [this] { return impl_->live.empty() && !impl_->refreshing; });
  }
  asio::post(impl_->io, [this] {
    impl_->sweep_timer.cancel();
    impl_->refresh_timer.cancel();
  });
  impl_->work.reset();
  impl_->io.stop();
  for (auto& t : impl_->threads)
    t.join();
}

boost::asio::any_io_executor Client::executor() const {
  return impl_->io.get_executor();
}

std::vector<std::string> Client::gateways() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->gateways;
}

std::string Client::current_gateway() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->current ? impl_->current->target() : std::string();
}

Task<std::unique_ptr<google::protobuf::Message>> Client::call(
    const MethodInfo& method, std::string key, std::unique_ptr<google::protobuf::Message> request,
    CallOptions options) {
  PendingCall pending;
  gw::Call& c = pending.call;
  c.set_id(impl_->next_id.fetch_add(1, std::memory_order_relaxed));
  std::string path = "/";
  path.append(method.type->name).append("/").append(method.name);
  c.set_method(std::move(path));
  c.set_key(std::move(key));
  request->SerializeToString(c.mutable_payload());
  std::chrono::milliseconds timeout = options.timeout;
  if (timeout.count() <= 0) timeout = std::chrono::milliseconds(method.timeout_ms);
  if (timeout.count() <= 0) timeout = impl_->options.default_timeout;
  c.set_timeout_ms(static_cast<std::uint32_t>(timeout.count()));
  const bool one_way = options.one_way || method.one_way;
  c.set_one_way(one_way);
  if (one_way) {
    impl_->send(std::move(pending));
    co_return std::unique_ptr<google::protobuf::Message>(method.response_prototype->New());
  }
  // The gateway answers DEADLINE_EXCEEDED itself; the client's own deadline, a little later, covers a
  // gateway that does not answer at all.
  pending.deadline = Clock::now() + timeout + std::chrono::milliseconds(100);

  Reply reply = co_await asio::async_initiate<decltype(asio::use_awaitable), void(Reply)>(
      [this, &pending](auto handler) {
        using Handler = decltype(handler);
        struct Impl final : Waiter {
          explicit Impl(Handler&& h) : handler(std::move(h)) {}
          void complete(Reply r) override { std::move(handler)(std::move(r)); }
          Handler handler;
        };
        pending.waiter = std::make_unique<Impl>(std::move(handler));
        impl_->send(std::move(pending));
      },
      asio::use_awaitable);
  if (reply.code != StatusCode::ok)
    throw CallError(reply.code, reply.error, reply.not_run ? Outcome::not_run : Outcome::may_have_run);
  std::unique_ptr<google::protobuf::Message> response(method.response_prototype->New());
  if (!response->ParseFromString(reply.payload)) {
    throw CallError(StatusCode::internal,
                    std::string("cannot parse the response of ") + method.type->name + "/" + method.name +
                        " as " + response->GetTypeName(),
                    Outcome::may_have_run);
  }
  co_return response;
}

}  // namespace silo
