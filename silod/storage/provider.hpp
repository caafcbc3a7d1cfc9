#pragma once
// Storage providers keep grain state: one record per (grain type, grain key, state name) with a version
// (the etag). Providers complete on their own threads; the runtime hops back to the grain's worker.
//
// Versions only grow: clear() does not delete the record but leaves a tombstone (no data) one version up,
// so an etag from before the clear can never match again (a deleted record would restart at version 1,
// and a stale writer holding etag 1 could overwrite newer state). Orleans' ADO.NET storage does the same.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <silo/error.hpp>

#include "config/config.hpp"

namespace silo::storage {

struct StateKey {
  std::string grain_type;
  std::string grain_key;
  std::string state_name;
};

/// The outcome of a storage operation: ok, or a status code and message.
/// Codes: aborted = etag conflict (inconsistent state), unavailable = store unreachable, internal = bug.
struct Outcome {
  StatusCode code = StatusCode::ok;
  std::string error;
  std::string data;        // read: the stored bytes
  std::uint64_t etag = 0;  // read: the stored version (0: none); write, clear: the new version
  bool tombstone = false;  // read: the record was cleared (no data; etag is the tombstone's version)
  bool ok() const noexcept { return code == StatusCode::ok; }
};

using Completion = std::function<void(Outcome)>;

class Provider {
 public:
  virtual ~Provider() = default;
  virtual void start() {}
  virtual void stop() {}
  /// `done` may run on any thread, possibly before read() returns.
  virtual void read(const StateKey& key, Completion done) = 0;
  /// Stores `data` if the stored version is `etag` (0: no record at all, not even a tombstone); the new
  /// version is etag+1.
  virtual void write(const StateKey& key, std::string data, std::uint64_t etag, Completion done) = 0;
  /// Replaces the record by a tombstone at version etag+1 if its version is `etag`; with etag 0 and no
  /// record, nothing happens (outcome etag 0).
  virtual void clear(const StateKey& key, std::uint64_t etag, Completion done) = 0;
};

/// The providers of `storage:` by name; "default" always exists.
class Registry {
 public:
  /// Builds every configured provider (postgres providers connect in start()).
  explicit Registry(const std::map<std::string, config::StorageProviderConfig>& cfg,
                    const std::string& cluster_id);
  Provider* find(const std::string& name) const;
  void start();
  void stop();
  std::string names() const;  // for error messages

 private:
  std::map<std::string, std::unique_ptr<Provider>> providers_;
};

std::unique_ptr<Provider> make_memory_provider();
/// Defined in postgres_provider.cpp.
std::unique_ptr<Provider> make_postgres_provider(const config::StorageProviderConfig& cfg,
                                                 const std::string& cluster_id, const std::string& name);

}  // namespace silo::storage
