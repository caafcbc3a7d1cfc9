// The raw gRPC baselines' servers. Both echo the request bytes without parsing them: the limit a gateway
// could reach if the grain runtime cost nothing.

#include <atomic>
#include <csignal>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include "bench_grpc.hpp"
#include "silo/gateway.grpc.pb.h"
#include "silo/wire/frames.hpp"

namespace bench {

namespace {

namespace gw = silo::gateway;

constexpr std::size_t max_message = 4 * 1024 * 1024;  // silod's default gateway.max_message_size

// Results are batched exactly like silod's gateway stream: whatever queued while a write was in flight
// goes out in the next frame.
class EchoStream final : public grpc::ServerBidiReactor<gw::ClientFrame, gw::ServerFrame> {
 public:
  EchoStream() {
    StartSendInitialMetadata();
    StartRead(&in_);
  }
  void OnReadDone(bool ok) override {
    std::lock_guard lock(mutex_);
    if (!ok) {
      reading_done_ = true;
      maybe_finish_locked();
      return;
    }
    for (auto& call : *in_.mutable_calls()) {
      if (call.one_way()) continue;
      gw::Result r;
      r.set_id(call.id());
      r.set_payload(std::move(*call.mutable_payload()));
      results_.push_back(std::move(r));
    }
    in_.Clear();
    flush_locked();
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    writing_ = false;
    if (!ok) broken_ = true;
    flush_locked();
    maybe_finish_locked();
  }
  void OnCancel() override {
    std::lock_guard lock(mutex_);
    broken_ = true;
    maybe_finish_locked();
  }
  void OnDone() override { delete this; }

 private:
  void flush_locked() {
    if (writing_ || broken_ || finished_ || results_.empty()) return;
    writing_ = true;
    out_.Clear();
    silo::wire::fill_frame(results_, *out_.mutable_results(), max_message);
    StartWrite(&out_);
  }
  void maybe_finish_locked() {
    if (finished_ || writing_) return;
    if (broken_ || (reading_done_ && results_.empty())) {
      finished_ = true;
      Finish(broken_ ? grpc::Status::CANCELLED : grpc::Status::OK);
    }
  }
  gw::ClientFrame in_;
  gw::ServerFrame out_;
  std::mutex mutex_;
  std::deque<gw::Result> results_;
  bool writing_ = false, reading_done_ = false, broken_ = false, finished_ = false;
};

class EchoService final : public gw::Gateway::CallbackService {
 public:
  grpc::ServerBidiReactor<gw::ClientFrame, gw::ServerFrame>* Connect(grpc::CallbackServerContext*) override {
    return new EchoStream();
  }
};

std::atomic<bool> stop_requested{false};

void wait_for_signal() {
  std::signal(SIGTERM, [](int) { stop_requested = true; });
  std::signal(SIGINT, [](int) { stop_requested = true; });
  while (!stop_requested)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

std::unique_ptr<grpc::Server> build(grpc::ServerBuilder& builder, const std::string& address, int& port) {
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message));
  auto server = builder.BuildAndStart();
  if (!server || port == 0) throw std::runtime_error("cannot listen on " + address);
  std::printf("{\"listening\":%d}\n", port);
  std::fflush(stdout);
  return server;
}

// One unary call of the async generic API: request -> read -> write+finish -> done.
class UnaryCall {
 public:
  UnaryCall(grpc::AsyncGenericService& service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), stream_(&ctx_) {
    service_.RequestCall(&ctx_, &stream_, cq_, cq_, this);
  }
  void proceed(bool ok) {
    switch (state_) {
      case State::requested:
        if (!ok) return delete this;   // shutting down
        new UnaryCall(service_, cq_);  // the next call of this queue
        state_ = State::reading;
        stream_.Read(&buffer_, this);
        return;
      case State::reading:
        if (!ok) {
          state_ = State::finishing;
          stream_.Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"), this);
          return;
        }
        state_ = State::finishing;
        stream_.WriteAndFinish(buffer_, grpc::WriteOptions(), grpc::Status::OK, this);
        return;
      case State::finishing:
        return delete this;
    }
  }

 private:
  enum class State { requested, reading, finishing };
  grpc::AsyncGenericService& service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  grpc::ByteBuffer buffer_;
  State state_ = State::requested;
};

}  // namespace

int stream_server(const Args& args) {
  EchoService service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  int port = 0;
  auto server = build(builder, args.str("listen", "127.0.0.1:0"), port);
  wait_for_signal();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

int unary_server(const Args& args) {
  const auto threads = static_cast<unsigned>(args.num("threads", 1));
  const auto calls_per_queue = static_cast<unsigned>(args.num("posted", 64));
  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  builder.RegisterAsyncGenericService(&service);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (unsigned i = 0; i < threads; ++i)
    queues.push_back(builder.AddCompletionQueue());
  int port = 0;
  auto server = build(builder, args.str("listen", "127.0.0.1:0"), port);
  std::vector<std::thread> pollers;
  for (auto& q : queues) {
    for (unsigned i = 0; i < calls_per_queue; ++i)
      new UnaryCall(service, q.get());
    pollers.emplace_back([cq = q.get()] {
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok))
        static_cast<UnaryCall*>(tag)->proceed(ok);
    });
  }
  wait_for_signal();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  for (auto& q : queues)
    q->Shutdown();
  for (auto& t : pollers)
    t.join();
  return 0;
}

}  // namespace bench
