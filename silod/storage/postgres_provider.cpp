// The PostgreSQL provider: grain state in the table silo_grain_state, one row per (cluster, grain type, grain
// key, state name), its `version` column being the etag. A small pool of worker threads, each owning one
// connection, serves a shared queue, so callers never block on the database. With group commit a worker
// takes the queued writes (its share, when other workers are idle) and runs them in one transaction, one
// statement and one result per write: under load, many writes share one commit (one WAL flush). Should
// PostgreSQL refuse one statement (a constraint, a trigger, a full tablespace quota), the batch is run again
// with a savepoint per operation, so that operation fails alone and the rest of the batch is stored.
// clear() leaves a tombstone (payload NULL, version one up) rather than deleting the row: versions never
// restart, so an etag from before a clear stays stale (see provider.hpp).

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>
#include <pqxx/pqxx>

#include "storage/provider.hpp"

namespace silo::storage {

namespace {

using Clock = std::chrono::steady_clock;

// pg_advisory_lock key serialising schema migrations of every silo component sharing the database
// ("silo-sch").
constexpr std::int64_t migration_lock_key = 0x73696c6f2d736368;
// Upper bound of writes per group-commit transaction: keeps one failed batch (and its retry) small.
constexpr std::size_t max_batch = 256;
// Retries of a batch that PostgreSQL rolled back as a deadlock or serialization failure.
constexpr int max_rollback_retries = 3;
constexpr auto min_backoff = std::chrono::milliseconds(100);
constexpr auto max_backoff = std::chrono::milliseconds(1000);

struct Migration {
  int version;
  const char* sql;
};

// Append-only: a released version is never edited, a change is a new version.
const Migration storage_migrations[] = {
    {1, R"(CREATE TABLE silo_grain_state (
             cluster_id text NOT NULL,
             grain_type text NOT NULL,
             grain_key text NOT NULL,
             state_name text NOT NULL,
             payload bytea NOT NULL,
             version bigint NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (cluster_id, grain_type, grain_key, state_name)))"},
    // Tombstones: clear() keeps the row with payload NULL, so its version keeps growing.
    {2, "ALTER TABLE silo_grain_state ALTER COLUMN payload DROP NOT NULL"},
};

constexpr const char* sql_read =
    "SELECT payload, version FROM silo_grain_state "
    "WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 AND state_name = $4";
constexpr const char* sql_insert =
    "INSERT INTO silo_grain_state (cluster_id, grain_type, grain_key, state_name, payload, version) "
    "VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT DO NOTHING";
constexpr const char* sql_update =
    "UPDATE silo_grain_state SET payload = $5, version = version + 1, updated_at = now() "
    "WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 AND state_name = $4 AND version = $6 "
    "RETURNING version";
constexpr const char* sql_clear =
    "UPDATE silo_grain_state SET payload = NULL, version = version + 1, updated_at = now() "
    "WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 AND state_name = $4 AND version = $5 "
    "RETURNING version";
constexpr const char* sql_version =
    "SELECT version FROM silo_grain_state "
    "WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 AND state_name = $4";

// libpq messages span several lines ("...failed: Connection refused\n\tIs the server running..."); the first
// says what happened and keeps log lines and Outcome messages on one line.
std::string first_line(const std::string& text) {
  std::size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "unknown error";
  std::size_t end = text.find('\n', begin);
  std::string line = text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' '))
    line.pop_back();
  return line;
}

