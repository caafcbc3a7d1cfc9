#pragma once
// systemd's notify protocol: a datagram to $NOTIFY_SOCKET. No libsystemd needed; a no-op when unset.

#include <string_view>

namespace silo::app {

/// Sends `state` (e.g. "READY=1\nSTATUS=serving") when NOTIFY_SOCKET is set. Returns false on failure.
bool sd_notify(std::string_view state);

}  // namespace silo::app
