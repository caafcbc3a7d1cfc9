#pragma once
// Where a call to a grain goes, in one direction: the location cache, else the directory owner's entry
// (local partition or one LOOKUP rpc), else a new placement. Every answer is a hint: the silo that receives
// the call registers the grain before activating it, and forwards the call if another silo holds it.

#include <functional>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>

#include "cluster/directory.hpp"
#include "messaging/messenger.hpp"

namespace silo::cluster {

class GrainLocator {
 public:
  /// Picks a silo for a grain nobody holds (the router's placement).
  using Place = std::function<SiloAddress(const std::string& type, const std::string& key)>;

  GrainLocator(Directory& directory, messaging::Messenger& messenger, SiloAddress self, Place place);

  /// The target when no rpc is needed (cached, or this silo owns the id's entry); none otherwise.
  std::optional<SiloAddress> locate_now(const std::string& type, const std::string& key);
  /// Asks the id's owner; `done(target)` runs on `io`.
  void locate_remote(const std::string& type, const std::string& key, boost::asio::io_context& io,
                     std::function<void(SiloAddress)> done);

 private:
  SiloAddress place_and_remember(const std::string& id, const std::string& type, const std::string& key);

  Directory& directory_;
  messaging::Messenger& messenger_;
  SiloAddress self_;
  Place place_;
};

}  // namespace silo::cluster
