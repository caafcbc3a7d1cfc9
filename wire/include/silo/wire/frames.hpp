#pragma once
// Batching for silo's streams: queued messages go out in frames that stay under the peer's message-size
// limit. A frame always carries at least one item; callers reject single items over the limit up front.

#include <cstddef>
#include <deque>

#include <google/protobuf/repeated_ptr_field.h>

namespace silo::wire {

/// Bytes a frame needs beyond its items (its own fields, tags, length prefixes).
inline constexpr std::size_t frame_overhead = 64;

/// True when one item of `item_size` bytes fits in a frame under `limit`.
inline bool fits(std::size_t item_size, std::size_t limit) {
  return item_size + frame_overhead <= limit;
}

/// Moves items from `queue` into `out` while the frame stays under `limit` bytes.
template <class T>
void fill_frame(std::deque<T>& queue, google::protobuf::RepeatedPtrField<T>& out, std::size_t limit) {
  std::size_t size = frame_overhead;
  while (!queue.empty()) {
    const std::size_t item = queue.front().ByteSizeLong() + 10;  // tag + length prefix
    if (!out.empty() && size + item > limit) break;
    size += item;
    *out.Add() = std::move(queue.front());
    queue.pop_front();
  }
}

}  // namespace silo::wire
