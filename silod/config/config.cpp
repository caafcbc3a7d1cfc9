#include "config/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string_view>
#include <utility>

#include <yaml-cpp/yaml.h>

namespace silo::config {

namespace {

using names = std::vector<std::string_view>;

const names kMembershipProviders = {"local", "postgres"};
const names kStorageProviders = {"memory", "postgres"};
const names kLogLevels = {"trace", "debug", "info", "warn", "error", "critical", "off"};
const names kLogFormats = {"text", "json"};
const names kPlacements = {"random", "prefer_local", "hash", "activation_count", "stateless_worker"};

constexpr unsigned kMaxThreads = 1024;

std::string join(const names& list, std::string_view sep) {
  std::string out;
  for (const auto& n : list) {
    if (!out.empty()) out += sep;
    out += n;
  }
  return out;
}

std::string in_quotes(const std::string& s) {
  return "\"" + s + "\"";
}

// Parses a whole string of decimal digits; no sign, no spaces, no trailing garbage.
std::optional<uint64_t> parse_uint(std::string_view text) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return v;
}

// Splits "123unit" into its leading digits and the rest.
std::pair<std::string_view, std::string_view> split_number(std::string_view text) {
  auto digits = std::find_if(text.begin(), text.end(), [](char c) { return c < '0' || c > '9'; });
  auto n = static_cast<std::size_t>(digits - text.begin());
  return {text.substr(0, n), text.substr(n)};
}

bool is_wildcard(const std::string& host) {
  return host == "0.0.0.0" || host == "::";
}

Endpoint parse_endpoint(const std::string& text) {
  std::string host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw std::invalid_argument("expected [ipv6]:port");
    host = text.substr(1, close - 1);
    port = std::string_view(text).substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) throw std::invalid_argument("expected host:port");
    host = text.substr(0, colon);
    if (host.find(':') != std::string::npos)
      throw std::invalid_argument("an IPv6 address needs brackets, as in [::1]:30000");
    port = std::string_view(text).substr(colon + 1);
  }
  if (host.empty()) throw std::invalid_argument("empty host");
  auto p = parse_uint(port);
  if (!p || *p < 1 || *p > 65535) throw std::invalid_argument("port must be a number from 1 to 65535");
  return Endpoint{host, static_cast<uint16_t>(*p)};
}

// A value in the document: its node, its dotted key path and the 1-based line to blame.
struct value {
  YAML::Node node;
  std::string path;
  int line;
};

using handler = std::function<void(const value&)>;
using field = std::pair<std::string_view, handler>;

// Reads the document strictly. Every value read records its line, so the checks after parsing can point
// at the offending key too.
class reader {
 public:
  explicit reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(int line, const std::string& path, const std::string& what) const {
    std::string msg = source_;
    if (line > 0) msg += ":" + std::to_string(line);
    msg += ": ";
    if (!path.empty()) msg += path + ": ";
    throw ConfigError(msg + what);
  }
  [[noreturn]] void fail(const value& v, const std::string& what) const { fail(v.line, v.path, what); }

  int line_of(const std::string& path) const {
    auto it = lines_.find(path);
    return it == lines_.end() ? 0 : it->second;
  }

  // Walks a mapping (an empty value counts as an empty mapping): each key must be one of `fields`, and
  // each value goes to its handler.
  void section(const value& v, const std::vector<field>& fields) {
    each_entry(v, [&](const value& entry, const std::string& key) {
      auto f = std::find_if(fields.begin(), fields.end(), [&](const field& kf) { return kf.first == key; });
      if (f == fields.end()) {
        names known;
        for (const auto& kf : fields)
          known.push_back(kf.first);
        fail(line_of(entry.path), entry.path, "unknown key (expected one of: " + join(known, ", ") + ")");
      }
      f->second(entry);
    });
  }

