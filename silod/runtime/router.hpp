#pragma once
// What the runtime asks of the cluster layer (cluster/router.*). Without a router, or while this silo is
// the only active one, every call is local and none of this runs.

#include <functional>
#include <string>

#include "runtime/message.hpp"

namespace silo::runtime {

class Shard;

class Router {
 public:
  virtual ~Router() = default;
  /// True while calls may have to leave this silo (more than one active silo).
  virtual bool clustered() const = 0;
  /// Routes a call made on `from`'s thread: to a local worker or to the silo that has (or gets) the grain.
  virtual void route(Shard& from, RequestPtr request) = 0;
  /// Registers a new local activation in the directory. `done(holder)` runs on `shard`'s thread; holder is
  /// empty when this silo won, else the silo that holds the grain (the activation must not start).
  virtual void register_activation(Shard& shard, const GrainClass& cls, const std::string& key,
                                   std::function<void(std::string holder)> done) = 0;
  virtual void unregister_activation(const GrainClass& cls, const std::string& key) = 0;
  /// Sends `request` on to `silo` (the directory says the grain lives there).
  virtual void forward(Shard& from, RequestPtr request, const std::string& silo) = 0;
  /// This silo is shutting down: places `request` on another silo. False when there is none.
  virtual bool place_elsewhere(Shard& from, RequestPtr& request) = 0;
};

}  // namespace silo::runtime
