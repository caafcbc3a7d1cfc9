// cluster::Lease, the "may this silo serve?" predicate, driven with explicit probe timestamps.

#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "cluster/lease.hpp"

using namespace std::chrono_literals;
using silo::cluster::Lease;

namespace {

std::int64_t unix_ms_ago(std::chrono::milliseconds ago) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             (std::chrono::system_clock::now() - ago).time_since_epoch())
      .count();
}

}  // namespace

TEST_CASE("a silo nobody probes is never fenced by its lease, only by death", "[lease]") {
  Lease lease(50ms);
  std::this_thread::sleep_for(80ms);
  CHECK_FALSE(lease.fenced());
  CHECK(lease.why().empty());
  lease.declare_dead();
  CHECK(lease.fenced());
  CHECK(lease.why() == "this silo was declared dead");
}

TEST_CASE("the lease ends when as many probers as a death needs fell silent", "[lease]") {
  // Generous times: a loaded test machine may stall a thread for a while between two lines.
  Lease lease(1000ms);
  lease.set_probers({"a", "b", "c"}, 2);
  CHECK_FALSE(lease.fenced());  // new probers start with a full lease
  std::this_thread::sleep_for(1500ms);
  CHECK(lease.fenced());
  lease.heard_from("a", unix_ms_ago(0ms));
  CHECK(lease.fenced());  // b and c are still silent: 2 of the 2 needed
  lease.heard_from("b", unix_ms_ago(0ms));
  CHECK_FALSE(lease.fenced());  // only c silent
  CHECK(lease.why().empty());

  SECTION("a probe counts from when it was sent: one that waited in a frozen silo's socket renews nothing") {
    Lease frozen(1000ms);
    frozen.set_probers({"a"}, 1);
    std::this_thread::sleep_for(1500ms);
    frozen.heard_from("a", unix_ms_ago(3000ms));
    CHECK(frozen.fenced());
    CHECK(frozen.why().find("1 of the silos that probe it") != std::string::npos);
    frozen.heard_from("a", unix_ms_ago(10ms));
    CHECK_FALSE(frozen.fenced());
  }
  SECTION("a probe from a silo that is not a prober changes nothing") {
    std::this_thread::sleep_for(1500ms);
    lease.heard_from("z", unix_ms_ago(0ms));
    CHECK(lease.fenced());
  }
  SECTION("a new view keeps what was heard from probers that stay") {
    lease.set_probers({"a", "b"}, 1);
    CHECK_FALSE(lease.fenced());
    std::this_thread::sleep_for(1500ms);
    CHECK(lease.fenced());
  }
}
