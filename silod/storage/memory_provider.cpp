// The memory provider: state lives in this process and is lost on restart. For development and tests;
// it honours etags exactly like the postgres provider so grain code behaves the same on both.

#include <mutex>
#include <unordered_map>

#include "storage/provider.hpp"

namespace silo::storage {

namespace {

class MemoryProvider final : public Provider {
 public:
  void read(const StateKey& key, Completion done) override {
    Outcome out;
    {
      std::lock_guard lock(mutex_);
      if (auto it = records_.find(id(key)); it != records_.end()) {
        out.data = it->second.data;
        out.etag = it->second.etag;
        out.tombstone = it->second.tombstone;
      }
    }
    done(std::move(out));
  }

  void write(const StateKey& key, std::string data, std::uint64_t etag, Completion done) override {
    Outcome out;
    {
      std::lock_guard lock(mutex_);
      auto& record = records_[id(key)];
      if (record.etag != etag) {
        out = conflict(key, etag, record.etag);
      } else {
        record.data = std::move(data);
        record.etag = etag + 1;
        record.tombstone = false;
        out.etag = record.etag;
      }
    }
    done(std::move(out));
  }

  void clear(const StateKey& key, std::uint64_t etag, Completion done) override {
    Outcome out;
    {
      std::lock_guard lock(mutex_);
      auto it = records_.find(id(key));
      const std::uint64_t stored = it == records_.end() ? 0 : it->second.etag;
      if (stored != etag) {
        out = conflict(key, etag, stored);
      } else if (stored != 0) {
        // A tombstone, never an erase: the version must not start over (see provider.hpp).
        it->second.data.clear();
        it->second.etag = etag + 1;
        it->second.tombstone = true;
        out.etag = it->second.etag;
      }
    }
    done(std::move(out));
  }

 private:
  struct Record {
    std::string data;
    std::uint64_t etag = 0;
    bool tombstone = false;
  };
  static std::string id(const StateKey& k) { return k.grain_type + '\0' + k.grain_key + '\0' + k.state_name; }
  static Outcome conflict(const StateKey& k, std::uint64_t expected, std::uint64_t stored) {
    Outcome o;
    o.code = StatusCode::aborted;
    o.error = "inconsistent state: " + k.grain_type + "/" + k.grain_key + " state '" + k.state_name +
              "' is at version " + std::to_string(stored) + ", this activation read version " +
              std::to_string(expected);
    return o;
  }

  std::mutex mutex_;
  std::unordered_map<std::string, Record> records_;
};

}  // namespace

std::unique_ptr<Provider> make_memory_provider() {
  return std::make_unique<MemoryProvider>();
}

}  // namespace silo::storage
