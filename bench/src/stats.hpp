#pragma once
// Latency histograms and result lines shared by the benchmark programs and the pingpong plugin.
// A histogram has 32 linear sub-buckets per power of two (<= 3% error), so recording is a few instructions
// and per-thread histograms merge by adding counts. Every program prints one JSON object per measurement
// on stdout; bench/run.sh collects them.

#include <sys/resource.h>

#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

class Histogram {
 public:
  static constexpr unsigned sub_bits = 5;
  static constexpr unsigned sub = 1u << sub_bits;
  static constexpr unsigned buckets = (64 - sub_bits + 1) * sub;

  static unsigned index_of(std::uint64_t ns) noexcept {
    if (ns < sub) return static_cast<unsigned>(ns);
    const unsigned msb = static_cast<unsigned>(std::bit_width(ns)) - 1;
    return (msb - sub_bits + 1) * sub + static_cast<unsigned>((ns >> (msb - sub_bits)) & (sub - 1));
  }
  // The middle of bucket `i`, in ns.
  static double value_of(unsigned i) noexcept {
    if (i < sub) return i;
    const unsigned msb = i / sub + sub_bits - 1;
    const double lo =
        double(std::uint64_t(1) << msb) + double(i % sub) * double(std::uint64_t(1) << (msb - sub_bits));
    return lo + double(std::uint64_t(1) << (msb - sub_bits)) / 2;
  }

  Histogram() : counts_(buckets, 0) {}
  void record(std::uint64_t ns) noexcept {
    ++counts_[index_of(ns)];
    ++total_;
  }
  void record(Clock::time_point start, Clock::time_point end) noexcept {
    record(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count()));
  }
  void add(unsigned index, std::uint64_t count) noexcept {
    if (index >= buckets) return;
    counts_[index] += count;
    total_ += count;
  }
  void merge(const Histogram& o) noexcept {
    for (unsigned i = 0; i < buckets; ++i)
      counts_[i] += o.counts_[i];
    total_ += o.total_;
  }
  std::uint64_t total() const noexcept { return total_; }
  std::uint64_t count(unsigned i) const noexcept { return counts_[i]; }
  /// The q-quantile in microseconds (0 when empty).
  double quantile_us(double q) const noexcept {
    if (total_ == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(q * double(total_ - 1)) + 1;
    std::uint64_t seen = 0;
    for (unsigned i = 0; i < buckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return value_of(i) / 1000.0;
    }
    return value_of(buckets - 1) / 1000.0;
  }

 private:
  std::vector<std::uint64_t> counts_;
  std::uint64_t total_ = 0;
};

/// One measurement: `ops` operations in `seconds`, with latencies when the histogram has any.
inline void print_result(const std::string& name, std::uint64_t ops, double seconds, const Histogram* h,
                         const std::string& extra = {}) {
  std::printf("{\"name\":\"%s\",\"ops\":%llu,\"seconds\":%.4f,\"rate\":%.1f", name.c_str(),
              static_cast<unsigned long long>(ops), seconds, seconds > 0 ? double(ops) / seconds : 0.0);
  if (h && h->total() > 0)
    std::printf(",\"p50_us\":%.2f,\"p99_us\":%.2f", h->quantile_us(0.50), h->quantile_us(0.99));
  if (!extra.empty()) std::printf(",%s", extra.c_str());
  std::printf("}\n");
  std::fflush(stdout);
}

/// User + system CPU time of this process so far: on a noisy machine CPU per operation moves less than
/// wall-clock rates do.
inline double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

inline std::string cpu_field(double cpu_s, std::uint64_t ops) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "\"cpu_us_per_op\":%.3f", ops ? cpu_s * 1e6 / double(ops) : 0.0);
  return buf;
}

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace bench
