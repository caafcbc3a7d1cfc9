// The placement policies (silod/placement/), each a function over the sites that loaded the grain type.

#include <map>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "placement/placement.hpp"

namespace pl = silo::placement;

namespace {
std::vector<pl::Site> three_sites() {
  return {pl::Site{"127.0.0.1:1@1", 0, false}, pl::Site{"127.0.0.1:2@1", 0, true},
          pl::Site{"127.0.0.1:3@1", 0, false}};
}
}  // namespace

TEST_CASE("random placement picks every site, and only sites", "[placement]") {
  const auto sites = three_sites();
  pl::Rng rng(42);
  std::set<std::size_t> seen;
  for (int i = 0; i < 300; ++i) {
    const std::size_t s = pl::random(sites, rng);
    REQUIRE(s < sites.size());
    seen.insert(s);
  }
  CHECK(seen.size() == 3);
}

TEST_CASE("prefer_local picks the local site, none when it did not load the type", "[placement]") {
  auto sites = three_sites();
  CHECK(pl::prefer_local(sites) == std::optional<std::size_t>(1));
  sites.erase(sites.begin() + 1);
  CHECK(pl::prefer_local(sites) == std::nullopt);
}

TEST_CASE("hash placement is stable, spreads keys, and moves only a leaving site's keys", "[placement]") {
  auto sites = three_sites();
  auto reversed = std::vector<pl::Site>(sites.rbegin(), sites.rend());
  std::map<std::string, std::string> where;
  std::map<std::string, int> per_site;
  for (int i = 0; i < 300; ++i) {
    const std::string id = "t/k" + std::to_string(i);
    const std::string silo = sites[pl::hash(id, sites)].silo;
    CHECK(reversed[pl::hash(id, reversed)].silo == silo);  // independent of the order of the sites
    where[id] = silo;
    ++per_site[silo];
  }
  for (const auto& s : sites)
    CHECK(per_site[s.silo] > 50);  // 100 expected each
  const std::string gone = sites[0].silo;
  sites.erase(sites.begin());
  for (const auto& [id, silo] : where) {
    if (silo != gone) CHECK(sites[pl::hash(id, sites)].silo == silo);
  }
}

TEST_CASE("activation_count placement prefers the less loaded site", "[placement]") {
  const std::vector<pl::Site> sites{pl::Site{"a", 1000, false}, pl::Site{"b", 10, false}};
  pl::Rng rng(7);
  int light = 0;
  for (int i = 0; i < 1000; ++i)
    light += pl::activation_count(sites, rng) == 1 ? 1 : 0;
  // The heavy site wins only when both choices fall on it: 1/4 of the time.
  CHECK(light > 650);
  CHECK(light < 850);
}

TEST_CASE("stable_hash is the same on every build", "[placement]") {
  // Fixed values: the ring and hash placement must agree across silos of different builds.
  CHECK(pl::stable_hash("") == 16388411138889640531ull);
  CHECK(pl::stable_hash("127.0.0.1:1@1#0") == 7893820526113659316ull);
}