  // Calls fn(entry, key) for each entry of a mapping whose keys are free-form (storage, grains.types).
  void each_entry(const value& v, const std::function<void(const value&, const std::string&)>& fn) {
    if (v.node.IsNull()) return;
    if (!v.node.IsMap()) fail(v, "expected a mapping, got " + describe(v.node));
    std::map<std::string, int> seen;
    for (const auto& kv : v.node) {
      const YAML::Node& key_node = kv.first;
      const YAML::Node& node = kv.second;
      int key_line = key_node.Mark().line + 1;
      if (!key_node.IsScalar()) fail(key_line, v.path, "keys must be plain strings");
      const std::string& key = key_node.Scalar();
      std::string path = v.path.empty() ? key : v.path + "." + key;
      if (auto [prev, fresh] = seen.emplace(key, key_line); !fresh)
        fail(key_line, path, "duplicate key (first at line " + std::to_string(prev->second) + ")");
      // An empty value's mark points past the key, so blame the key's line instead.
      int line = node.IsNull() || node.Mark().is_null() ? key_line : node.Mark().line + 1;
      lines_[path] = key_line;
      fn(value{node, path, line}, key);
    }
  }

  // The scalar text after ${ENV} expansion; `what` names the expected kind for the error message.
  std::string scalar(const value& v, const std::string& what) {
    if (!v.node.IsScalar()) fail(v, "expected " + what + ", got " + describe(v.node));
    try {
      return expand_env(v.node.Scalar());
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  // Runs `parse` on the expanded scalar, turning its std::invalid_argument into a located ConfigError.
  template <class F>
  auto interpret(const value& v, const std::string& what, F&& parse) {
    std::string text = scalar(v, what);
    try {
      return parse(text);
    } catch (const std::invalid_argument& e) {
      fail(v, e.what());
    }
  }

  void get(const value& v, std::string& out) {
    // An empty value (`dsn:`) is an empty string, as with the quoted "".
    out = v.node.IsNull() ? std::string() : scalar(v, "a string");
  }
  void get(const value& v, bool& out) {
    std::string s = scalar(v, "true or false");
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    if (s == "true" || s == "yes" || s == "on")
      out = true;
    else if (s == "false" || s == "no" || s == "off")
      out = false;
    else
      fail(v, "expected true or false, got " + in_quotes(s));
  }
  void get(const value& v, unsigned& out) {
    std::string s = scalar(v, "a non-negative integer");
    auto n = parse_uint(s);
    if (!n || *n > std::numeric_limits<unsigned>::max())
      fail(v, "expected a non-negative integer, got " + in_quotes(s));
    out = static_cast<unsigned>(*n);
  }
  void get(const value& v, duration& out) { out = interpret(v, "a duration", parse_duration); }
  void get(const value& v, std::size_t& out) { out = interpret(v, "a size", parse_size); }
  void get(const value& v, Endpoint& out) {
    out = interpret(v, "host:port", [](const std::string& s) {
      try {
        return parse_endpoint(s);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument("bad endpoint " + in_quotes(s) + ": " + e.what());
      }
    });
  }
  void get(const value& v, std::vector<std::string>& out) {
    out.clear();
    if (v.node.IsNull()) return;
    if (!v.node.IsSequence()) fail(v, "expected a list of strings, got " + describe(v.node));
    for (std::size_t i = 0; i < v.node.size(); ++i) {
      YAML::Node item = v.node[i];
      out.emplace_back();
      get(value{item, v.path + "[" + std::to_string(i) + "]", item.Mark().line + 1}, out.back());
    }
  }
  template <class T>
  void get(const value& v, std::optional<T>& out) {
    get(v, out.emplace());
  }

  // A table entry that stores the value in `target` with the reader for its type.
  template <class T>
  handler bind(T& target) {
    return [this, &target](const value& v) { get(v, target); };
  }
  // A table entry for a string restricted to `allowed`.
  template <class T>
  handler bind_choice(T& target, const names& allowed) {
    return [this, &target, &allowed](const value& v) {
      std::string s = scalar(v, "one of " + join(allowed, ", "));
      if (std::find(allowed.begin(), allowed.end(), s) == allowed.end())
        fail(v, "expected one of " + join(allowed, ", ") + "; got " + in_quotes(s));
      target = s;
    };
  }

  // A table entry for a nested section with its own table of keys.
  handler bind_section(std::vector<field> fields) {
    return [this, fields = std::move(fields)](const value& v) { section(v, fields); };
  }
  // A table entry for a mapping of free-form names (storage, grains.types) to sections of one schema.
  template <class T, class Fields>
  handler bind_map(std::map<std::string, T>& target, Fields fields_of) {
    return [this, &target, fields_of](const value& v) {
      each_entry(v, [&](const value& entry, const std::string& name) {
        section(entry, fields_of(*this, target[name]));
      });
    };
  }

 private:
  static std::string describe(const YAML::Node& n) {
    if (n.IsMap()) return "a mapping";
    if (n.IsSequence()) return "a list";
    if (n.IsNull()) return "nothing";
    return in_quotes(n.Scalar());
  }

  std::string source_;
  std::map<std::string, int> lines_;  // key path -> 1-based line of its key
};

// One table of keys per section, in the order of the structs in config.hpp (also the order listed in
// "unknown key" messages).
std::vector<field> silo_fields(reader& r, SiloConfig& s) {
  return {
      {"name", r.bind(s.name)},
      {"listen", r.bind(s.listen)},
      {"advertise_host", r.bind(s.advertise_host)},
      {"threads", r.bind(s.threads)},
      {"shutdown_timeout", r.bind(s.shutdown_timeout)},
  };
}

std::vector<field> gateway_fields(reader& r, GatewayConfig& g) {
  return {
      {"enabled", r.bind(g.enabled)},
      {"listen", r.bind(g.listen)},
      {"max_message_size", r.bind(g.max_message_size)},
  };
}

std::vector<field> membership_fields(reader& r, MembershipConfig& m) {
  return {
      {"provider", r.bind_choice(m.provider, kMembershipProviders)},
      {"dsn", r.bind(m.dsn)},
      {"probe_interval", r.bind(m.probe_interval)},
      {"probe_timeout", r.bind(m.probe_timeout)},
      {"probed_silos", r.bind(m.probed_silos)},
      {"missed_probes", r.bind(m.missed_probes)},
      {"votes_to_kill", r.bind(m.votes_to_kill)},
      {"vote_expiry", r.bind(m.vote_expiry)},
      {"lease", r.bind(m.lease)},
      {"i_am_alive_interval", r.bind(m.i_am_alive_interval)},
      {"poll_interval", r.bind(m.poll_interval)},
      {"defunct_age", r.bind(m.defunct_age)},
  };
}

std::vector<field> storage_fields(reader& r, StorageProviderConfig& s) {
  return {
      {"provider", r.bind_choice(s.provider, kStorageProviders)},
      {"dsn", r.bind(s.dsn)},
      {"group_commit", r.bind(s.group_commit)},
      {"pool_size", r.bind(s.pool_size)},
  };
}

std::vector<field> plugins_fields(reader& r, PluginsConfig& p) {
  return {
      {"dir", r.bind(p.dir)},
      {"load", r.bind(p.load)},
      {"required", r.bind(p.required)},
  };
}

std::vector<field> grain_type_fields(reader& r, GrainTypeConfig& t) {
  return {
      {"collection_age", r.bind(t.collection_age)},
      {"placement", r.bind_choice(t.placement, kPlacements)},
      {"max_local", r.bind(t.max_local)},
  };
}

std::vector<field> grains_fields(reader& r, GrainsConfig& g) {
  return {
      {"collection_age", r.bind(g.collection_age)},
      {"turn_warning", r.bind(g.turn_warning)},
      {"call_timeout", r.bind(g.call_timeout)},
      {"default_placement", r.bind_choice(g.default_placement, kPlacements)},
      {"types", r.bind_map(g.types, grain_type_fields)},
  };
}

std::vector<field> reminders_fields(reader& r, RemindersConfig& m) {
  return {
      {"provider", r.bind_choice(m.provider, kStorageProviders)},
      {"dsn", r.bind(m.dsn)},
      {"min_period", r.bind(m.min_period)},
      {"refresh_interval", r.bind(m.refresh_interval)},
  };
}

std::vector<field> logging_fields(reader& r, LoggingConfig& l) {
  return {
      {"level", r.bind_choice(l.level, kLogLevels)},
      {"format", r.bind_choice(l.format, kLogFormats)},
      {"file", r.bind(l.file)},
  };
}

std::vector<field> metrics_fields(reader& r, MetricsConfig& m) {
  return {
      {"enabled", r.bind(m.enabled)},
      {"listen", r.bind(m.listen)},
  };
}

std::vector<field> top_level_fields(reader& r, Config& c) {
  return {
      {"cluster", r.bind_section({{"id", r.bind(c.cluster.id)}})},
      {"silo", r.bind_section(silo_fields(r, c.silo))},
      {"gateway", r.bind_section(gateway_fields(r, c.gateway))},
      {"membership", r.bind_section(membership_fields(r, c.membership))},
      {"storage", r.bind_map(c.storage, storage_fields)},
      {"plugins", r.bind_section(plugins_fields(r, c.plugins))},
      {"grains", r.bind_section(grains_fields(r, c.grains))},
      {"reminders", r.bind_section(reminders_fields(r, c.reminders))},
      {"logging", r.bind_section(logging_fields(r, c.logging))},
      {"metrics", r.bind_section(metrics_fields(r, c.metrics))},
  };
}

// Checks that need more than one value, or the whole document.
void validate(reader& r, const Config& c) {
  if (c.silo.threads > kMaxThreads)
    r.fail(r.line_of("silo.threads"), "silo.threads",
           "at most " + std::to_string(kMaxThreads) + " threads, got " + std::to_string(c.silo.threads));
  const Endpoint& gw = c.gateway.listen;
  const Endpoint& silo = c.silo.listen;
  // A wildcard bind takes the port on every address, so it clashes with any host on the same port.
  if (c.gateway.enabled && gw.port == silo.port &&
      (gw.host == silo.host || is_wildcard(gw.host) || is_wildcard(silo.host))) {
    // Blame gateway.listen unless only silo.listen was written in the file.
    if (r.line_of("gateway.listen") || !r.line_of("silo.listen"))
      r.fail(r.line_of("gateway.listen"), "gateway.listen",
             "conflicts with silo.listen (" + silo.str() + ")");
    r.fail(r.line_of("silo.listen"), "silo.listen", "conflicts with gateway.listen (" + gw.str() + ")");
  }
  // Failure detection and the lease (cluster/lease.hpp): a silo must stop serving before the others may
  // declare it dead and activate its grains elsewhere.
  const auto& m = c.membership;
  for (const auto& [key, v] : {std::pair<const char*, unsigned>{"membership.votes_to_kill", m.votes_to_kill},
                               {"membership.missed_probes", m.missed_probes},
                               {"membership.probed_silos", m.probed_silos}}) {
    if (v < 1) r.fail(r.line_of(key), key, "must be at least 1");
  }
  if (m.probe_interval.count() <= 0)
    r.fail(r.line_of("membership.probe_interval"), "membership.probe_interval", "must be positive");
  const auto earliest_death = m.probe_interval * m.missed_probes - m.probe_timeout;
  if (m.lease >= earliest_death) {
    // Blame the lease line, else the detection setting that was written (the lease is a default).
    int line = r.line_of("membership.lease");
    for (const char* key :
         {"membership.missed_probes", "membership.probe_interval", "membership.probe_timeout"})
      if (!line) line = r.line_of(key);
    r.fail(line, "membership.lease",
           "must be shorter than missed_probes * probe_interval - probe_timeout (" +
               std::to_string(earliest_death.count()) +
               " ms), the earliest its peers can declare a silo dead after its last answered probe");
  }
  if (m.lease <= m.probe_interval) {
    r.fail(r.line_of("membership.lease"), "membership.lease",
           "must be longer than membership.probe_interval (" + std::to_string(m.probe_interval.count()) +
               " ms), or a healthy silo stops serving between two probes");
  }
  for (const auto& [name, t] : c.grains.types) {
    if (t.max_local && *t.max_local < 1) {
      std::string path = "grains.types." + name + ".max_local";
      r.fail(r.line_of(path), path, "must be at least 1");
    }
  }
}

std::string resolve_path(const std::string& base_dir, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty() || fs::path(path).is_absolute()) return path;
  return fs::absolute(fs::path(base_dir) / path).lexically_normal().string();
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

}  // namespace

std::string Endpoint::str() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

Config parse(const std::string& yaml_text, const std::string& source, const std::string& base_dir) {
  reader r(source);
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    r.fail(e.mark.line + 1, "", "YAML syntax error: " + e.msg);
  }
  if (root.IsDefined() && !root.IsNull() && !root.IsMap())
    r.fail(root.Mark().line + 1, "", "the top level must be a mapping of sections");

