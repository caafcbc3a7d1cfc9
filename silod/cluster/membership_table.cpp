// Status and address text forms, and the in-memory (single-process) membership table.

#include "cluster/membership_table.hpp"

#include <charconv>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string_view>
#include <tuple>

namespace silo::cluster {

const char* to_string(SiloStatus s) noexcept {
  switch (s) {
    case SiloStatus::joining:
      return "joining";
    case SiloStatus::active:
      return "active";
    case SiloStatus::shutting_down:
      return "shutting_down";
    case SiloStatus::dead:
      return "dead";
  }
  return "unknown";
}

bool parse_status(const std::string& text, SiloStatus& out) {
  for (SiloStatus s :
       {SiloStatus::joining, SiloStatus::active, SiloStatus::shutting_down, SiloStatus::dead}) {
    if (text == to_string(s)) {
      out = s;
      return true;
    }
  }
  return false;
}

namespace {

template <class T>
bool parse_int(std::string_view text, T& out) {
  if (text.empty() || text.front() == '+') return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

}  // namespace

bool parse_silo_address(const std::string& text, SiloAddress& out) {
  auto at = text.rfind('@');
  if (at == std::string::npos) return false;
  std::string_view endpoint = std::string_view(text).substr(0, at);
  std::string_view host;
  std::string_view port;
  if (!endpoint.empty() && endpoint.front() == '[') {
    // "[v6]:port", the form config::Endpoint::str() and operators write.
    auto close = endpoint.find(']');
    if (close == std::string_view::npos || close + 1 >= endpoint.size() || endpoint[close + 1] != ':')
      return false;
    host = endpoint.substr(1, close - 1);
    port = endpoint.substr(close + 2);
  } else {
    // The last colon separates the port, so the bare "::1:11111" that SiloAddress::str() produces for an
    // IPv6 host parses back to the same address.
    auto colon = endpoint.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = endpoint.substr(0, colon);
    port = endpoint.substr(colon + 1);
  }
  std::uint16_t p = 0;
  std::int64_t generation = 0;
  if (host.empty() || !parse_int(port, p) || p == 0) return false;
  if (!parse_int(std::string_view(text).substr(at + 1), generation)) return false;
  out = SiloAddress{std::string(host), p, generation};
  return true;
}

namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One process, one table: what `provider: local` uses for a single-silo cluster and what tests use as the
// reference for the postgres table's semantics.
class LocalTable final : public MembershipTable {
 public:
  void init() override {}

  MembershipSnapshot read_all() override {
    std::lock_guard lock(mutex_);
    MembershipSnapshot snap;
    snap.version = version_;
    snap.rows.reserve(rows_.size());
    for (const auto& [key, row] : rows_)
      snap.rows.push_back(row);
    return snap;
  }

  bool write_row(const MembershipRow& row, std::int64_t expected_version) override {
    {
      std::lock_guard lock(mutex_);
      if (expected_version != version_) return false;
      rows_[key_of(row.address)] = row;
      ++version_;
      ++changes_;
    }
    changed_.notify_all();
    return true;
  }

  void heartbeat(const SiloAddress& self, std::int64_t now_ms, std::int64_t activations) override {
    std::lock_guard lock(mutex_);
    auto it = rows_.find(key_of(self));
    if (it == rows_.end()) return;
    it->second.i_am_alive_ms = now_ms;
    it->second.activations = activations;
  }

  int cleanup_defunct(std::chrono::milliseconds age) override {
    const std::int64_t cutoff = unix_ms_now() - age.count();
    int deleted = 0;
    {
      std::lock_guard lock(mutex_);
      for (auto it = rows_.begin(); it != rows_.end();) {
        if (it->second.status == SiloStatus::dead && it->second.i_am_alive_ms < cutoff) {
          it = rows_.erase(it);
          ++deleted;
        } else {
          ++it;
        }
      }
      if (deleted == 0) return 0;
      ++version_;
      ++changes_;
    }
    changed_.notify_all();
    return deleted;
  }

  bool wait_for_change(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    bool changed = changed_.wait_for(lock, timeout, [&] { return changes_ != seen_; });
    seen_ = changes_;
    return changed;
  }

  std::string describe() const override { return "local"; }

 private:
  // Same order as the postgres table's ORDER BY (host bytes, port, generation).
  using Key = std::tuple<std::string, std::uint16_t, std::int64_t>;
  static Key key_of(const SiloAddress& a) { return {a.host, a.port, a.generation}; }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<Key, MembershipRow> rows_;
  std::int64_t version_ = 0;
  std::uint64_t changes_ = 0;  // writes so far; wait_for_change compares it with what it last saw
  std::uint64_t seen_ = 0;
};

}  // namespace

std::unique_ptr<MembershipTable> make_local_table() {
  return std::make_unique<LocalTable>();
}

}  // namespace silo::cluster
