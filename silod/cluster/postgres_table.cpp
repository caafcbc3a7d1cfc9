// The membership table in PostgreSQL. Like Orleans' ADO.NET clustering: a per-cluster version row that every
// write bumps with a compare-and-set, plus one row per silo. Unlike it: every write is one transaction
// (CAS + upsert + NOTIFY), readers get a consistent snapshot, changes are pushed with LISTEN/NOTIFY instead
// of only polled, and dead rows are cleaned up (Orleans keeps them forever: dotnet/orleans#7339, #8968).
//
// Schema (migration 1; types deliberately plain so operators can read the table with psql):
//   silo_membership_version(cluster_id, version, updated_at)  one row per cluster, the CAS target
//   silo_membership(cluster_id, address, port, generation, ...) one row per silo incarnation
// `address` is the host as SiloAddress holds it (IPv6 without brackets); `gateway` is NULL when the silo
// has no gateway; `suspicions` is a jsonb array of {"voter": "host:port@gen", "at_ms": unix ms};
// start_time / i_am_alive are timestamptz converted from unix ms exactly (integer microseconds).

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include <spdlog/spdlog.h>
#include <pqxx/pqxx>

#include "cluster/membership_table.hpp"

namespace silo::cluster {
namespace {

// pg_advisory_xact_lock key serialising membership migrations across silos ("silomemb").
constexpr std::int64_t migration_lock_key = 0x73696c6f6d656d62;
constexpr const char* migration_component = "membership";
// One fixed channel with the cluster id as payload: cluster ids are arbitrary text, channel names are
// identifiers of at most 63 bytes, and sanitising could make two clusters share a channel anyway.
constexpr const char* notify_channel = "silo_membership_changed";

struct Migration {
  int version;
  const char* sql;
};

// Append only: a released migration never changes; new columns or indexes get a new version.
constexpr Migration migrations[] = {
    {1, R"sql(
CREATE TABLE silo_membership_version (
  cluster_id text PRIMARY KEY,
  version bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE silo_membership (
  cluster_id text NOT NULL,
  address text NOT NULL,
  port integer NOT NULL,
  generation bigint NOT NULL,
  name text NOT NULL,
  host_name text NOT NULL,
  status text NOT NULL CHECK (status IN ('joining', 'active', 'shutting_down', 'dead')),
  gateway text,
  suspicions jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(suspicions) = 'array'),
  grain_types text[] NOT NULL DEFAULT '{}',
  activations bigint NOT NULL DEFAULT 0,
  start_time timestamptz NOT NULL,
  i_am_alive timestamptz NOT NULL,
  PRIMARY KEY (cluster_id, address, port, generation)
);
)sql"},
};

// Shared with the storage component, hence IF NOT EXISTS and the retry in migrate().
constexpr const char* create_migrations_table = R"sql(
CREATE TABLE IF NOT EXISTS silo_schema_migrations (
  component text NOT NULL,
  version integer NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (component, version)
))sql";

#define SILO_MS_TO_TS(p) "('epoch'::timestamptz + " p "::bigint * interval '1 millisecond')"
#define SILO_TS_TO_MS(c) "(extract(epoch FROM " c ") * 1000)::bigint"

const std::pair<const char*, const char*> statements[] = {
    {"silo_membership_ensure_version",
     "INSERT INTO silo_membership_version (cluster_id, version, updated_at) VALUES ($1, 0, now()) "
     "ON CONFLICT (cluster_id) DO NOTHING"},
    {"silo_membership_read_version", "SELECT version FROM silo_membership_version WHERE cluster_id = $1"},
    {"silo_membership_read_rows",
     "SELECT address, port, generation, name, host_name, status, coalesce(gateway, ''), "
     "  coalesce((SELECT array_agg(coalesce(s->>'voter', '') ORDER BY o) "
     "            FROM jsonb_array_elements(suspicions) WITH ORDINALITY AS x(s, o)), '{}'::text[]), "
     "  coalesce((SELECT array_agg(coalesce((s->>'at_ms')::bigint, 0) ORDER BY o) "
     "            FROM jsonb_array_elements(suspicions) WITH ORDINALITY AS x(s, o)), '{}'::bigint[]), "
     "  grain_types, activations, " SILO_TS_TO_MS("start_time") ", " SILO_TS_TO_MS(
         "i_am_alive") " "
                       "FROM silo_membership WHERE cluster_id = $1 ORDER BY address COLLATE \"C\", port, "
                       "generation"},
    // The row lock taken here also queues concurrent writers: the loser re-checks the version after the
    // winner commits and updates nothing.
    {"silo_membership_bump",
     "UPDATE silo_membership_version SET version = version + 1, updated_at = now() "
     "WHERE cluster_id = $1 AND version = $2"},
    {"silo_membership_upsert",
     "INSERT INTO silo_membership (cluster_id, address, port, generation, name, host_name, status, gateway, "
     "  suspicions, grain_types, activations, start_time, i_am_alive) "
     "VALUES ($1, $2, $3, $4, $5, $6, $7, NULLIF($8, ''), "
     "  (SELECT coalesce(jsonb_agg(jsonb_build_object('voter', v, 'at_ms', t) ORDER BY o), '[]'::jsonb) "
     "   FROM unnest($9::text[], $10::bigint[]) WITH ORDINALITY AS s(v, t, o)), "
     "  $11::text[], $12, " SILO_MS_TO_TS("$13") ", " SILO_MS_TO_TS(
         "$14") ") "
                "ON CONFLICT (cluster_id, address, port, generation) DO UPDATE SET name = excluded.name, "
                "  host_name = excluded.host_name, status = excluded.status, gateway = excluded.gateway, "
                "  suspicions = excluded.suspicions, grain_types = excluded.grain_types, "
                "  activations = excluded.activations, start_time = excluded.start_time, "
                "  i_am_alive = excluded.i_am_alive"},
    {"silo_membership_heartbeat",
     "UPDATE silo_membership SET i_am_alive = " SILO_MS_TO_TS(
         "$5") ", activations = $6 "
               "WHERE cluster_id = $1 AND address = $2 AND port = $3 AND generation = $4"},
    // Cleanup locks the version row before touching silo rows, in the same order as write_row, so the two
    // queue behind each other instead of deadlocking.
    {"silo_membership_lock_version",
     "SELECT version FROM silo_membership_version WHERE cluster_id = $1 FOR UPDATE"},
    {"silo_membership_delete_defunct",
     "DELETE FROM silo_membership WHERE cluster_id = $1 AND status = 'dead' "
     "AND i_am_alive < " SILO_MS_TO_TS("$2")},
    {"silo_membership_bump_any",
     "UPDATE silo_membership_version SET version = version + 1, updated_at = now() WHERE cluster_id = $1"},
    {"silo_membership_notify", "SELECT pg_notify($1, $2)"},
};

#undef SILO_MS_TO_TS
#undef SILO_TS_TO_MS

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// libpq messages span lines ("...failed: Connection refused\n\tIs the server running..."); log lines don't.
std::string one_line(std::string_view text) {
  std::string out;
  bool space = false;
  for (char ch : text) {
    if (std::isspace(static_cast<unsigned char>(ch))) {
      space = !out.empty();
    } else {
      if (space) out += ' ';
      space = false;
      out += ch;
    }
  }
  return out;
}

// --- connection strings -------------------------------------------------------------------------------
// Only to name the server in messages before a connection exists and to know whether the operator chose
// a connect_timeout; libpq itself parses the string when connecting.

bool is_uri(std::string_view dsn) {
  return dsn.starts_with("postgresql://") || dsn.starts_with("postgres://");
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

using Params = std::map<std::string, std::string, std::less<>>;

// "key=value key='quoted \' value'": libpq's keyword/value form.
Params parse_keyword_dsn(std::string_view s) {
  Params out;
  std::size_t i = 0;
  auto skip_space = [&] {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i])))
      ++i;
  };
  for (;;) {
    skip_space();
    if (i >= s.size()) return out;
    std::size_t start = i;
    while (i < s.size() && s[i] != '=' && !std::isspace(static_cast<unsigned char>(s[i])))
      ++i;
    std::string key(s.substr(start, i - start));
    skip_space();
    if (i >= s.size() || s[i] != '=') return out;  // malformed: libpq reports it on connect
    ++i;
    skip_space();
    std::string value;
    bool quoted = i < s.size() && s[i] == '\'';
    if (quoted) ++i;
    while (i < s.size()) {
      char ch = s[i++];
      if (ch == '\\' && i < s.size()) {
        value += s[i++];
      } else if (quoted ? ch == '\'' : std::isspace(static_cast<unsigned char>(ch)) != 0) {
        break;
      } else {
        value += ch;
      }
    }
    out[key] = value;
  }
}