std::string percent_decode(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The connection options a dsn resolves to, as far as messages and defaults need them: explicit values over
// the PG* environment. (libpq's PQconninfoParse would do this, but silo_core links libpqxx only.) Accepts
// both forms: "host=h port=5433 ..." and "postgresql://user@h:5433/db?connect_timeout=2".
std::map<std::string, std::string> resolve_options(const std::string& dsn) {
  std::map<std::string, std::string> out;
  const std::pair<const char*, const char*> env[] = {
      {"host", "PGHOST"},       {"hostaddr", "PGHOSTADDR"}, {"port", "PGPORT"},
      {"dbname", "PGDATABASE"}, {"user", "PGUSER"},         {"connect_timeout", "PGCONNECT_TIMEOUT"}};
  for (const auto& [key, var] : env)
    if (const char* v = std::getenv(var); v && *v) out[key] = v;

  if (dsn.rfind("postgresql://", 0) == 0 || dsn.rfind("postgres://", 0) == 0) {
    std::string rest = dsn.substr(dsn.find("://") + 3);
    std::string query;
    if (auto q = rest.find('?'); q != std::string::npos) {
      query = rest.substr(q + 1);
      rest.resize(q);
    }
    if (auto slash = rest.find('/'); slash != std::string::npos) {
      if (slash + 1 < rest.size()) out["dbname"] = percent_decode(rest.substr(slash + 1));
      rest.resize(slash);
    }
    if (auto at = rest.rfind('@'); at != std::string::npos) {
      const std::string userinfo = rest.substr(0, at);
      if (!userinfo.empty()) out["user"] = percent_decode(userinfo.substr(0, userinfo.find(':')));
      rest = rest.substr(at + 1);
    }
    if (!rest.empty()) {
      // host[:port], [v6]:port; several hosts (h1:p1,h2:p2) are reported as written.
      std::string host = rest, port;
      const auto colon = rest.rfind(':');
      const auto bracket = rest.rfind(']');
      if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket) &&
          rest.find(',') == std::string::npos) {
        host = rest.substr(0, colon);
        port = rest.substr(colon + 1);
      }
      if (!host.empty()) out["host"] = percent_decode(host);
      if (!port.empty()) out["port"] = port;
    }
    std::size_t pos = 0;
    while (pos < query.size()) {
      auto amp = query.find('&', pos);
      if (amp == std::string::npos) amp = query.size();
      const std::string item = query.substr(pos, amp - pos);
      if (auto eq = item.find('='); eq != std::string::npos)
        out[percent_decode(item.substr(0, eq))] = percent_decode(item.substr(eq + 1));
      pos = amp + 1;
    }
    return out;
  }

  // key = value pairs; values may be 'single quoted' with backslash escapes.
  std::size_t i = 0;
  auto skip_space = [&] {
    while (i < dsn.size() && std::isspace(static_cast<unsigned char>(dsn[i])))
      ++i;
  };
  while (true) {
    skip_space();
    if (i >= dsn.size()) break;
    std::string key;
    while (i < dsn.size() && dsn[i] != '=' && !std::isspace(static_cast<unsigned char>(dsn[i])))
      key += dsn[i++];
    skip_space();
    if (i >= dsn.size() || dsn[i] != '=') break;  // malformed: libpq will say what is wrong on connect
    ++i;
    skip_space();
    std::string value;
    if (i < dsn.size() && dsn[i] == '\'') {
      for (++i; i < dsn.size() && dsn[i] != '\''; ++i) {
        if (dsn[i] == '\\' && i + 1 < dsn.size()) ++i;
        value += dsn[i];
      }
      ++i;
    } else {
      for (; i < dsn.size() && !std::isspace(static_cast<unsigned char>(dsn[i])); ++i) {
        if (dsn[i] == '\\' && i + 1 < dsn.size()) ++i;
        value += dsn[i];
      }
    }
    out[key] = value;
  }
  return out;
}

// "host:port" for messages (never the password, which a dsn may carry).
std::string describe_target(const std::map<std::string, std::string>& options) {
  auto get = [&](const char* k) {
    auto it = options.find(k);
    return it == options.end() ? std::string() : it->second;
  };
  std::string host = get("host");
  if (host.empty()) host = get("hostaddr");
  if (host.empty()) host = "the local socket";
  std::string port = get("port");
  if (port.empty()) port = "5432";
  return host + ":" + port;
}

// Bounds how long a connection attempt may take when the server does not answer (a dead host rather than a
// refused port), so operations during an outage fail with unavailable instead of hanging.
std::string with_default_timeouts(const std::string& dsn, const std::map<std::string, std::string>& options) {
  std::vector<std::pair<std::string, std::string>> extra;
  if (!options.count("connect_timeout")) extra.emplace_back("connect_timeout", "5");
  if (!options.count("keepalives_idle")) extra.emplace_back("keepalives_idle", "10");
  if (!options.count("keepalives_interval")) extra.emplace_back("keepalives_interval", "5");
  if (!options.count("keepalives_count")) extra.emplace_back("keepalives_count", "3");
  if (extra.empty()) return dsn;
  const bool uri = dsn.rfind("postgresql://", 0) == 0 || dsn.rfind("postgres://", 0) == 0;
  std::string out = dsn;
  for (const auto& [k, v] : extra) {
    if (uri)
      out += (out.find('?') == std::string::npos ? "?" : "&") + k + "=" + v;
    else
      out += (out.empty() ? "" : " ") + k + "=" + v;
  }
  return out;
}

