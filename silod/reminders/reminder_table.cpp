#include "reminders/reminder_table.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include <spdlog/spdlog.h>
#include <pqxx/pqxx>

namespace silo::reminders {

namespace {

class MemoryTable final : public ReminderTable {
 public:
  void init() override {}
  void upsert(const ReminderRow& row) override {
    std::lock_guard lock(mutex_);
    rows_[{row.grain_type, row.grain_key, row.name}] = row;
  }
  void remove(const std::string& type, const std::string& key, const std::string& name) override {
    std::lock_guard lock(mutex_);
    rows_.erase({type, key, name});
  }
  std::vector<ReminderRow> for_grain(const std::string& type, const std::string& key) override {
    std::lock_guard lock(mutex_);
    std::vector<ReminderRow> out;
    for (auto it = rows_.lower_bound({type, key, ""}); it != rows_.end(); ++it) {
      if (std::get<0>(it->first) != type || std::get<1>(it->first) != key) break;
      out.push_back(it->second);
    }
    return out;
  }
  std::vector<ReminderRow> all() override {
    std::lock_guard lock(mutex_);
    std::vector<ReminderRow> out;
    for (const auto& [k, r] : rows_)
      out.push_back(r);
    return out;
  }
  bool set_last_tick(const ReminderRow& row, std::int64_t last_tick_ms) override {
    std::lock_guard lock(mutex_);
    auto it = rows_.find({row.grain_type, row.grain_key, row.name});
    // Only when the schedule is the one that ticked: a re-registration meanwhile starts afresh.
    if (it == rows_.end() || it->second.start_ms != row.start_ms || it->second.period_ms != row.period_ms)
      return false;
    it->second.last_tick_ms = std::max(it->second.last_tick_ms, last_tick_ms);
    return true;
  }
  std::string describe() const override { return "memory"; }

 private:
  std::mutex mutex_;
  std::map<std::tuple<std::string, std::string, std::string>, ReminderRow> rows_;
};

// One connection, used only from the reminder service's thread.
class PostgresTable final : public ReminderTable {
 public:
  PostgresTable(std::string dsn, std::string cluster_id)
      : dsn_(std::move(dsn)), cluster_(std::move(cluster_id)) {
    if (dsn_.find("connect_timeout") == std::string::npos) {
      if (!dsn_.empty()) dsn_.push_back(' ');
      dsn_.append("connect_timeout=3");  // bounded calls while PostgreSQL is down
    }
  }

  void init() override {
    run([&](pqxx::work& tx) {
      // The same advisory-lock discipline as the other components' migrations.
      tx.exec("SELECT pg_advisory_xact_lock(7596835011413013874)");
      tx.exec(
          "CREATE TABLE IF NOT EXISTS silo_schema_migrations (component text NOT NULL, version int NOT NULL, "
          "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))");
      auto r = tx.exec("SELECT 1 FROM silo_schema_migrations WHERE component = 'reminders' AND version = 1");
      if (r.empty()) {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS silo_reminders (cluster_id text NOT NULL, grain_type text NOT NULL, "
            "grain_key text NOT NULL, name text NOT NULL, start_ms bigint NOT NULL, period_ms bigint NOT "
            "NULL, "
            "last_tick_ms bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (cluster_id, grain_type, grain_key, name))");
        tx.exec("INSERT INTO silo_schema_migrations (component, version) VALUES ('reminders', 1)");
        spdlog::info("reminders: migrated table silo_reminders to version 1");
      }
    });
  }

  void upsert(const ReminderRow& row) override {
    run([&](pqxx::work& tx) {
      tx.exec_params(
          "INSERT INTO silo_reminders (cluster_id, grain_type, grain_key, name, start_ms, period_ms, "
          "last_tick_ms) "
          "VALUES ($1, $2, $3, $4, $5, $6, 0) ON CONFLICT (cluster_id, grain_type, grain_key, name) DO "
          "UPDATE "
          "SET start_ms = EXCLUDED.start_ms, period_ms = EXCLUDED.period_ms, last_tick_ms = 0, updated_at = "
          "now()",
          cluster_, row.grain_type, row.grain_key, row.name, row.start_ms, row.period_ms);
    });
  }