// "postgresql://user:pw@host:port,host2:port2/dbname?key=value": libpq's URI form.
Params parse_uri_dsn(std::string_view s) {
  Params out;
  s.remove_prefix(s.find("://") + 3);
  std::size_t auth_end = std::min(s.find_first_of("/?"), s.size());
  std::string_view authority = s.substr(0, auth_end);
  if (auto at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view user = authority.substr(0, at);
    user = user.substr(0, user.find(':'));
    if (!user.empty()) out["user"] = percent_decode(user);
    authority.remove_prefix(at + 1);
  }
  std::string hosts;
  std::string ports;
  while (!authority.empty()) {
    std::string_view entry = authority.substr(0, authority.find(','));
    authority.remove_prefix(std::min(entry.size() + 1, authority.size()));
    std::string_view host = entry;
    std::string_view port;
    std::size_t colon = entry.starts_with('[') ? entry.find(':', entry.find(']')) : entry.rfind(':');
    if (colon != std::string_view::npos) {
      host = entry.substr(0, colon);
      port = entry.substr(colon + 1);
    }
    if (host.starts_with('[') && host.ends_with(']')) host = host.substr(1, host.size() - 2);
    if (!hosts.empty() || !ports.empty()) {
      hosts += ',';
      ports += ',';
    }
    hosts += percent_decode(host);
    ports += std::string(port.empty() ? "5432" : port);
  }
  if (!hosts.empty()) out["host"] = hosts;
  if (!ports.empty()) out["port"] = ports;
  s.remove_prefix(auth_end);
  if (s.starts_with('/')) {
    std::string_view db = s.substr(1, s.find('?'));  // substr clamps npos
    if (auto q = db.find('?'); q != std::string_view::npos) db = db.substr(0, q);
    if (!db.empty()) out["dbname"] = percent_decode(db);
  }
  if (auto q = s.find('?'); q != std::string_view::npos) {
    std::string_view query = s.substr(q + 1);
    while (!query.empty()) {
      std::string_view item = query.substr(0, query.find('&'));
      query.remove_prefix(std::min(item.size() + 1, query.size()));
      auto eq = item.find('=');
      if (eq == std::string_view::npos) continue;
      out[percent_decode(item.substr(0, eq))] = percent_decode(item.substr(eq + 1));
    }
  }
  return out;
}

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