// PostgreSQL keeps these columns as text: a key with NUL bytes or invalid UTF-8 would fail its whole batch.
bool valid_text(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte (no overlongs, no surrogates)
    if (c == 0) return false;
    if (c < 0x80)
      n = 0;
    else if (c >= 0xc2 && c <= 0xdf)
      n = 1;
    else if (c >= 0xe0 && c <= 0xef)
      n = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
      n = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else
      return false;
    if (i + n >= s.size()) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b >> 6) != 0x2) return false;
    }
    i += n + 1;
  }
  return true;
}

Outcome conflict(const StateKey& k, std::uint64_t expected, std::uint64_t stored) {
  Outcome o;
  o.code = StatusCode::aborted;
  o.error = "inconsistent state: " + k.grain_type + "/" + k.grain_key + " state '" + k.state_name +
            "' is at version " + std::to_string(stored) + ", this activation read version " +
            std::to_string(expected);
  return o;
}

// Routes libpq/libpqxx notices (e.g. "terminating connection due to administrator command") to the log
// instead of stderr.
class NoticeToLog final : public pqxx::errorhandler {
 public:
  NoticeToLog(pqxx::connection_base& conn, std::string prefix)
      : errorhandler(conn), prefix_(std::move(prefix)) {}
  bool operator()(const char msg[]) noexcept override {
    spdlog::debug("{}: PostgreSQL notice: {}", prefix_, first_line(msg));
    return false;
  }

 private:
  std::string prefix_;
};

struct Connection {
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<NoticeToLog> notices;  // declared after conn: unregisters before the connection closes
  void reset() {
    notices.reset();
    conn.reset();
  }
};

struct Op {
  enum class Kind : std::uint8_t { read, write, clear };
  Kind kind = Kind::read;
  StateKey key;
  std::string data;
  std::uint64_t etag = 0;
  Completion done;
};

class PostgresProvider final : public Provider {
 public:
  PostgresProvider(const config::StorageProviderConfig& cfg, std::string cluster_id, std::string name)
      : cluster_id_(std::move(cluster_id)),
        name_(std::move(name)),
        prefix_("storage." + name_),
        dsn_(cfg.dsn),
        group_commit_(cfg.group_commit),
        pool_size_(std::max(1u, cfg.pool_size)) {}

  ~PostgresProvider() override { stop(); }

  void start() override {
    {
      std::lock_guard lock(mutex_);
      if (running_) return;
    }
    const auto options = resolve_options(dsn_);
    target_ = describe_target(options);
    conninfo_ = with_default_timeouts(dsn_, options);
    auto it = options.find("dbname");
    const std::string in_db = it == options.end() ? "" : " (database " + it->second + ")";

    std::vector<Connection> conns;
    for (unsigned i = 0; i < pool_size_; ++i) {
      try {
        conns.push_back(connect(i));
      } catch (const std::exception& e) {
        throw std::runtime_error(prefix_ + ": cannot connect to PostgreSQL at " + target_ + in_db + ": " +
                                 first_line(e.what()) + "; start PostgreSQL or fix " + prefix_ +
                                 ".dsn (empty: the PG* environment variables)");
      }
      if (i == 0) {
        try {
          migrate(*conns[0].conn);
        } catch (const std::exception& e) {
          throw std::runtime_error(prefix_ + ": migrating the schema in PostgreSQL at " + target_ + in_db +
                                   " failed: " + first_line(e.what()) +
                                   "; check that the configured user may create tables there");
        }
      }
    }
    spdlog::info("{}: connected to PostgreSQL at {} (database {}, {} connections, group commit {})", prefix_,
                 target_, conns[0].conn->dbname(), pool_size_, group_commit_ ? "on" : "off");

    std::lock_guard lock(mutex_);
    running_ = true;
    stopping_ = false;
    workers_.reserve(pool_size_);
    for (unsigned i = 0; i < pool_size_; ++i) {
      workers_.emplace_back([this, i, c = std::make_shared<Connection>(std::move(conns[i]))]() mutable {
        worker_loop(i, std::move(*c));
      });
    }
  }