  Config c;
  c.source = source;
  r.section(value{root, "", 1}, top_level_fields(r, c));
  validate(r, c);

  if (!c.storage.count("default")) c.storage["default"] = StorageProviderConfig{};
  if (c.silo.name.empty()) c.silo.name = host_name();
  // An empty advertise_host (e.g. "${HOST:-}") means "not set", so peers fall back to the listen host.
  if (c.silo.advertise_host && c.silo.advertise_host->empty()) c.silo.advertise_host.reset();
  c.plugins.dir = resolve_path(base_dir, c.plugins.dir);
  c.logging.file = resolve_path(base_dir, c.logging.file);
  return c;
}

Config load_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw ConfigError(path + ": cannot read: " + std::strerror(errno));
  std::string text;
  char buf[8192];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
    text.append(buf, n);
  int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) throw ConfigError(path + ": cannot read: " + std::strerror(err));
  std::string dir = std::filesystem::path(path).parent_path().string();
  return parse(text, path, dir.empty() ? "." : dir);
}

duration parse_duration(const std::string& text) {
  auto [digits, unit] = split_number(text);
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("bad duration " + in_quotes(text) + ": " + why);
  };
  if (digits.empty()) throw bad("expected a non-negative integer and a unit (ms, s, m, h, d)");
  static const std::vector<std::pair<std::string_view, int64_t>> units = {
      {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}};
  auto u = std::find_if(units.begin(), units.end(), [&](const auto& x) { return x.first == unit; });
  if (unit.empty()) throw bad("missing unit (ms, s, m, h, d)");
  if (u == units.end()) throw bad("unknown unit (expected ms, s, m, h, d)");
  auto n = parse_uint(digits);
  constexpr auto max = std::numeric_limits<duration::rep>::max();
  if (!n || *n > static_cast<uint64_t>(max / u->second)) throw bad("too large");
  return duration(static_cast<duration::rep>(*n) * u->second);
}

