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
  /// True while this silo must run no grain turn: it was declared dead, or its membership lease ran out
  /// (its grains may be active elsewhere by now).
  virtual bool fenced() const { return false; }
  /// Routes a call made on `from`'s thread: to a local worker or to the silo that has (or gets) the grain.
  virtual void route(Shard& from, RequestPtr request) = 0;
  /// The directory's answer to a new activation.
  struct Registration {
    enum class Outcome { registered, elsewhere, unavailable } outcome = Outcome::registered;
    std::string holder;  // elsewhere: the silo that holds the grain
  };
  /// Registers a new local activation with the directory owner under the current membership view, waiting
  /// for a view in which that owner answers, at most until `deadline`. `done` runs on `shard`'s thread:
  /// only `registered` lets the activation start; `elsewhere` hands its calls to the holder;
  /// `unavailable` fails them with UNAVAILABLE (they did not run).
  virtual void register_activation(Shard& shard, const GrainClass& cls, const std::string& key,
                                   Clock::time_point deadline, std::function<void(Registration)> done) = 0;
  virtual void unregister_activation(const GrainClass& cls, const std::string& key) = 0;
  /// Sends `request` on to `silo` (the directory says the grain lives there).
  virtual void forward(Shard& from, RequestPtr request, const std::string& silo) = 0;
  /// This silo is shutting down: places `request` on another silo. False when there is none.
  virtual bool place_elsewhere(Shard& from, RequestPtr& request) = 0;
};

}  // namespace silo::runtime