struct Target {
  std::string dsn;       // what we hand libpq: the operator's string plus our defaults
  std::string endpoint;  // host:port, for messages until a connection tells us better
  std::string dbname;
};

Target resolve_target(const std::string& dsn) {
  const bool uri = is_uri(dsn);
  Params p = uri ? parse_uri_dsn(dsn) : parse_keyword_dsn(dsn);
  auto value = [&](const char* key, const char* env_name) -> std::optional<std::string> {
    if (auto it = p.find(key); it != p.end() && !it->second.empty()) return it->second;
    return env(env_name);
  };
  Target t;
  t.dsn = dsn;
  auto add = [&](const char* key, const char* val) {
    if (uri) {
      t.dsn += (t.dsn.find('?') == std::string::npos ? '?' : '&');
    } else if (!t.dsn.empty()) {
      t.dsn += ' ';
    }
    t.dsn += std::string(key) + "=" + val;
  };
  // Bounds every connect (and so every call while the server is away); libpq would wait for the TCP
  // timeout, minutes on a dropped route.
  if (!value("connect_timeout", "PGCONNECT_TIMEOUT")) add("connect_timeout", "3");
  // So operators can tell the membership connections apart in pg_stat_activity.
  if (!value("application_name", "PGAPPNAME")) add("application_name", "silod-membership");

  std::string host = value("host", "PGHOST").value_or(value("hostaddr", "PGHOSTADDR").value_or(""));
  if (host.empty()) host = "/var/run/postgresql";  // Debian libpq's default socket directory
  t.endpoint = host + ":" + value("port", "PGPORT").value_or("5432");
  std::optional<std::string> db = value("dbname", "PGDATABASE");
  if (!db) db = value("user", "PGUSER");
  if (!db) {
    const passwd* pw = getpwuid(geteuid());
    db = pw != nullptr ? pw->pw_name : "";
  }
  t.dbname = *db;
  return t;
}

