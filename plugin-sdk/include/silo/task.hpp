#pragma once
/// @file
/// silo::Task<T>: the coroutine type of every grain method and every call to a grain.

#include "silo/asio.hpp"

namespace silo {

/// A grain method or a call to a grain: `silo::Task<iot::Status> SetTarget(const iot::Target&)`.
/// It is a `boost::asio::awaitable<T>`: `co_await` it from another Task, never from a plain thread.
template <class T = void>
using Task = boost::asio::awaitable<T>;

}  // namespace silo
