// The directory partition's rules, without a cluster: view versions, recovery after a view change, ranges
// an owner no longer owns, activation identities, and holders that are shutting down or dead.

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "cluster/directory.hpp"

using silo::cluster::ActivationRef;
using silo::cluster::Directory;
using silo::cluster::SiloAddress;
using Result = Directory::Result;

namespace {

const SiloAddress A{"127.0.0.1", 1001, 1};
const SiloAddress B{"127.0.0.1", 1002, 1};
const SiloAddress C{"127.0.0.1", 1003, 1};

// A view in which `live` silos are all live and `active` ones own ranges, every silo already re-registered.
void view(Directory& d, std::int64_t version, const std::vector<SiloAddress>& active,
          const std::vector<SiloAddress>& live) {
  REQUIRE(d.update(version, active, live));
  for (const auto& s : live)
    d.recovered(s.str(), version);
  REQUIRE_FALSE(d.recovering());
}

// The first grain id that `d` owns under its current view and that `pred` accepts.
template <class Pred>
std::string id_where(Pred pred) {
  for (int i = 0; i < 10000; ++i) {
    const std::string id = "t/" + std::to_string(i);
    if (pred(id)) return id;
  }
  FAIL("no such grain id");
  return {};
}

}  // namespace

TEST_CASE("an owner forgets ids it no longer owns, so a returning range does not answer from old entries",
          "[directory]") {
  Directory a(A);
  Directory probe(A);  // the same ring from the outside, to pick an id that moves to C and back
  view(a, 1, {A, B}, {A, B});
  view(probe, 2, {A, B, C}, {A, B, C});
  const std::string id =
      id_where([&](const std::string& id) { return a.owner(id) == A && probe.owner(id) == C; });
  const ActivationRef on_b{B.str(), 7};
  REQUIRE(a.register_local(id, on_b, 1, false).holder == on_b);

  view(a, 2, {A, B, C}, {A, B, C});  // C joins: the range moves to C
  view(a, 3, {A, B}, {A, B});        // C leaves: it comes back to A
  // The grain may have moved meanwhile (registered with C); A must not answer with what it held at view 1.
  CHECK(a.lookup_local(id).empty());
  CHECK(a.partition_size() == 0);
}

TEST_CASE("a late unregister of an older activation keeps the newer one's entry", "[directory]") {
  Directory a(A);
  view(a, 1, {A, B}, {A, B});
  const std::string id = id_where([&](const std::string& id) { return a.owner(id) == A; });
  const ActivationRef old_one{B.str(), 1};
  const ActivationRef new_one{B.str(), 2};
  REQUIRE(a.register_local(id, old_one, 1, false).holder == old_one);
  // B deactivated the old one and started a new one; the new registration overtook the unregister.
  REQUIRE(a.register_local(id, new_one, 1, false).holder == new_one);
  a.unregister_local(id, old_one);
  CHECK(a.lookup_local(id) == new_one);
  a.unregister_local(id, new_one);
  CHECK(a.lookup_local(id).empty());
}

TEST_CASE("registrations are confirmed only under the owner's view, after every live silo re-registered",
          "[directory]") {
  Directory a(A);
  view(a, 1, {A, B}, {A, B});
  const std::string id = id_where([&](const std::string& id) { return a.owner(id) == A; });
  const ActivationRef on_b{B.str(), 1};
  const ActivationRef on_c{C.str(), 1};
  CHECK(a.register_local(id, on_b, 0, false).result == Result::stale_view);
  CHECK(a.register_local(id, on_b, 2, false).result == Result::stale_view);

  REQUIRE(a.update(2, {A, B}, {A, B, C}));  // C now live (shutting down, say): it may hold grains
  CHECK(a.recovering());
  CHECK(a.register_local(id, on_b, 2, false).result == Result::recovering);
  a.recovered(A.str(), 2);
  a.recovered(B.str(), 2);
  CHECK(a.recovering());
  // C's re-registration is accepted during recovery and wins over later first registrations.
  CHECK(a.register_local(id, on_c, 2, true).holder == on_c);
  a.recovered(C.str(), 2);
  CHECK_FALSE(a.recovering());
  const auto r = a.register_local(id, on_b, 2, false);
  CHECK(r.result == Result::ok);
  CHECK(r.holder == on_c);
}

TEST_CASE("a shutting-down holder keeps its grains, a dead one gives them up", "[directory]") {
  Directory a(A);
  view(a, 1, {A, B, C}, {A, B, C});
  const std::string id = id_where([&](const std::string& id) { return a.owner(id) == A; });
  const ActivationRef on_b{B.str(), 1};
  const ActivationRef on_c{C.str(), 1};
  REQUIRE(a.register_local(id, on_b, 1, false).holder == on_b);
  // B shuts down: no longer active (owns no range, gets no new grains) but live until its grains are gone.
  view(a, 2, {A, C}, {A, B, C});
  CHECK(a.lookup_local(id) == on_b);
  CHECK(a.register_local(id, on_c, 2, false).holder == on_b);
  // B is dead: its entry goes, and the grain may start elsewhere.
  view(a, 3, {A, C}, {A, C});
  CHECK(a.lookup_local(id).empty());
  CHECK(a.register_local(id, on_c, 3, false).holder == on_c);
}

TEST_CASE("the same view version twice changes nothing", "[directory]") {
  Directory a(A);
  view(a, 4, {A, B}, {A, B});
  CHECK_FALSE(a.update(4, {A}, {A}));
  CHECK(a.clustered());
  CHECK(a.version() == 4);
}

TEST_CASE("the next version with the same silos needs no recovery, a skipped version does", "[directory]") {
  Directory a(A);
  view(a, 1, {A, B}, {A, B});
  REQUIRE(a.update(2, {A, B}, {A, B}));  // a suspicion vote: nothing moved
  CHECK_FALSE(a.recovering());
  REQUIRE(a.update(4, {A, B}, {A, B}));  // version 3 unseen: a silo may have come and gone in it
  CHECK(a.recovering());
  a.recovered(A.str(), 4);
  a.recovered(B.str(), 4);
  CHECK_FALSE(a.recovering());
  REQUIRE(a.update(5, {A, B}, {A, B, C}));  // C live now: it may hold grains
  CHECK(a.recovering());
}