// --- arrays as parameters and results ------------------------------------------------------------------

// A text[] literal passed as a bound parameter ({"a","b\"c"}); every element quoted, so no element can
// read as NULL or split on a comma.
std::string text_array(const std::vector<std::string>& items) {
  std::string out = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char ch : items[i]) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  return out + "}";
}

std::string bigint_array(const std::vector<std::int64_t>& items) {
  std::string out = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(items[i]);
  }
  return out + "}";
}

std::vector<std::string> parse_array(const pqxx::field& f) {
  std::vector<std::string> out;
  // MONOBYTE parsing is safe for UTF-8: no byte of a multi-byte sequence is ASCII.
  pqxx::array_parser parser = f.as_array();
  for (;;) {
    auto [what, text] = parser.get_next();
    if (what == pqxx::array_parser::done) return out;
    if (what == pqxx::array_parser::string_value) out.push_back(std::move(text));
    if (what == pqxx::array_parser::null_value) out.emplace_back();
  }
}

// --- the listener -----------------------------------------------------------------------------------------

class ChangeReceiver final : public pqxx::notification_receiver {
 public:
  ChangeReceiver(pqxx::connection_base& c, std::string cluster_id)
      : pqxx::notification_receiver(c, notify_channel), cluster_id_(std::move(cluster_id)) {}
  void operator()(const std::string& payload, int) override {
    if (payload == cluster_id_) fired_ = true;  // other clusters share the channel
  }
  bool take() { return std::exchange(fired_, false); }

 private:
  std::string cluster_id_;
  bool fired_ = false;
};

// SQLSTATE classes that mean "the server or the link is the problem", not the statement.
bool connection_problem(const pqxx::sql_error& e) {
  const std::string& state = e.sqlstate();
  return state.starts_with("08") || state.starts_with("57P") || state == "53300";
}

class PostgresTable final : public MembershipTable {
 public:
  PostgresTable(const std::string& dsn, std::string cluster_id)
      : target_(resolve_target(dsn)), cluster_id_(std::move(cluster_id)) {
    endpoint_ = target_.endpoint;
    description_ = "PostgreSQL at " + target_.endpoint + "/" + target_.dbname;
  }

  ~PostgresTable() override { close_listener(); }

  void init() override {
    run("init", [&] {
      migrated_ = false;  // re-check the migrations even if another call already did
      set_up_ = false;
      ready_locked();
      return 0;
    });
  }