  void stop() override {
    {
      std::lock_guard lock(mutex_);
      if (!running_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_)
      t.join();  // workers drain the queue first: accepted writes still run
    workers_.clear();
    std::lock_guard lock(mutex_);
    running_ = false;
  }

  void read(const StateKey& key, Completion done) override {
    submit(Op{Op::Kind::read, key, {}, 0, std::move(done)});
  }

  void write(const StateKey& key, std::string data, std::uint64_t etag, Completion done) override {
    submit(Op{Op::Kind::write, key, std::move(data), etag, std::move(done)});
  }

  void clear(const StateKey& key, std::uint64_t etag, Completion done) override {
    submit(Op{Op::Kind::clear, key, {}, etag, std::move(done)});
  }

 private:
  void submit(Op op) {
    if (!valid_text(op.key.grain_type) || !valid_text(op.key.grain_key) || !valid_text(op.key.state_name)) {
      Outcome out;
      out.code = StatusCode::invalid_argument;
      out.error =
          prefix_ + ": grain " + op.key.grain_type +
          " has a key or state name that is not UTF-8 text "
          "(PostgreSQL stores them as text); use UTF-8 keys or store this grain with the memory provider";
      op.done(std::move(out));
      return;
    }
    {
      std::lock_guard lock(mutex_);
      if (running_ && !stopping_) {
        queue_.push_back(std::move(op));
        cv_.notify_one();
        return;
      }
    }
    Outcome out;
    out.code = StatusCode::unavailable;
    out.error = prefix_ + " is not running (silod is starting or stopping); retry on a running silo";
    op.done(std::move(out));
  }

  // Takes the next unit of work: one read, or (group commit) the queued writes and clears, up to max_batch
  // and to this worker's share of the queue, so idle workers commit the rest in parallel. Queued reads stay
  // for other workers: they do not wait behind the batch.
  bool take(std::vector<Op>& batch) {
    std::unique_lock lock(mutex_);
    ++idle_;
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    // Share the queue with the other idle workers: their transactions commit in parallel.
    const std::size_t limit = std::min(max_batch, (queue_.size() + idle_ - 1) / std::max(1u, idle_));
    --idle_;
    if (queue_.empty()) return false;
    batch.push_back(std::move(queue_.front()));
    queue_.pop_front();
    if (group_commit_ && batch.front().kind != Op::Kind::read && !queue_.empty()) {
      std::deque<Op> rest;
      for (auto& op : queue_) {
        if (op.kind != Op::Kind::read && batch.size() < limit)
          batch.push_back(std::move(op));
        else
          rest.push_back(std::move(op));
      }
      queue_.swap(rest);
    }
    if (!queue_.empty()) cv_.notify_one();
    return true;
  }

  void worker_loop(unsigned index, Connection conn) {
    Clock::time_point next_attempt{};
    auto backoff = min_backoff;
    std::vector<Op> batch;
    while (take(batch)) {
      std::vector<Outcome> outs = execute(index, conn, next_attempt, backoff, batch);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        try {
          batch[i].done(std::move(outs[i]));
        } catch (const std::exception& e) {
          // A throwing completion must not end the worker (and with it this provider's capacity).
          spdlog::error("{}: a storage completion threw: {}; this is a bug in the caller", prefix_, e.what());
        }
      }
      batch.clear();
    }
  }

  Connection connect(unsigned index) {
    Connection c;
    c.conn = std::make_unique<pqxx::connection>(conninfo_);
    c.notices = std::make_unique<NoticeToLog>(*c.conn, prefix_ + " connection " + std::to_string(index));
    c.conn->prepare("silo_read", sql_read);
    c.conn->prepare("silo_insert", sql_insert);
    c.conn->prepare("silo_update", sql_update);
    c.conn->prepare("silo_clear", sql_clear);
    c.conn->prepare("silo_version", sql_version);
    return c;
  }

