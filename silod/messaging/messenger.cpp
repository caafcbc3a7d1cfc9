#include "messaging/messenger.hpp"

#include "messaging/batched_stream.hpp"

#include <deque>
#include <set>
#include <thread>

#include <silo/error.hpp>

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "cluster/lease.hpp"
#include "silo/internal.grpc.pb.h"
#include "silo/wire/frames.hpp"

namespace silo::messaging {

namespace {

std::shared_ptr<grpc::Channel> make_channel(const std::string& endpoint, std::size_t max_message) {
  grpc::ChannelArguments args;
  const int max = static_cast<int>(std::min<std::size_t>(max_message, INT32_MAX));
  args.SetMaxReceiveMessageSize(max);
  args.SetMaxSendMessageSize(max);
  // gRPC's default reconnect backoff grows to two minutes; a restarted peer must be reachable at once.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args);
}

in::Envelope failure_response(std::uint64_t id, StatusCode code, const std::string& why,
                              bool not_run = false) {
  in::Envelope r;
  r.set_id(id);
  r.set_kind(in::Envelope::RESPONSE);
  r.set_code(static_cast<int>(code));
  r.set_error(why);
  r.set_not_run(not_run);
  return r;
}

// The incarnation a call is meant for, from its `silo-to` metadata; empty when the caller named none.
std::string target_of(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  const auto it = md.find(kTargetKey);
  return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// Why this silo refuses a call meant for `target`, or empty: another generation on this address (a
// restarted silo is a new silo; the caller's view is stale), or fenced.
std::string refusal(const Messenger& m, const std::string& target) {
  if (!target.empty() && target != m.self().str())
    return "silo " + m.self().str() + " is not " + target + " (that generation is gone)";
  if (m.lease() && m.lease()->fenced()) return "silo " + m.self().str() + ": " + m.lease()->why();
  return {};
}

// Refuses a whole stream at once: nothing it carried ran.
class RefusedStream final : public grpc::ServerBidiReactor<in::Batch, in::Batch> {
 public:
  RefusedStream(grpc::CallbackServerContext* ctx, const std::string& why) {
    ctx->AddTrailingMetadata(kOutcomeKey, "not-run");
    Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, why));
  }
  void OnDone() override { delete this; }
};

// A peer's stream into this silo. Requests are handed over as they arrive; responses are batched back.
class InboundStream final : public BatchedServerStream<InboundStream, in::Batch, in::Batch, in::Envelope> {
 public:
  class Sink final : public ResponseSink {
   public:
    explicit Sink(InboundStream* s) : stream_(s) {}
    void send(in::Envelope response) override {
      std::lock_guard lock(mutex_);
      if (stream_) stream_->write(std::move(response));
    }
    void detach() {
      std::lock_guard lock(mutex_);
      stream_ = nullptr;
    }

   private:
    std::mutex mutex_;
    InboundStream* stream_;
  };

