#pragma once
// Where membership is kept: one row per silo plus a table version. Every change of a row is a
// compare-and-set on the version (optimistic concurrency), so concurrent voters never lose each other's
// votes. Implementations: local (in memory, single node) and postgres.
// All calls block; the membership agent makes them from its own threads, never from a grain worker.

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cluster/silo_address.hpp"

namespace silo::cluster {

enum class SiloStatus : std::uint8_t { joining, active, shutting_down, dead };
const char* to_string(SiloStatus s) noexcept;
bool parse_status(const std::string& text, SiloStatus& out);

struct Suspicion {
  std::string voter;       // SiloAddress::str() of the voting silo
  std::int64_t at_ms = 0;  // unix ms
};

struct MembershipRow {
  SiloAddress address;
  std::string name;       // silo.name
  std::string host_name;  // gethostname()
  SiloStatus status = SiloStatus::joining;
  std::string gateway;  // "host:port", empty when the silo has no gateway
  std::vector<Suspicion> suspicions;
  std::int64_t start_ms = 0;
  std::int64_t i_am_alive_ms = 0;
  std::vector<std::string> grain_types;  // types this silo can activate (placement uses it)
  std::int64_t activations = 0;          // load, refreshed with i_am_alive (activation-count placement)
};

struct MembershipSnapshot {
  std::int64_t version = 0;
  std::vector<MembershipRow> rows;
  const MembershipRow* find(const SiloAddress& a) const {
    for (const auto& r : rows)
      if (r.address == a) return &r;
    return nullptr;
  }
};

/// The table cannot be reached; the caller keeps its last view and retries later.
class TableUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class MembershipTable {
 public:
  virtual ~MembershipTable() = default;
  /// Creates or migrates the schema. Throws TableUnavailable when the store cannot be reached.
  virtual void init() = 0;
  /// The whole table for this cluster.
  virtual MembershipSnapshot read_all() = 0;
  /// Inserts or replaces `row` (keyed by address incl. generation) iff the table version is still
  /// `expected_version`; bumps the version and notifies listeners. False on a version conflict.
  virtual bool write_row(const MembershipRow& row, std::int64_t expected_version) = 0;
  /// Refreshes i_am_alive and the load of `self` without bumping the version (no notification).
  virtual void heartbeat(const SiloAddress& self, std::int64_t now_ms, std::int64_t activations) = 0;
  /// Deletes rows of dead silos whose i_am_alive is older than `age`. Returns how many.
  virtual int cleanup_defunct(std::chrono::milliseconds age) = 0;
  /// Blocks up to `timeout` for a change notification from another silo; true when one arrived.
  /// Called from a separate thread than the other methods.
  virtual bool wait_for_change(std::chrono::milliseconds timeout) = 0;
  /// Where the table lives, for log lines ("PostgreSQL at host:port/db", "local").
  virtual std::string describe() const = 0;
};

std::unique_ptr<MembershipTable> make_local_table();
/// `dsn`: a libpq connection string; empty = the PG* environment.
std::unique_ptr<MembershipTable> make_postgres_table(const std::string& dsn, const std::string& cluster_id);

}  // namespace silo::cluster
