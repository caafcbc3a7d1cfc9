#pragma once
// The write side shared by silod's server streams (the gateway's client stream, the messenger's inbound
// stream): items queue under a mutex, go out in frames under the message-size limit while one write is in
// flight, and the stream finishes once its derived class says nothing references it any more.
//
// Derived (CRTP) provides, all called with mutex_ held:
//   RepeatedPtrField<Item>* frame_items(Out&)  where a frame's items go
//   bool announce_locked(Out&)                 adds a frame-level flag; true when a frame must go out even
//                                              without items
//   bool can_cancel_locked()                   a broken stream may finish (nothing else references it)
//   bool can_end_locked()                      the peer is done and every answer was queued

#include <cstddef>
#include <deque>
#include <mutex>

#include <grpcpp/grpcpp.h>

#include "silo/wire/frames.hpp"

namespace silo::messaging {

template <class Derived, class In, class Out, class Item>
class BatchedServerStream : public grpc::ServerBidiReactor<In, Out> {
 public:
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

 protected:
  explicit BatchedServerStream(std::size_t max_message) : max_message_(max_message) {}

  Derived& self() { return static_cast<Derived&>(*this); }

  void push_locked(Item item) {
    pending_.push_back(std::move(item));
    flush_locked();
  }

  void flush_locked() {
    if (writing_ || broken_ || finished_) return;
    out_.Clear();
    const bool announce = self().announce_locked(out_);
    if (pending_.empty() && !announce) return;
    writing_ = true;
    wire::fill_frame(pending_, *self().frame_items(out_), max_message_);
    this->StartWrite(&out_);
  }

  void maybe_finish_locked() {
    if (finished_ || writing_) return;
    if (broken_) {
      if (!self().can_cancel_locked()) return;
      finished_ = true;
      this->Finish(grpc::Status::CANCELLED);
    } else if (pending_.empty() && self().can_end_locked()) {
      finished_ = true;
      this->Finish(grpc::Status::OK);
    }
  }

  std::mutex mutex_;
  std::size_t max_message_;
  std::deque<Item> pending_;  // not yet written
  Out out_;                   // the frame being written
  bool writing_ = false, broken_ = false, finished_ = false;
};

}  // namespace silo::messaging