  InboundStream(const Messenger& m, std::size_t max_message)
      : BatchedServerStream(max_message), messenger_(m), sink_(std::make_shared<Sink>(this)) {
    StartSendInitialMetadata();
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      std::lock_guard lock(mutex_);
      reading_done_ = true;
      maybe_finish_locked();
      return;
    }
    if (peer_.empty() && !in_.sender().empty()) peer_ = in_.sender();
    // Checked once per batch. A fenced silo runs nothing (its grains may already be active elsewhere), and
    // nothing runs that a silo declared dead (or superseded by its own restart) sent: it may be a frozen
    // process's late bytes, and its calls' callers were failed when it died. Each request is answered
    // "not run" at once; one-way calls are dropped.
    std::string refused;
    const cluster::Lease* lease = messenger_.lease();
    if (lease && lease->fenced()) {
      refused = "silo " + messenger_.self().str() + ": " + lease->why() + "; not run";
    } else if (!peer_.empty() && messenger_.handlers().refuse_sender) {
      if (std::string why = messenger_.handlers().refuse_sender(peer_); !why.empty())
        refused = "silo " + messenger_.self().str() + " refuses calls from silo " + peer_ + ": " + why +
                  "; not run";
    }
    for (auto& env : *in_.mutable_envelopes()) {
      if (env.kind() == in::Envelope::REQUEST) {
        {
          std::lock_guard lock(mutex_);
          ++outstanding_;
        }
        if (!refused.empty()) {
          write(failure_response(env.id(), StatusCode::unavailable, refused, true));
          continue;
        }
        messenger_.handlers().on_request(std::move(env), sink_);
      } else if (env.kind() == in::Envelope::ONE_WAY && refused.empty()) {
        messenger_.handlers().on_request(std::move(env), nullptr);
      }
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnDone() override {
    sink_->detach();
    delete this;
  }

  void write(in::Envelope response) {
    std::lock_guard lock(mutex_);
    --outstanding_;
    if (finished_ || broken_) {
      maybe_finish_locked();
      return;
    }
    if (!wire::fits(response.ByteSizeLong(), max_message_)) {
      const auto size = response.ByteSizeLong();
      response.clear_payload();
      response.set_code(static_cast<int>(StatusCode::resource_exhausted));
      response.set_error("response of " + std::to_string(size) + " bytes exceeds the message size limit (" +
                         std::to_string(max_message_) + ")");
    }
    push_locked(std::move(response));
  }

 private:
  friend class BatchedServerStream<InboundStream, in::Batch, in::Batch, in::Envelope>;
  google::protobuf::RepeatedPtrField<in::Envelope>* frame_items(in::Batch& out) {
    return out.mutable_envelopes();
  }
  bool announce_locked(in::Batch&) { return false; }
  // Responses reach this stream through the sink, which OnDone detaches: a broken stream may end at once.
  bool can_cancel_locked() const { return true; }
  bool can_end_locked() const { return reading_done_ && outstanding_ <= 0; }

  const Messenger& messenger_;
  std::shared_ptr<Sink> sink_;
  std::string peer_;
  in::Batch in_;
  std::int64_t outstanding_ = 0;
  bool reading_done_ = false;
};

}  // namespace

struct Messenger::Services final : public in::Silo::CallbackService {
  explicit Services(Messenger& m) : messenger(m) {}

  grpc::ServerBidiReactor<in::Batch, in::Batch>* Connect(grpc::CallbackServerContext* ctx) override {
    // Only the generation check here: the lease is checked per request, a stream outlives fences.
    const std::string target = target_of(ctx);
    if (!target.empty() && target != messenger.self().str())
      return new RefusedStream(ctx, refusal(messenger, target));
    return new InboundStream(messenger, messenger.max_message());
  }

  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* ctx, const in::PingRequest* req,
                                 in::PingReply* reply) override {
    auto* r = ctx->DefaultReactor();
    // A probe meant for an earlier generation on this address must fail: that silo is gone.
    if (!req->to().empty() && req->to() != messenger.self().str()) {
      r->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "this is " + messenger.self().str()));
      return r;
    }
    // A probe answered is what keeps this silo's lease (cluster/lease.hpp).
    if (messenger.lease()) messenger.lease()->heard_from(req->from(), req->sent_unix_ms());
    reply->set_silo(messenger.self().str());
    if (messenger.handlers().activations) reply->set_activations(messenger.handlers().activations());
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerUnaryReactor* Directory(grpc::CallbackServerContext* ctx, const in::DirectoryRequest* req,
                                      in::DirectoryReply* reply) override {
    auto* r = ctx->DefaultReactor();
    if (!messenger.handlers().on_directory) {
      r->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "directory not ready"));
      return r;
    }
    if (const std::string why = refusal(messenger, target_of(ctx)); !why.empty()) {
      ctx->AddTrailingMetadata(kOutcomeKey, "not-run");
      r->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, why));
      return r;
    }
    *reply = messenger.handlers().on_directory(*req);
    r->Finish(grpc::Status::OK);
    return r;
  }

  Messenger& messenger;
};

