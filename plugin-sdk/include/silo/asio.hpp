#pragma once
/// @file
/// The one place the SDK includes Boost.Asio. Boost 1.74's awaitable.hpp uses std::exchange without
/// including <utility> under GCC 12, so <utility> must come first.
#include <utility>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