  MembershipSnapshot read_all() override {
    return run("read_all", [&] {
      pqxx::connection& c = ready_locked();
      // One snapshot for the version and the rows, so a reader never pairs a version with other rows.
      pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(c);
      MembershipSnapshot snap;
      pqxx::result version = tx.exec_prepared("silo_membership_read_version", cluster_id_);
      if (!version.empty()) snap.version = version[0][0].as<std::int64_t>();
      for (const pqxx::row& r : tx.exec_prepared("silo_membership_read_rows", cluster_id_))
        snap.rows.push_back(to_row(r));
      tx.commit();
      return snap;
    });
  }

  bool write_row(const MembershipRow& row, std::int64_t expected_version) override {
    return run("write_row", [&] {
      pqxx::connection& c = ready_locked();
      pqxx::work tx(c);
      if (tx.exec_prepared("silo_membership_bump", cluster_id_, expected_version).affected_rows() == 0)
        return false;  // someone else wrote first; the transaction rolls back
      std::vector<std::string> voters;
      std::vector<std::int64_t> at_ms;
      for (const Suspicion& s : row.suspicions) {
        voters.push_back(s.voter);
        at_ms.push_back(s.at_ms);
      }
      tx.exec_prepared("silo_membership_upsert", cluster_id_, row.address.host, int{row.address.port},
                       row.address.generation, row.name, row.host_name, std::string(to_string(row.status)),
                       row.gateway, text_array(voters), bigint_array(at_ms), text_array(row.grain_types),
                       row.activations, row.start_ms, row.i_am_alive_ms);
      tx.exec_prepared("silo_membership_notify", std::string(notify_channel), cluster_id_);
      tx.commit();
      return true;
    });
  }

  void heartbeat(const SiloAddress& self, std::int64_t now_ms, std::int64_t activations) override {
    run("heartbeat", [&] {
      pqxx::connection& c = ready_locked();
      pqxx::nontransaction tx(c);
      tx.exec_prepared("silo_membership_heartbeat", cluster_id_, self.host, int{self.port}, self.generation,
                       now_ms, activations);
      return 0;
    });
  }

  int cleanup_defunct(std::chrono::milliseconds age) override {
    // The cutoff uses this silo's clock, like the i_am_alive values the silos wrote.
    const std::int64_t cutoff_ms = unix_ms_now() - age.count();
    return run("cleanup_defunct", [&] {
      pqxx::connection& c = ready_locked();
      pqxx::work tx(c);
      tx.exec_prepared("silo_membership_lock_version", cluster_id_);
      int deleted = static_cast<int>(
          tx.exec_prepared("silo_membership_delete_defunct", cluster_id_, cutoff_ms).affected_rows());
      if (deleted == 0) return 0;  // nothing changed: no bump, so no silo re-reads for nothing
      tx.exec_prepared("silo_membership_bump_any", cluster_id_);
      tx.exec_prepared("silo_membership_notify", std::string(notify_channel), cluster_id_);
      tx.commit();
      return deleted;
    });
  }

  bool wait_for_change(std::chrono::milliseconds timeout) override {
    std::lock_guard lock(listen_mutex_);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    try {
      if (!listen_conn_) {
        listen_conn_ = std::make_unique<pqxx::connection>(target_.dsn);
        receiver_ = std::make_unique<ChangeReceiver>(*listen_conn_, cluster_id_);
        listen_pid_ = listen_conn_->backendpid();
        if (std::exchange(listener_lost_, false))
          spdlog::info("membership: listening for changes on {} again", describe());
        // Changes made before this LISTEN took effect notified nobody here: make the caller re-read. At
        // start-up too: between a joining silo's last read and its first LISTEN a peer may go active, and
        // without this re-read the silo would not learn it before the next poll (a peer it should probe
        // then goes unprobed, and that peer's lease fences it).
        return true;
      }
      for (;;) {
        if (receiver_->take()) return true;
        auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline -
                                                                          std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        listen_conn_->await_notification(static_cast<long>(left.count() / 1'000'000),
                                         static_cast<long>(left.count() % 1'000'000));
        // libpqxx may silently reconnect (and re-LISTEN) underneath; notifications in between are lost.
        if (!listen_conn_->is_open() || listen_conn_->backendpid() != listen_pid_)
          throw pqxx::broken_connection("the listening connection was lost");
      }
    } catch (const std::exception& e) {
      if (!listener_lost_) {
        spdlog::warn(
            "membership: not listening for changes on {}: {}; falling back to polling until it is back",
            describe(), one_line(e.what()));
      }
      listener_lost_ = true;
      close_listener();
      // No spinning on a dead server: the caller loops on us.
      std::this_thread::sleep_until(deadline);
      return false;
    }
  }

