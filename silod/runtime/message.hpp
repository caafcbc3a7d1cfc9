#pragma once
// The runtime's unit of work: a Request addressed to one grain, and the Reply that travels back.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <silo/error.hpp>
#include <silo/types.hpp>

#include "runtime/grain_class.hpp"

namespace silo::runtime {

using Clock = std::chrono::steady_clock;

/// One grain on a call chain: the activations waiting, directly or not, for the current request.
struct ChainLink {
  const GrainClass* cls;
  std::string key;
};
using CallChain = std::vector<ChainLink>;

struct Reply {
  StatusCode code = StatusCode::ok;
  std::string error;
  std::unique_ptr<google::protobuf::Message> response;
  std::string response_bytes;  // a remote silo's answer, parsed by the caller into the response type
  std::string location;        // remote: the silo that ran the call
  bool not_run = false;        // a failure that provably did not run (refused before reaching a grain)

  static Reply failure(StatusCode code, std::string message) {
    Reply r;
    r.code = code;
    r.error = std::move(message);
    return r;
  }
};

/// Thrown by Runtime::call for a failure whose Reply says not_run: the callee provably did not run the call
/// (another silo refused it, or it never left this one). The gateway reports it `silo-outcome: not-run`.
/// A grain that catches it and fails its own call produces a plain failure: its own turn did run.
class NotRunError final : public Error {
 public:
  using Error::Error;
};

class TimerState;
struct Request;

/// Where the reply to a request from another silo goes.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  virtual void reply(const Request& request, Reply reply) = 0;
};

struct Request {
  enum class Kind : std::uint8_t { call, timer_tick, reminder_tick };
  Kind kind = Kind::call;
  const GrainClass* cls = nullptr;
  std::string key;
  const MethodInfo* method = nullptr;
  std::unique_ptr<google::protobuf::Message> arg;  // a local caller's request (owned copy)
  std::string arg_bytes;                           // or its serialized form
  CallChain chain;
  std::uint32_t reply_shard = 0;
  std::uint64_t call_id = 0;  // 0: nobody waits for the reply (one-way, timer tick)
  Clock::time_point deadline = Clock::time_point::max();
  std::shared_ptr<TimerState> timer;   // timer ticks only
  std::shared_ptr<ReplySink> sink;     // set for requests from other silos: the reply goes there
  std::uint32_t hops = 0;              // forwards so far
  Request* next_in_mailbox = nullptr;  // RequestQueue's link
  std::uint64_t turn_id = 0;           // while it runs as a turn (watchdog attribution)

  std::string describe() const;  // "type/key.Method" for logs and errors
};

using RequestPtr = std::unique_ptr<Request>;

/// An activation's mailbox: an intrusive FIFO of owned requests. An empty one is two pointers and a count,
/// where a std::deque allocated ~600 bytes per idle activation.
class RequestQueue {
 public:
  RequestQueue() = default;
  RequestQueue(const RequestQueue&) = delete;
  RequestQueue& operator=(const RequestQueue&) = delete;
  ~RequestQueue() { clear(); }

  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  Request& front() const noexcept { return *head_; }
  void push_back(RequestPtr r) noexcept {
    Request* p = r.release();
    p->next_in_mailbox = nullptr;
    if (tail_)
      tail_->next_in_mailbox = p;
    else
      head_ = p;
    tail_ = p;
    ++size_;
  }
  RequestPtr pop_front() noexcept {
    Request* p = head_;
    head_ = p->next_in_mailbox;
    if (!head_) tail_ = nullptr;
    p->next_in_mailbox = nullptr;
    --size_;
    return RequestPtr(p);
  }
  void clear() noexcept {
    while (head_)
      pop_front();
  }

 private:
  Request* head_ = nullptr;
  Request* tail_ = nullptr;
  std::uint32_t size_ = 0;
};

std::string describe_chain(const CallChain& chain, const GrainClass* cls, const std::string& key);

}  // namespace silo::runtime