// This silo's stream to one peer: requests out, responses back.
class Messenger::PeerLink final : public grpc::ClientBidiReactor<in::Batch, in::Batch> {
 public:
  PeerLink(Messenger& m, cluster::SiloAddress peer)
      : messenger_(m),
        peer_(std::move(peer)),
        channel_(make_channel(peer_.endpoint(), m.cfg_.gateway.max_message_size)),
        stub_(in::Silo::NewStub(channel_)) {}

  void start(std::shared_ptr<PeerLink> self) {
    self_ = std::move(self);
    ctx_.AddMetadata(kTargetKey, peer_.str());
    stub_->async()->Connect(&ctx_, this);
    // Writes start on other threads (send, drain, close_when_idle), outside gRPC's reactions. gRPC destroys
    // its side of the call as soon as the last operation completes, before OnDone runs; a write started in
    // between used the destroyed call and later freed its buffers a second time (the "double free" of
    // issue 10, 16 ms after a stream to a killed peer broke). The hold keeps the call until no write can
    // start any more: OnReadDone(false) sets dead_ (under mutex_, which every start of a write checks) and
    // only then removes it.
    AddHold();
    StartRead(&in_);
    StartCall();
  }

  in::Silo::Stub& stub() { return *stub_; }
  const cluster::SiloAddress& peer() const { return peer_; }

  bool send(in::Envelope& env) {
    std::vector<std::uint64_t> refused;
    {
      std::lock_guard lock(mutex_);
      if (dead_ || draining_ || writes_done_) return false;
      if (env.kind() == in::Envelope::REQUEST) outstanding_.insert(env.id());
      queue_.push_back(std::move(env));
      flush_locked(refused);
    }
    fail_refused(refused);
    return true;
  }

  bool alive() {
    std::lock_guard lock(mutex_);
    return !dead_ && !draining_ && !writes_done_;
  }

  void kill() { ctx_.TryCancel(); }

  /// The peer leaves gracefully: send nothing new, let the calls in flight finish, then close our side
  /// (its server then ends the stream). Cancelling instead would fail calls it would still answer.
  void drain() {
    std::lock_guard lock(mutex_);
    draining_ = true;
    maybe_close_locked();
  }

  /// This silo is stopping: close our side as soon as nothing is in flight on it, so that the peer's
  /// server, which waits for its inbound streams when it stops too, is not kept waiting for us while we
  /// wait for it (a whole-cluster stop used to take the full shutdown_timeout, issue 10). Unlike drain(),
  /// sends are still taken until then: calls relayed by this silo while it stops still go out.
  void close_when_idle(bool now) {
    std::lock_guard lock(mutex_);
    closing_ = true;
    // A link opened while stopping (now=false) closes after the answer to its first send, or once
    // connected if it carries nothing (a ping or directory call only borrowed its channel).
    if (now) maybe_close_locked();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The stream is over: no write starts after this; OnDone follows once the writes in flight end.
      {
        std::lock_guard lock(mutex_);
        dead_ = true;
      }
      RemoveHold();
      return;
    }
    for (auto& env : *in_.mutable_envelopes()) {
      {
        std::lock_guard lock(mutex_);
        if (!outstanding_.erase(env.id())) continue;  // failed already
      }
      messenger_.handlers_.on_response(std::move(env));
    }
    {
      std::lock_guard lock(mutex_);
      maybe_close_locked();
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::vector<std::uint64_t> refused;
    {
      std::lock_guard lock(mutex_);
      writing_ = false;
      if (ok) flush_locked(refused);
      maybe_close_locked();
    }
    fail_refused(refused);
  }

