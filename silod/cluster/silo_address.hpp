#pragma once
// A silo's identity: its silo-to-silo endpoint plus a generation (start time in ms), so a restarted silo on
// the same address is a different silo.

#include <cstdint>
#include <functional>
#include <string>

namespace silo::cluster {

struct SiloAddress {
  std::string host;
  std::uint16_t port = 0;
  std::int64_t generation = 0;

  std::string endpoint() const {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
  std::string str() const { return endpoint() + "@" + std::to_string(generation); }
  bool operator==(const SiloAddress&) const = default;
  bool empty() const noexcept { return port == 0; }
};

/// Parses "host:port@generation"; false when malformed.
bool parse_silo_address(const std::string& text, SiloAddress& out);

struct SiloAddressHash {
  std::size_t operator()(const SiloAddress& a) const noexcept {
    return std::hash<std::string>{}(a.host) ^ (std::size_t(a.port) << 1) ^
           std::hash<std::int64_t>{}(a.generation);
  }
};

}  // namespace silo::cluster