std::size_t parse_size(const std::string& text) {
  auto [digits, unit] = split_number(text);
  auto bad = [&](const std::string& why) {
    return std::invalid_argument("bad size " + in_quotes(text) + ": " + why);
  };
  if (digits.empty()) throw bad("expected bytes, or an integer with KiB, MiB, GiB, KB, MB or GB");
  static const std::vector<std::pair<std::string_view, uint64_t>> units = {
      {"", 1},      {"B", 1},          {"KiB", 1ull << 10},  {"MiB", 1ull << 20}, {"GiB", 1ull << 30},
      {"KB", 1000}, {"MB", 1'000'000}, {"GB", 1'000'000'000}};
  auto u = std::find_if(units.begin(), units.end(), [&](const auto& x) { return x.first == unit; });
  if (u == units.end()) throw bad("unknown unit (expected KiB, MiB, GiB, KB, MB or GB)");
  auto n = parse_uint(digits);
  if (!n || *n > std::numeric_limits<std::size_t>::max() / u->second) throw bad("too large");
  return static_cast<std::size_t>(*n * u->second);
}

std::string expand_env(const std::string& text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '$' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    if (text[i + 1] == '$') {
      out += '$';
      ++i;
      continue;
    }
    if (text[i + 1] != '{') {
      out += '$';
      continue;
    }
    auto close = text.find('}', i + 2);
    if (close == std::string::npos) throw std::invalid_argument("unterminated ${ in " + in_quotes(text));
    std::string body = text.substr(i + 2, close - i - 2);
    auto sep = body.find(":-");
    std::string name = body.substr(0, sep);
    bool valid =
        !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
        std::all_of(name.begin(), name.end(), [](unsigned char ch) { return std::isalnum(ch) || ch == '_'; });
    if (!valid) throw std::invalid_argument("bad variable name in ${" + body + "}");
    const char* env = std::getenv(name.c_str());
    // Like the shell's ${NAME:-default}: the default also replaces an empty value.
    if (sep != std::string::npos && (!env || !*env))
      out += body.substr(sep + 2);
    else if (env)
      out += env;
    else
      throw std::invalid_argument("environment variable " + name + " is not set (and has no :-default)");
    i = close;
  }
  return out;
}

}  // namespace silo::config