  void OnDone(const grpc::Status& status) override {
    std::set<std::uint64_t> orphans;
    {
      std::lock_guard lock(mutex_);
      dead_ = true;
      orphans.swap(outstanding_);
    }
    // The peer refused the stream before running anything on it (another generation lives there now).
    const auto& trailing = ctx_.GetServerTrailingMetadata();
    const auto outcome = trailing.find(kOutcomeKey);
    const bool not_run = outcome != trailing.end() && outcome->second == "not-run";
    if (!orphans.empty()) {
      spdlog::warn("messaging: stream to silo {} ended ({}); failing {} calls waiting on it", peer_.str(),
                   status.error_message(), orphans.size());
    }
    for (auto id : orphans) {
      messenger_.handlers_.on_response(
          not_run ? failure_response(
                        id, StatusCode::unavailable,
                        "silo " + peer_.str() + " refused the call (" + status.error_message() + "); not run",
                        true)
                  : failure_response(id, StatusCode::unavailable,
                                     "silo " + peer_.str() + " became unreachable (" +
                                         status.error_message() + "); the call may or may not have run"));
    }
    messenger_.forget(this, !established_);
    // The last reference may be our own: it is released later, on another thread, after a grace period
    // (gRPC may still be tearing the call down right after OnDone returns).
    messenger_.defer(std::move(self_));
  }

  void OnReadInitialMetadataDone(bool ok) override {
    if (!ok) return;
    std::lock_guard lock(mutex_);
    established_ = true;
    maybe_close_locked();  // a link opened while stopping that carried nothing (ping, directory) closes
  }

 private:
  // Writes the next batch. A fenced silo (lease ran out, or declared dead) sends no request: a process
  // resumed after SIGSTOP runs this first (when the write in flight completes, or with its next call), and
  // what it queued before it froze may run elsewhere by now. Its queued requests fail "not run" (their ids
  // go to `refused`, failed by the caller after unlocking) and one-way calls are dropped. One lease read per
  // batch, not per call.
  void flush_locked(std::vector<std::uint64_t>& refused) {
    if (writing_ || dead_ || queue_.empty()) return;
    if (const cluster::Lease* lease = messenger_.lease(); lease && lease->fenced()) {
      for (auto& env : queue_) {
        if (env.kind() == in::Envelope::REQUEST && outstanding_.erase(env.id())) refused.push_back(env.id());
      }
      queue_.clear();
      maybe_close_locked();
      return;
    }
    writing_ = true;
    const bool first = !sent_sender_;
    out_.Clear();
    if (first) {
      out_.set_sender(messenger_.self().str());
      sent_sender_ = true;
    }
    wire::fill_frame(queue_, *out_.mutable_envelopes(), messenger_.max_message());
    StartWrite(&out_);
  }

  void fail_refused(const std::vector<std::uint64_t>& ids) {
    if (ids.empty()) return;
    const std::string why =
        "silo " + messenger_.self().str() + " sends no calls: " + messenger_.lease()->why() + "; not run";
    spdlog::warn("messaging: {}; failing {} calls queued for silo {}", why, ids.size(), peer_.str());
    for (auto id : ids)
      messenger_.handlers_.on_response(failure_response(id, StatusCode::unavailable, why, true));
  }

  Messenger& messenger_;
  cluster::SiloAddress peer_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<in::Silo::Stub> stub_;
  grpc::ClientContext ctx_;
  std::shared_ptr<PeerLink> self_;
  in::Batch in_;
  std::mutex mutex_;
  void maybe_close_locked() {
    if ((draining_ || closing_) && !writes_done_ && !writing_ && queue_.empty() && outstanding_.empty() &&
        !dead_) {
      writes_done_ = true;
      StartWritesDone();
    }
  }

  std::deque<in::Envelope> queue_;
  in::Batch out_;
  std::set<std::uint64_t> outstanding_;
  bool writing_ = false, dead_ = false, sent_sender_ = false, draining_ = false, writes_done_ = false;
  bool closing_ = false;
  bool established_ = false;
};

Messenger::Messenger(const config::Config& cfg, cluster::SiloAddress self)
    : cfg_(cfg), self_(std::move(self)) {}

Messenger::~Messenger() = default;