  std::string describe() const override {
    std::lock_guard lock(info_mutex_);
    return description_;
  }

 private:
  // Runs `fn` with the connection, turning libpqxx failures into TableUnavailable; a lost connection is
  // dropped so the next call reconnects.
  template <class F>
  std::invoke_result_t<F&> run(const char* op, F&& fn) {
    std::lock_guard lock(mutex_);
    // libpqxx words a connection that died mid-session oddly ("Could not obtain client encoding"), so say so.
    const std::string lost = conn_ ? "lost the connection: " : "";
    try {
      return fn();
    } catch (const TableUnavailable&) {
      throw;
    } catch (const pqxx::sql_error& e) {
      if (!connection_problem(e) && conn_ && conn_->is_open()) {
        throw TableUnavailable(
            describe() + " rejected " + op + ": " + one_line(e.what()) +
            "; check the database user's privileges on the silo_membership tables and that init() ran");
      }
      drop_locked();
      throw unreachable(lost + e.what());
    } catch (const pqxx::in_doubt_error& e) {
      drop_locked();
      throw unreachable(std::string("the outcome of ") + op + " is unknown (" + one_line(e.what()) +
                        "), re-read the table");
    } catch (const pqxx::transaction_rollback& e) {
      throw TableUnavailable(describe() + ": " + op + " collided with another transaction (" +
                             one_line(e.what()) + "); retry");
    } catch (const pqxx::failure& e) {  // broken_connection and the rest of libpqxx's runtime errors
      drop_locked();
      throw unreachable(lost + e.what());
    }
  }

  TableUnavailable unreachable(const std::string& why) const {
    std::string endpoint;
    {
      std::lock_guard lock(info_mutex_);
      endpoint = endpoint_;
    }
    return TableUnavailable("PostgreSQL at " + endpoint + " unreachable: " + one_line(why) +
                            "; membership changes resume when it is back");
  }

  // Connected, migrated and prepared; throws libpqxx errors.
  pqxx::connection& ready_locked() {
    if (conn_ && !conn_->is_open()) drop_locked();
    if (!conn_) {
      conn_ = std::make_unique<pqxx::connection>(target_.dsn);
      std::lock_guard lock(info_mutex_);
      const char* host = conn_->hostname();
      const char* port = conn_->port();
      const char* db = conn_->dbname();
      endpoint_ = std::string(host != nullptr ? host : "?") + ":" + (port != nullptr ? port : "?");
      description_ = "PostgreSQL at " + endpoint_ + "/" + (db != nullptr ? db : "?");
    }
    if (!migrated_) {
      migrate(*conn_);
      migrated_ = true;
    }
    if (!set_up_) {
      for (const auto& [name, sql] : statements)
        conn_->prepare(name, sql);
      pqxx::nontransaction tx(*conn_);
      tx.exec_prepared("silo_membership_ensure_version", cluster_id_);
      set_up_ = true;
    }
    return *conn_;
  }

  void drop_locked() noexcept {
    conn_.reset();
    set_up_ = false;  // prepared statements live in the session
  }