  // Connects when the worker has no connection, at most once per backoff period; false with `error` set when
  // PostgreSQL cannot be reached.
  bool ensure_connected(unsigned index, Connection& conn, Clock::time_point& next_attempt,
                        std::chrono::milliseconds& backoff, std::string& error) {
    if (conn.conn) return true;
    if (Clock::now() < next_attempt) {
      error = last_connect_error();
      return false;
    }
    try {
      conn = connect(index);
    } catch (const std::exception& e) {
      error = first_line(e.what());
      next_attempt = Clock::now() + backoff;
      backoff = std::min(backoff * 2, max_backoff);
      std::lock_guard lock(state_mutex_);
      last_connect_error_ = error;
      if (reachable_) {
        reachable_ = false;
        spdlog::warn(
            "{}: connection to PostgreSQL at {} lost: {}; operations fail with unavailable and "
            "reconnect when it is back",
            prefix_, target_, error);
      }
      return false;
    }
    backoff = min_backoff;
    next_attempt = {};
    std::lock_guard lock(state_mutex_);
    if (!reachable_) {
      reachable_ = true;
      spdlog::info("{}: reconnected to PostgreSQL at {}", prefix_, target_);
    }
    return true;
  }

  std::string last_connect_error() {
    std::lock_guard lock(state_mutex_);
    return last_connect_error_;
  }

  std::string unreachable(const std::string& why) const {
    return "PostgreSQL at " + target_ + " unreachable: " + why + "; writes resume when it is back";
  }

  std::vector<Outcome> execute(unsigned index, Connection& conn, Clock::time_point& next_attempt,
                               std::chrono::milliseconds& backoff, const std::vector<Op>& batch) {
    auto fail_all = [&](StatusCode code, const std::string& error) {
      std::vector<Outcome> outs(batch.size());
      for (auto& o : outs) {
        o.code = code;
        o.error = error;
      }
      return outs;
    };
    int rollbacks = 0;
    bool retried_broken = false;
    bool isolate = false;  // a savepoint per operation, after a statement of the batch was refused
    for (;;) {
      std::string error;
      if (!ensure_connected(index, conn, next_attempt, backoff, error))
        return fail_all(StatusCode::unavailable, unreachable(error));
      try {
        return run(*conn.conn, batch, isolate);
      } catch (const pqxx::in_doubt_error& e) {
        conn.reset();
        return fail_all(StatusCode::unavailable,
                        unreachable("the connection broke while committing, so the write may or may not be "
                                    "stored (" +
                                    first_line(e.what()) + ")"));
      } catch (const pqxx::broken_connection& e) {
        // Broken before COMMIT: the server rolled the transaction back, so running it again is safe. Most
        // often the connection went stale across a server restart and a fresh one succeeds at once.
        conn.reset();
        spdlog::debug("{}: connection {} broke: {}", prefix_, index, first_line(e.what()));
        if (retried_broken) return fail_all(StatusCode::unavailable, unreachable(first_line(e.what())));
        retried_broken = true;
      } catch (const pqxx::transaction_rollback& e) {
        // Deadlock or serialization failure between concurrent batches: nothing was written, try again.
        if (++rollbacks > max_rollback_retries)
          return fail_all(StatusCode::unavailable, prefix_ + ": PostgreSQL rolled the transaction back " +
                                                       std::to_string(rollbacks) + " times (" +
                                                       first_line(e.what()) + "); retry the call");
      } catch (const pqxx::sql_error& e) {
        const std::string& state = e.sqlstate();
        // Connection exceptions (08), operator intervention such as a shutdown (57), lack of resources (53).
        const bool down = !conn.conn->is_open() || state.rfind("08", 0) == 0 || state.rfind("57", 0) == 0 ||
                          state.rfind("53", 0) == 0;
        if (down) {
          // As for a broken connection: whatever failed was rolled back (a COMMIT whose outcome is unknown
          // throws in_doubt_error), so one retry on a fresh connection is safe.
          conn.reset();
          spdlog::debug("{}: connection {} failed: {}", prefix_, index, first_line(e.what()));
          if (retried_broken) return fail_all(StatusCode::unavailable, unreachable(first_line(e.what())));
          retried_broken = true;
          continue;
        }
        if (!isolate && batch.size() > 1) {
          // One operation was refused and the whole transaction rolled back, nothing written: run the
          // batch again with a savepoint per operation, so only the refused one fails (its grain then
          // deactivates; the other grains' writes must not fail with it). The normal path stays one
          // statement per write.
          spdlog::debug("{}: a batch of {} was refused ({}); running it again operation by operation",
                        prefix_, batch.size(), first_line(e.what()));
          isolate = true;
          continue;
        }
        return fail_all(StatusCode::internal, refused(e));
      } catch (const std::exception& e) {
        if (conn.conn && !conn.conn->is_open()) conn.reset();
        return fail_all(StatusCode::internal,
                        prefix_ + ": " + first_line(e.what()) + "; check this silo's logs");
      }
    }
  }