void Messenger::start() {
  services_ = std::make_unique<Services>(*this);
  grpc::ServerBuilder builder;
  const std::string address = cfg_.silo.listen.str();
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  const int max = static_cast<int>(std::min<std::size_t>(cfg_.gateway.max_message_size, INT32_MAX));
  builder.SetMaxReceiveMessageSize(max);
  builder.SetMaxSendMessageSize(max);
  builder.RegisterService(services_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    server_.reset();
    throw std::runtime_error("silo.listen " + address +
                             ": cannot listen (address in use?); pick another port or stop the other silo");
  }
  spdlog::info("messaging: silo {} listening on {}", self_.str(), address);
}

void Messenger::stop(Deadline deadline) {
  // First the server: peers that saw this silo leave drain their streams into it, and requests they sent
  // meanwhile (some relayed on through our own links) still get answered. Peers that are stopping too no
  // longer follow the membership: they close their streams into us when idle, as we close ours into them
  // now, or each server would wait for the other's streams until the deadline. Then our own links.
  std::vector<std::shared_ptr<PeerLink>> idle;
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
    for (auto& [k, l] : open_)
      if (auto s = l.lock()) idle.push_back(std::move(s));
  }
  for (auto& l : idle)
    l->close_when_idle(true);
  idle.clear();
  if (server_) {
    const auto left = std::chrono::duration_cast<std::chrono::system_clock::duration>(
        deadline - std::chrono::steady_clock::now());
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::max(left, std::chrono::system_clock::duration(0)));
    server_.reset();
  }
  std::vector<std::shared_ptr<PeerLink>> links;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    // Every link not yet done, also those links_ no longer names (replaced while draining or dying).
    for (auto& [k, l] : open_)
      if (auto s = l.lock()) links.push_back(std::move(s));
  }
  for (auto& l : links)
    l->kill();
  links.clear();
  // Wait (briefly) for the links to finish, so no callback runs after we are gone.
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard lock(mutex_);
      if (open_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (int i = 0; i < 400; ++i) {  // unary calls in flight end by their deadlines (<= 2 s)
    {
      std::lock_guard lock(mutex_);
      if (inflight_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the last callbacks return
  std::lock_guard lock(mutex_);
  deferred_.clear();
  spdlog::info("messaging: stopped");
}

void* Messenger::adopt(std::shared_ptr<void> call) {
  std::lock_guard lock(mutex_);
  void* p = call.get();
  inflight_.emplace(p, std::move(call));
  return p;
}

void Messenger::retire(void* call) {
  std::shared_ptr<void> done;
  {
    std::lock_guard lock(mutex_);
    auto it = inflight_.find(call);
    if (it == inflight_.end()) return;
    done = std::move(it->second);
    inflight_.erase(it);
  }
  defer(std::move(done));
}

void Messenger::defer(std::shared_ptr<void> object) {
  std::lock_guard lock(mutex_);
  deferred_.emplace_back(std::chrono::steady_clock::now(), std::move(object));
}

void Messenger::collect_locked() {
  const auto cutoff = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  std::erase_if(deferred_, [&](const auto& d) { return d.first < cutoff; });
}

std::shared_ptr<Messenger::PeerLink> Messenger::link(const cluster::SiloAddress& peer, std::string* why) {
  std::lock_guard lock(mutex_);
  collect_locked();
  if (stopping_) {
    if (why) *why = "silo " + self_.str() + " is shutting down";
    return nullptr;
  }
  auto& l = links_[peer.str()];
  if (!l || !l->alive()) {
    // A peer whose stream just failed to connect gets no new one for a moment: each attempt costs a
    // channel and a stream, and calls to it fail anyway until the membership decides.
    auto failed = failed_at_.find(peer.str());
    if (failed != failed_at_.end() &&
        std::chrono::steady_clock::now() - failed->second < std::chrono::milliseconds(100)) {
      if (why) *why = "silo " + peer.str() + " is unreachable";
      if (!l) links_.erase(peer.str());
      return nullptr;
    }
    l = std::make_shared<PeerLink>(*this, peer);
    if (closing_) l->close_when_idle(false);
    open_.emplace(l.get(), l);
    l->start(l);
  }
  return l;
}

void Messenger::forget(PeerLink* link, bool never_connected) {
  std::lock_guard lock(mutex_);
  if (never_connected)
    failed_at_[link->peer().str()] = std::chrono::steady_clock::now();
  else
    failed_at_.erase(link->peer().str());
  auto it = links_.find(link->peer().str());
  if (it != links_.end() && it->second.get() == link) links_.erase(it);
  open_.erase(link);
}

void Messenger::fail(in::Envelope request, const std::string& why) {
  if (request.kind() != in::Envelope::REQUEST) return;
  // Never handed to a stream: it did not run.
  handlers_.on_response(failure_response(request.id(), StatusCode::unavailable, why, true));
}

void Messenger::peer_left(const cluster::SiloAddress& peer) {
  std::shared_ptr<PeerLink> l;
  {
    std::lock_guard lock(mutex_);
    auto it = links_.find(peer.str());
    if (it == links_.end()) return;
    l = it->second;
  }
  spdlog::info("messaging: silo {} left: draining its stream", peer.str());
  l->drain();
}

void Messenger::send(const cluster::SiloAddress& peer, in::Envelope request) {
  if (const auto size = request.ByteSizeLong(); !wire::fits(size, max_message())) {
    if (request.kind() == in::Envelope::REQUEST) {
      handlers_.on_response(failure_response(request.id(), StatusCode::resource_exhausted,
                                             "request of " + std::to_string(size) +
                                                 " bytes exceeds the message size limit (" +
                                                 std::to_string(max_message()) + ")",
                                             true));
    }
    return;
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::string why;
    auto l = link(peer, &why);
    if (!l) return fail(std::move(request), why);
    if (l->send(request)) return;
  }
  fail(std::move(request), "cannot open a stream to silo " + peer.str());
}

void Messenger::ping(const cluster::SiloAddress& peer, std::chrono::milliseconds timeout,
                     std::function<void(bool)> done) {
  auto l = link(peer, nullptr);
  if (!l) return done(false);
  struct Call {
    grpc::ClientContext ctx;
    in::PingRequest req;
    in::PingReply reply;
    std::shared_ptr<PeerLink> link;
  };
  auto call = std::make_shared<Call>();
  call->link = l;
  call->ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  call->req.set_from(self_.str());
  call->req.set_to(peer.str());
  call->req.set_sent_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count());
  auto* raw = static_cast<Call*>(adopt(call));
  l->stub().async()->Ping(&raw->ctx, &raw->req, &raw->reply,
                          [this, raw, done = std::move(done)](grpc::Status s) {
                            done(s.ok());
                            retire(raw);
                          });
}

void Messenger::directory(const cluster::SiloAddress& peer, in::DirectoryRequest request,
                          std::chrono::milliseconds timeout,
                          std::function<void(bool, in::DirectoryReply)> done) {
  auto l = link(peer, nullptr);
  if (!l) return done(false, {});
  struct Call {
    grpc::ClientContext ctx;
    in::DirectoryRequest req;
    in::DirectoryReply reply;
    std::shared_ptr<PeerLink> link;
  };
  auto call = std::make_shared<Call>();
  call->link = l;
  call->ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  call->req = std::move(request);
  call->req.set_from(self_.str());
  call->ctx.AddMetadata(kTargetKey, peer.str());
  auto* raw = static_cast<Call*>(adopt(call));
  l->stub().async()->Directory(&raw->ctx, &raw->req, &raw->reply,
                               [this, raw, done = std::move(done)](grpc::Status s) {
                                 done(s.ok(), std::move(raw->reply));
                                 retire(raw);
                               });
}

void Messenger::peer_dead(const cluster::SiloAddress& peer) {
  std::shared_ptr<PeerLink> l;
  {
    std::lock_guard lock(mutex_);
    auto it = links_.find(peer.str());
    if (it == links_.end()) return;
    l = it->second;
  }
  spdlog::info("messaging: silo {} declared dead: closing its stream", peer.str());
  l->kill();
}

}  // namespace silo::messaging