  void migrate(pqxx::connection& c) {
    for (int attempt = 1;; ++attempt) {
      try {
        pqxx::work tx(c);
        tx.exec("SET LOCAL client_min_messages = warning");  // no "already exists, skipping" notices
        // Transaction-scoped: released even when a migration fails or the connection drops.
        tx.exec("SELECT pg_advisory_xact_lock(" + std::to_string(migration_lock_key) + ")");
        tx.exec(create_migrations_table);
        std::vector<int> applied;
        for (const pqxx::row& r : tx.exec_params(
                 "SELECT version FROM silo_schema_migrations WHERE component = $1", migration_component))
          applied.push_back(r[0].as<int>());
        int newest_known = 0;
        for (const Migration& m : migrations) {
          newest_known = m.version;
          if (std::find(applied.begin(), applied.end(), m.version) != applied.end()) continue;
          tx.exec(m.sql);
          tx.exec_params("INSERT INTO silo_schema_migrations (component, version) VALUES ($1, $2)",
                         migration_component, m.version);
        }
        tx.commit();
        for (int v : applied) {
          if (v > newest_known) {
            spdlog::warn(
                "membership: {} has schema version {}, newer than this silod knows ({}); "
                "upgrade this silod",
                describe(), v, newest_known);
            break;
          }
        }
        return;
      } catch (const pqxx::sql_error& e) {
        // Two components creating silo_schema_migrations at once under different locks: one loses with
        // a duplicate error, and the table exists when it tries again.
        const bool duplicate = e.sqlstate() == "23505" || e.sqlstate() == "42P07";
        if (!duplicate || attempt >= 3) throw;
      }
    }
  }

  MembershipRow to_row(const pqxx::row& r) const {
    MembershipRow row;
    row.address.host = r[0].as<std::string>();
    row.address.port = static_cast<std::uint16_t>(r[1].as<int>());
    row.address.generation = r[2].as<std::int64_t>();
    row.name = r[3].as<std::string>();
    row.host_name = r[4].as<std::string>();
    const std::string status = r[5].as<std::string>();
    if (!parse_status(status, row.status)) {
      throw TableUnavailable(describe() + ": silo " + row.address.str() + " has status \"" + status +
                             "\", which this silod does not know; upgrade it");
    }
    row.gateway = r[6].as<std::string>();
    std::vector<std::string> voters = parse_array(r[7]);
    std::vector<std::string> at_ms = parse_array(r[8]);
    for (std::size_t i = 0; i < voters.size() && i < at_ms.size(); ++i)
      row.suspicions.push_back(Suspicion{voters[i], std::stoll(at_ms[i])});
    row.grain_types = parse_array(r[9]);
    row.activations = r[10].as<std::int64_t>();
    row.start_ms = r[11].as<std::int64_t>();
    row.i_am_alive_ms = r[12].as<std::int64_t>();
    return row;
  }

  void close_listener() noexcept {
    // Disconnect first: the receiver's destructor then skips UNLISTEN, which on a dead link would block
    // in libpqxx's reconnect attempt.
    if (listen_conn_) listen_conn_->disconnect();
    receiver_.reset();
    listen_conn_.reset();
  }

  const Target target_;
  const std::string cluster_id_;

  std::mutex mutex_;  // the connection below and its state, for every method but wait_for_change
  std::unique_ptr<pqxx::connection> conn_;
  bool migrated_ = false;
  bool set_up_ = false;

  std::mutex listen_mutex_;  // wait_for_change's own connection, opened on its thread
  std::unique_ptr<pqxx::connection> listen_conn_;
  std::unique_ptr<ChangeReceiver> receiver_;
  int listen_pid_ = 0;
  bool listener_lost_ = false;

  mutable std::mutex info_mutex_;  // so describe() never waits behind a slow query
  std::string endpoint_;
  std::string description_;
};

}  // namespace

std::unique_ptr<MembershipTable> make_postgres_table(const std::string& dsn, const std::string& cluster_id) {
  return std::make_unique<PostgresTable>(dsn, cluster_id);
}

}  // namespace silo::cluster
