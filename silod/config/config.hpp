#pragma once
// The silod configuration: plain values parsed from YAML. Parsing is strict: an unknown key or a bad value
// is a ConfigError whose message reads "FILE:LINE: key.path: what is wrong" (see config.cpp).

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace silo::config {

using duration = std::chrono::milliseconds;

/// Thrown for every malformed or invalid configuration. what() is the complete message for the operator.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Endpoint {
  std::string host;  // IPv4/IPv6 literal or name; "0.0.0.0" / "::" to bind all
  uint16_t port = 0;
  std::string str() const;  // "host:port" ([v6]:port for IPv6)
};

struct ClusterConfig {
  std::string id = "dev";  // silos sharing one id and one membership table form a cluster
};

struct SiloConfig {
  std::string name;                           // default: the host name
  Endpoint listen{"127.0.0.1", 11111};        // silo-to-silo messaging
  std::optional<std::string> advertise_host;  // address peers use, when listen binds all interfaces
  unsigned threads = 0;                       // grain worker threads; 0 = number of cores
  duration shutdown_timeout = std::chrono::seconds(15);
};

struct GatewayConfig {
  bool enabled = true;
  Endpoint listen{"127.0.0.1", 30000};
  std::size_t max_message_size = 4 * 1024 * 1024;  // bytes; YAML accepts 512KiB, 4MiB, ...
};

struct MembershipConfig {
  std::string provider = "local";  // local | postgres
  std::string dsn;                 // libpq connection string (postgres); empty = PG* environment
  duration probe_interval = std::chrono::milliseconds(500);
  duration probe_timeout = std::chrono::milliseconds(500);
  unsigned probed_silos = 3;   // ring successors each silo probes
  unsigned missed_probes = 3;  // consecutive misses before a suspicion vote
  // Fresh votes that declare a silo dead, at most a majority of the active silos whose i_am_alive is fresh
  // (so a lone survivor can still declare the others dead, and two halves of a partition cannot both
  // win). Votes count only from active silos; a silo that reads itself dead never votes.
  unsigned votes_to_kill = 2;
  duration vote_expiry = std::chrono::seconds(30);
  // A silo stops serving when it answered no probe from enough of its probers for this long. Must stay
  // below missed_probes * probe_interval - probe_timeout, the earliest a silo can be declared dead after
  // its last answered probe (validated), and above probe_interval.
  duration lease = std::chrono::milliseconds(800);
  // i_am_alive older than 4 intervals is stale: its silo no longer counts for the votes a death needs.
  duration i_am_alive_interval = std::chrono::milliseconds(500);
  duration poll_interval = std::chrono::seconds(5);  // fallback when NOTIFY is missed
  duration defunct_age = std::chrono::hours(24);     // dead rows older than this are deleted
};

struct StorageProviderConfig {
  std::string provider = "memory";  // memory | postgres
  std::string dsn;                  // postgres only
  bool group_commit = true;         // postgres only
  unsigned pool_size = 4;           // postgres only: connections
};

struct PluginsConfig {
  std::string dir = "plugins";    // relative paths resolve against the config file's directory
  std::vector<std::string> load;  // plugin names (libNAME.so or NAME.so in dir) or paths
  bool required = false;          // true: a plugin that fails to load stops start-up
};

struct GrainTypeConfig {
  std::optional<duration> collection_age;
  std::optional<std::string> placement;
  std::optional<unsigned> max_local;
};

struct GrainsConfig {
  duration collection_age = std::chrono::minutes(15);
  duration turn_warning = std::chrono::seconds(1);
  duration call_timeout = std::chrono::seconds(30);
  // random | prefer_local | hash | activation_count | stateless_worker
  std::string default_placement = "random";
  std::map<std::string, GrainTypeConfig> types;  // keyed by grain type, e.g. "iot.Thermostat"
};

struct RemindersConfig {
  std::string provider = "memory";  // memory | postgres
  std::string dsn;                  // postgres: libpq connection string; empty = PG* environment
  duration min_period = std::chrono::seconds(1);        // shorter periods are refused
  duration refresh_interval = std::chrono::seconds(2);  // how often a silo re-reads the reminders it owns
};

struct LoggingConfig {
  std::string level = "info";   // trace | debug | info | warn | error | critical | off
  std::string format = "text";  // text | json
  std::string file;             // empty = stderr
};

struct MetricsConfig {
  bool enabled = false;
  Endpoint listen{"127.0.0.1", 9100};
};

struct Config {
  std::string source;  // the file it was read from ("" when built in code)
  ClusterConfig cluster;
  SiloConfig silo;
  GatewayConfig gateway;
  MembershipConfig membership;
  std::map<std::string, StorageProviderConfig> storage;  // by provider instance name
  PluginsConfig plugins;
  GrainsConfig grains;
  RemindersConfig reminders;
  LoggingConfig logging;
  MetricsConfig metrics;
};

/// Parses YAML text. `source` names the file in error messages; `base_dir` resolves relative paths.
Config parse(const std::string& yaml_text, const std::string& source, const std::string& base_dir = ".");

/// Reads and parses a file. Throws ConfigError (also for a missing or unreadable file).
Config load_file(const std::string& path);

/// "500ms", "15s", "15m", "2h", "1d" (an integer and a unit). Throws std::invalid_argument.
duration parse_duration(const std::string& text);

/// "4096", "512KiB", "4MiB", "1GiB" (also KB/MB/GB as powers of 1000). Throws std::invalid_argument.
std::size_t parse_size(const std::string& text);

/// Replaces ${NAME} and ${NAME:-default}; "$$" is a literal "$". Throws std::invalid_argument naming an
/// unset variable that has no default.
std::string expand_env(const std::string& text);

}  // namespace silo::config
