#include "cluster/grain_locator.hpp"

#include <chrono>

#include <boost/asio/post.hpp>

namespace silo::cluster {

namespace in = silo::internal;

namespace {
constexpr auto lookup_timeout = std::chrono::seconds(2);

std::string grain_id_of(const std::string& type, const std::string& key) {
  return type + "/" + key;
}
}  // namespace

GrainLocator::GrainLocator(Directory& directory, messaging::Messenger& messenger, SiloAddress self,
                           Place place)
    : directory_(directory), messenger_(messenger), self_(std::move(self)), place_(std::move(place)) {}

SiloAddress GrainLocator::place_and_remember(const std::string& id, const std::string& type,
                                             const std::string& key) {
  SiloAddress target = place_(type, key);
  // Remember the decision at once: concurrent first calls must follow it rather than place the grain again
  // (the nearest silo would win every such race). Forwarding corrects it if another silo won.
  directory_.cache(id, target);
  return target;
}

std::optional<SiloAddress> GrainLocator::locate_now(const std::string& type, const std::string& key) {
  const std::string id = grain_id_of(type, key);
  if (auto cached = directory_.cached(id)) return cached;
  const SiloAddress owner = directory_.owner(id);
  if (!owner.empty() && !(owner == self_)) return std::nullopt;
  const ActivationRef holder = directory_.lookup_local(id);
  SiloAddress target;
  if (!holder.empty() && parse_silo_address(holder.silo, target)) {
    directory_.cache(id, target);
    return target;
  }
  return place_and_remember(id, type, key);
}

void GrainLocator::locate_remote(const std::string& type, const std::string& key, boost::asio::io_context& io,
                                 std::function<void(SiloAddress)> done) {
  std::string id = grain_id_of(type, key);
  in::DirectoryRequest lookup;
  lookup.set_op(in::DirectoryRequest::LOOKUP);
  lookup.add_grain_ids(id);
  messenger_.directory(
      directory_.owner(id), std::move(lookup), lookup_timeout,
      [this, &io, id, type, key, done = std::move(done)](bool ok, in::DirectoryReply reply) mutable {
        boost::asio::post(io, [this, id = std::move(id), type = std::move(type), key = std::move(key),
                               done = std::move(done), ok, reply = std::move(reply)] {
          SiloAddress target;
          if (ok && reply.silos_size() > 0 && parse_silo_address(reply.silos(0), target)) {
            directory_.cache(id, target);
          } else if (auto decided = directory_.cached(id)) {
            target = *decided;  // a concurrent call placed it meanwhile
          } else {
            target = place_and_remember(id, type, key);
          }
          done(target);
        });
      });
}

}  // namespace silo::cluster