  void remove(const std::string& type, const std::string& key, const std::string& name) override {
    run([&](pqxx::work& tx) {
      tx.exec_params(
          "DELETE FROM silo_reminders WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 "
          "AND name = $4",
          cluster_, type, key, name);
    });
  }

  std::vector<ReminderRow> for_grain(const std::string& type, const std::string& key) override {
    std::vector<ReminderRow> out;
    run([&](pqxx::work& tx) {
      auto r = tx.exec_params(
          "SELECT grain_type, grain_key, name, start_ms, period_ms, last_tick_ms FROM "
          "silo_reminders WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 "
          "ORDER BY name",
          cluster_, type, key);
      out = rows(r);
    });
    return out;
  }

  std::vector<ReminderRow> all() override {
    std::vector<ReminderRow> out;
    run([&](pqxx::work& tx) {
      auto r = tx.exec_params(
          "SELECT grain_type, grain_key, name, start_ms, period_ms, last_tick_ms FROM "
          "silo_reminders WHERE cluster_id = $1",
          cluster_);
      out = rows(r);
    });
    return out;
  }

  bool set_last_tick(const ReminderRow& row, std::int64_t last_tick_ms) override {
    bool current = false;
    run([&](pqxx::work& tx) {
      current =
          tx.exec_params(
                "UPDATE silo_reminders SET last_tick_ms = GREATEST(last_tick_ms, $7), updated_at = now() "
                "WHERE cluster_id = $1 AND grain_type = $2 AND grain_key = $3 AND name = $4 AND start_ms = "
                "$5 "
                "AND period_ms = $6",
                cluster_, row.grain_type, row.grain_key, row.name, row.start_ms, row.period_ms, last_tick_ms)
              .affected_rows() == 1;
    });
    return current;
  }

  std::string describe() const override { return where_.empty() ? "PostgreSQL" : "PostgreSQL at " + where_; }

 private:
  static std::vector<ReminderRow> rows(const pqxx::result& r) {
    std::vector<ReminderRow> out;
    for (const auto& row : r) {
      out.push_back(ReminderRow{row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<std::string>(),
                                row[3].as<std::int64_t>(), row[4].as<std::int64_t>(),
                                row[5].as<std::int64_t>()});
    }
    return out;
  }

  template <class F>
  void run(F&& f) {
    try {
      if (!conn_ || !conn_->is_open()) {
        conn_ = std::make_unique<pqxx::connection>(dsn_);
        where_ = std::string(conn_->hostname() ? conn_->hostname() : "") + ":" +
                 (conn_->port() ? conn_->port() : "") + "/" + conn_->dbname();
      }
      pqxx::work tx(*conn_);
      f(tx);
      tx.commit();
    } catch (const pqxx::broken_connection& e) {
      conn_.reset();
      throw TableUnavailable("PostgreSQL " + (where_.empty() ? dsn_ : where_) + " unreachable: " + e.what() +
                             "; reminders resume when it is back");
    } catch (const pqxx::sql_error& e) {
      throw TableUnavailable(std::string("reminders: query failed: ") + e.what());
    }
  }

  std::string dsn_;
  std::string cluster_;
  std::string where_;
  std::unique_ptr<pqxx::connection> conn_;
};

}  // namespace

std::unique_ptr<ReminderTable> make_memory_reminder_table() {
  return std::make_unique<MemoryTable>();
}

std::unique_ptr<ReminderTable> make_postgres_reminder_table(const std::string& dsn,
                                                            const std::string& cluster_id) {
  return std::make_unique<PostgresTable>(dsn, cluster_id);
}

}  // namespace silo::reminders