  std::string refused(const pqxx::sql_error& e) const {
    return prefix_ + ": PostgreSQL at " + target_ + " refused the statement (" + e.sqlstate() +
           "): " + first_line(e.what()) + "; check the silo_grain_state table and this silo's logs";
  }

  // Errors that concern the connection or the transaction as a whole rather than one statement: connection
  // exceptions (08), operator intervention (57), insufficient resources (53), transaction rollback (40).
  static bool whole_batch_error(const pqxx::sql_error& e) {
    const std::string& state = e.sqlstate();
    return state.rfind("08", 0) == 0 || state.rfind("57", 0) == 0 || state.rfind("53", 0) == 0 ||
           state.rfind("40", 0) == 0;
  }

  // Runs the batch: a read alone without a transaction; writes and clears in one transaction (with a
  // savepoint per operation when `isolate`).
  std::vector<Outcome> run(pqxx::connection& conn, const std::vector<Op>& batch, bool isolate) {
    std::vector<Outcome> outs(batch.size());
    if (batch.size() == 1 && batch[0].kind == Op::Kind::read) {
      pqxx::nontransaction tx(conn);
      const auto& k = batch[0].key;
      outs[0] = read_row(tx.exec_prepared("silo_read", cluster_id_, k.grain_type, k.grain_key, k.state_name));
      return outs;
    }
    // Statements in key order, so two batches touching the same rows lock them in the same order and cannot
    // deadlock; stable, so two operations on one key keep their queue order.
    std::vector<std::size_t> order(batch.size());
    for (std::size_t i = 0; i < order.size(); ++i)
      order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      const auto& x = batch[a].key;
      const auto& y = batch[b].key;
      return std::tie(x.grain_type, x.grain_key, x.state_name) <
             std::tie(y.grain_type, y.grain_key, y.state_name);
    });
    pqxx::work tx(conn);
    for (std::size_t i : order)
      outs[i] = isolate ? apply_isolated(tx, batch[i]) : apply(tx, batch[i]);
    tx.commit();
    return outs;
  }

  // One operation under its own savepoint: refused, it is rolled back alone and fails alone. (Plain SAVEPOINT
  // statements: with libpqxx 6.4's subtransaction, the statements after a refused one still failed, 25P02.)
  Outcome apply_isolated(pqxx::work& tx, const Op& op) {
    tx.exec("SAVEPOINT silo_op");
    try {
      Outcome out = apply(tx, op);
      tx.exec("RELEASE SAVEPOINT silo_op");
      return out;
    } catch (const pqxx::sql_error& e) {
      if (whole_batch_error(e) || !tx.conn().is_open()) throw;
      tx.exec("ROLLBACK TO SAVEPOINT silo_op");
      Outcome out;
      out.code = StatusCode::internal;
      out.error = refused(e);
      return out;
    }
  }

  // One operation inside the batch's transaction. A stale etag is 0 rows, never an SQL error, so it fails
  // only its own operation.
  Outcome apply(pqxx::transaction_base& tx, const Op& op) {
    const auto& k = op.key;
    const auto etag = static_cast<std::int64_t>(op.etag);
    Outcome out;
    switch (op.kind) {
      case Op::Kind::read:
        return read_row(tx.exec_prepared("silo_read", cluster_id_, k.grain_type, k.grain_key, k.state_name));
      case Op::Kind::write: {
        const pqxx::binarystring payload(op.data.data(), op.data.size());
        if (op.etag == 0) {
          pqxx::result r =
              tx.exec_prepared("silo_insert", cluster_id_, k.grain_type, k.grain_key, k.state_name, payload);
          if (r.affected_rows() == 1) {
            out.etag = 1;
            return out;
          }
        } else {
          pqxx::result r = tx.exec_prepared("silo_update", cluster_id_, k.grain_type, k.grain_key,
                                            k.state_name, payload, etag);
          if (!r.empty()) {
            out.etag = r[0][0].as<std::uint64_t>();
            return out;
          }
        }
        return conflict(k, op.etag, stored_version(tx, k));
      }
      case Op::Kind::clear: {
        if (op.etag != 0) {
          pqxx::result r =
              tx.exec_prepared("silo_clear", cluster_id_, k.grain_type, k.grain_key, k.state_name, etag);
          if (!r.empty()) {
            out.etag = r[0][0].as<std::uint64_t>();
            return out;
          }
        }
        const std::uint64_t stored = stored_version(tx, k);
        if (stored == 0 && op.etag == 0) return out;  // no record: nothing to clear
        return conflict(k, op.etag, stored);
      }
    }
    return out;
  }

  static Outcome read_row(const pqxx::result& r) {
    Outcome out;
    if (!r.empty()) {
      out.tombstone = r[0][0].is_null();
      if (!out.tombstone) out.data = pqxx::binarystring(r[0][0]).str();
      out.etag = r[0][1].as<std::uint64_t>();
    }
    return out;
  }

  std::uint64_t stored_version(pqxx::transaction_base& tx, const StateKey& k) {
    pqxx::result r = tx.exec_prepared("silo_version", cluster_id_, k.grain_type, k.grain_key, k.state_name);
    return r.empty() ? 0 : r[0][0].as<std::uint64_t>();
  }

  // Applies the pending migrations of component 'storage', each with its bookkeeping row in one transaction,
  // under a session advisory lock so silos starting together migrate one at a time.
  void migrate(pqxx::connection& conn) {
    {
      pqxx::nontransaction tx(conn);
      tx.exec("SELECT pg_advisory_lock(" + std::to_string(migration_lock_key) + ")");
    }
    try {
      {
        pqxx::work tx(conn);
        tx.exec(
            "CREATE TABLE IF NOT EXISTS silo_schema_migrations (component text NOT NULL, version int NOT "
            "NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))");
        tx.commit();
      }
      int current = 0;
      {
        pqxx::nontransaction tx(conn);
        current =
            tx.exec(
                  "SELECT coalesce(max(version), 0) FROM silo_schema_migrations WHERE component = 'storage'")
                [0][0]
                    .as<int>();
      }
      int applied = current;
      for (const auto& m : storage_migrations) {
        if (m.version <= current) continue;
        pqxx::work tx(conn);
        tx.exec(m.sql);
        tx.exec_params("INSERT INTO silo_schema_migrations (component, version) VALUES ('storage', $1)",
                       m.version);
        tx.commit();
        applied = m.version;
        spdlog::info("{}: schema 'storage' migrated to version {} in PostgreSQL at {}", prefix_, m.version,
                     target_);
      }
      if (applied == current)
        spdlog::info("{}: schema 'storage' is at version {} (up to date)", prefix_, current);
      pqxx::nontransaction tx(conn);
      tx.exec("SELECT pg_advisory_unlock(" + std::to_string(migration_lock_key) + ")");
    } catch (...) {
      // Release the lock so another silo can try; if the connection is gone the server released it already.
      try {
        if (conn.is_open()) {
          pqxx::nontransaction tx(conn);
          tx.exec("SELECT pg_advisory_unlock(" + std::to_string(migration_lock_key) + ")");
        }
      } catch (const std::exception&) {
      }
      throw;
    }
  }

  const std::string cluster_id_;
  const std::string name_;
  const std::string prefix_;  // "storage.NAME", the YAML path, for log lines and messages
  const std::string dsn_;
  const bool group_commit_;
  const unsigned pool_size_;
  std::string target_;    // "host:port"
  std::string conninfo_;  // dsn_ with default timeouts

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  bool running_ = false;
  bool stopping_ = false;
  unsigned idle_ = 0;  // workers waiting for work
  std::vector<std::thread> workers_;

  std::mutex
      state_mutex_;  // reachable_ and last_connect_error_, shared by the workers for one log line per change
  bool reachable_ = true;
  std::string last_connect_error_;
};

}  // namespace

std::unique_ptr<Provider> make_postgres_provider(const config::StorageProviderConfig& cfg,
                                                 const std::string& cluster_id, const std::string& name) {
  return std::make_unique<PostgresProvider>(cfg, cluster_id, name);
}

}  // namespace silo::storage
