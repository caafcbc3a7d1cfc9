#include "cluster/router.hpp"

#include <algorithm>
#include <random>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <silo/asio.hpp>

#include "cluster/lease.hpp"
#include "messaging/envelope_codec.hpp"
#include "runtime/runtime.hpp"
#include "runtime/shard.hpp"

namespace silo::cluster {

namespace asio = boost::asio;
namespace in = silo::internal;
using runtime::Clock;
using runtime::Reply;
using runtime::Request;
using runtime::RequestPtr;

namespace {

constexpr std::uint32_t max_hops = 3;
constexpr auto directory_timeout = std::chrono::seconds(2);

thread_local placement::Rng rng{std::random_device{}()};

// The reply to a request from another silo goes back on the stream it came on.
class EnvelopeSink final : public runtime::ReplySink {
 public:
  EnvelopeSink(std::shared_ptr<messaging::ResponseSink> sink, std::string self)
      : sink_(std::move(sink)), self_(std::move(self)) {}
  void reply(const Request& request, Reply reply) override {
    sink_->send(messaging::encode_reply(request, std::move(reply), self_));
  }

 private:
  std::shared_ptr<messaging::ResponseSink> sink_;
  std::string self_;
};

}  // namespace

std::string grain_id(const runtime::GrainClass& cls, const std::string& key) {
  std::string id(cls.name());
  id += '/';
  id += key;
  return id;
}

ClusterRouter::ClusterRouter(const config::Config& cfg, runtime::Runtime& rt, messaging::Messenger& messenger,
                             SiloAddress self)
    : cfg_(cfg),
      rt_(rt),
      messenger_(messenger),
      self_(self),
      directory_(self),
      locator_(directory_, messenger_, self, [this](const std::string& type, const std::string& key) {
        SiloAddress target;
        const runtime::GrainClass* cls = rt_.find_class(type);
        if (!cls || !place(*cls, key, false, target)) target = self_;
        return target;
      }) {}

ClusterRouter::~ClusterRouter() = default;

messaging::Handlers ClusterRouter::handlers() {
  messaging::Handlers h;
  h.on_request = [this](in::Envelope env, std::shared_ptr<messaging::ResponseSink> sink) {
    on_request(std::move(env), std::move(sink));
  };
  h.on_response = [this](in::Envelope env) { on_response(std::move(env)); };
  h.refuse_sender = [this](const std::string& sender) { return refuse_sender(sender); };
  h.on_directory = [this](const in::DirectoryRequest& r) { return directory_.handle(r); };
  h.activations = [this] { return static_cast<std::int64_t>(rt_.activation_count()); };
  return h;
}

void ClusterRouter::on_view(const MembershipSnapshot& view) {
  std::vector<SiloAddress> active;
  std::vector<SiloAddress> live;  // may hold activations: active, or shutting down and draining them
  std::vector<Candidate> candidates;
  for (const auto& row : view.rows) {
    if (row.status == SiloStatus::shutting_down) live.push_back(row.address);
    if (row.status != SiloStatus::active) continue;
    active.push_back(row.address);
    live.push_back(row.address);
    candidates.push_back(Candidate{row.address, row.grain_types, row.activations});
  }
  std::vector<std::string> members;
  for (const auto& a : active)
    members.push_back(a.str());
  std::sort(members.begin(), members.end());
  std::vector<std::pair<SiloAddress, bool>> newly_dead;  // (silo, left gracefully)
  {
    std::lock_guard lock(mutex_);
    candidates_ = std::move(candidates);
    ring_members_ = members;
    std::unordered_map<std::string, SiloStatus> statuses;
    for (const auto& row : view.rows) {
      const std::string id = row.address.str();
      statuses[id] = row.status;
      auto before = last_status_.find(id);
      if (row.status == SiloStatus::dead && before != last_status_.end() &&
          before->second != SiloStatus::dead) {
        // Graceful: it announced shutting_down, or wrote itself dead without any silo voting against it
        // (a peer may miss the short shutting_down phase between two reads of the table).
        newly_dead.emplace_back(row.address,
                                before->second == SiloStatus::shutting_down || row.suspicions.empty());
      }
    }
    last_status_ = std::move(statuses);
    // Senders whose requests must not run here (refuse_sender): silos the others voted dead (a frozen one
    // may resume and send), and generations superseded by a newer one on their address. A silo that wrote
    // itself dead on a graceful leave (no votes) may still relay the last calls of its drain.
    newest_generation_.clear();
    for (const auto& row : view.rows) {
      auto& g = newest_generation_[row.address.endpoint()];
      g = std::max(g, row.address.generation);
    }
    refused_senders_.clear();
    for (const auto& row : view.rows) {
      if (newest_generation_[row.address.endpoint()] > row.address.generation)
        refused_senders_[row.address.str()] = "a newer generation of its address is in the membership";
      else if (row.status == SiloStatus::dead && !row.suspicions.empty())
        refused_senders_[row.address.str()] = "it was declared dead";
    }
  }
  // Every silo sees every view (loads change with each heartbeat); the directory acts on new versions.
  const bool changed = directory_.update(view.version, active, live);
  for (const auto& [silo, graceful] : newly_dead) {
    // A silo that left gracefully still answers what it was asked: drain, don't cancel.
    if (graceful)
      messenger_.peer_left(silo);
    else
      messenger_.peer_dead(silo);
  }
  if (changed) reregister(view.version, active);
}

ActivationRef ClusterRouter::identity(const std::string& id, bool fresh) {
  std::lock_guard lock(ids_mutex_);
  auto [it, inserted] = local_ids_.try_emplace(id, 0);
  if (inserted || fresh) it->second = next_activation_++;
  return ActivationRef{self_.str(), it->second};
}

void ClusterRouter::forget(const std::string& id, std::uint64_t activation) {
  std::lock_guard lock(ids_mutex_);
  auto it = local_ids_.find(id);
  if (it != local_ids_.end() && it->second == activation) local_ids_.erase(it);
}

void ClusterRouter::reregister(std::int64_t version, const std::vector<SiloAddress>& active) {
  // A new view: every owner forgot what it no longer owns and waits until each live silo has told it which
  // of its ids live here (possibly none), so each owner gets one batch, empty or not.
  using Grains = std::vector<std::pair<const runtime::GrainClass*, std::string>>;
  std::unordered_map<std::string, std::shared_ptr<in::DirectoryRequest>> by_owner;
  std::unordered_map<std::string, std::shared_ptr<Grains>> grains_by_owner;
  for (const auto& a : active) {
    if (a == self_) continue;
    auto req = std::make_shared<in::DirectoryRequest>();
    req->set_op(in::DirectoryRequest::REGISTER);
    req->set_view(version);
    req->set_recovery(true);
    req->set_from(self_.str());
    by_owner[a.str()] = req;
    grains_by_owner[a.str()] = std::make_shared<Grains>();
  }
  for (const auto& [cls, key] : rt_.local_activations()) {
    const std::string id = grain_id(*cls, key);
    const SiloAddress owner = directory_.owner(id);
    if (owner.empty()) continue;
    const ActivationRef me = identity(id, false);
    if (owner == self_) {
      const auto r = directory_.register_local(id, me, version, true);
      if (r.result == Directory::Result::ok && !(r.holder == me)) lose(*cls, key, r.holder.silo);
      continue;
    }
    auto it = by_owner.find(owner.str());
    if (it == by_owner.end()) continue;
    it->second->add_grain_ids(id);
    it->second->add_silos(me.silo);
    it->second->add_activations(me.activation);
    grains_by_owner[owner.str()]->emplace_back(cls, key);
  }
  directory_.recovered(self_.str(), version);
  for (const auto& a : active) {
    if (a == self_) continue;
    if (by_owner[a.str()]->grain_ids_size() > 0) {
      spdlog::info("directory: re-registering {} activations with silo {} (view {})",
                   by_owner[a.str()]->grain_ids_size(), a.str(), version);
    }
    send_recovery(a, by_owner[a.str()], grains_by_owner[a.str()]);
  }
}

void ClusterRouter::send_recovery(
    SiloAddress owner, std::shared_ptr<in::DirectoryRequest> request,
    std::shared_ptr<std::vector<std::pair<const runtime::GrainClass*, std::string>>> grains) {
  if (directory_.version() != request->view()) return;  // a newer view re-registers everything again
  messenger_.directory(
      owner, *request, directory_timeout, [this, owner, request, grains](bool ok, in::DirectoryReply r) {
        if (ok && r.status() == in::DirectoryReply::OK) {
          for (int i = 0; i < r.silos_size() && i < static_cast<int>(grains->size()); ++i) {
            if (r.silos(i) != self_.str()) lose(*(*grains)[i].first, (*grains)[i].second, r.silos(i));
          }
          return;
        }
        // The owner is behind (or ahead) of our view, or unreachable: it cannot serve new registrations until
        // it has this batch, so keep trying while this view lasts.
        auto timer = std::make_shared<asio::steady_timer>(rt_.shard(0).io(), std::chrono::milliseconds(50));
        timer->async_wait([this, timer, owner, request, grains](boost::system::error_code ec) {
          if (!ec) send_recovery(owner, request, grains);
        });
      });
}

bool ClusterRouter::fenced() const {
  const Lease* lease = messenger_.lease();
  return lease && lease->fenced();
}

void ClusterRouter::lose(const runtime::GrainClass& cls, const std::string& key, const std::string& holder) {
  spdlog::warn("directory: {}/{} is held by silo {}; deactivating the copy here", cls.name(), key, holder);
  runtime::Shard& shard = rt_.shard_for(cls, key);
  asio::post(shard.io(), [&shard, &cls, key] { shard.lose(cls, key); });
}

bool ClusterRouter::place(const runtime::GrainClass& cls, const std::string& key, bool exclude_self,
                          SiloAddress& out) {
  std::vector<const Candidate*> fit;
  std::lock_guard lock(mutex_);
  for (const auto& c : candidates_) {
    if (exclude_self && c.address == self_) continue;
    if (std::find(c.grain_types.begin(), c.grain_types.end(), cls.name()) == c.grain_types.end()) continue;
    fit.push_back(&c);
  }
  if (fit.empty()) {
    if (exclude_self) return false;
    out = self_;  // nobody else can run it: here
    return true;
  }
  if (cls.info->placement_director && *cls.info->placement_director) {
    if (PlacementDirector director = rt_.find_director(cls.info->placement_director)) {
      std::vector<std::string> names;
      names.reserve(fit.size());
      for (const auto* c : fit)
        names.push_back(c->address.str());
      std::vector<PlacementCandidate> candidates;
      for (std::size_t i = 0; i < fit.size(); ++i) {
        candidates.push_back(PlacementCandidate{names[i], fit[i]->activations, fit[i]->address == self_});
      }
      const std::size_t chosen = director(cls.name(), key, candidates);
      if (chosen < fit.size()) {
        out = fit[chosen]->address;
        return true;
      }
    }
  }
  std::vector<placement::Site> sites;
  sites.reserve(fit.size());
  for (const auto* c : fit)
    sites.push_back(placement::Site{c->address.str(), c->activations, c->address == self_});
  switch (cls.placement) {
    case Placement::prefer_local:
      if (!exclude_self) {
        if (auto i = placement::prefer_local(sites)) return (out = fit[*i]->address), true;
      }
      break;
    case Placement::hash:
      out = fit[placement::hash(grain_id(cls, key), sites)]->address;
      return true;
    case Placement::activation_count:
      out = fit[placement::activation_count(sites, rng)]->address;
      return true;
    case Placement::stateless_worker:
      out = self_;
      return true;
    default:
      break;
  }
  out = fit[placement::random(sites, rng)]->address;
  return true;
}

void ClusterRouter::route(runtime::Shard& from, RequestPtr request) {
  const std::string type(request->cls->name());
  if (auto target = locator_.locate_now(type, request->key))
    return send_to(from, std::move(request), *target);
  const std::string key = request->key;
  auto held = std::make_shared<RequestPtr>(std::move(request));
  locator_.locate_remote(type, key, from.io(), [this, &from, held](SiloAddress target) {
    send_to(from, std::move(*held), target);
  });
}

void ClusterRouter::send_to(runtime::Shard& from, RequestPtr request, const SiloAddress& target) {
  if (target == self_ || target.empty()) {
    runtime::Shard& shard = rt_.shard_for(*request->cls, request->key);
    asio::post(shard.io(), [&shard, r = std::move(request)]() mutable { shard.deliver(std::move(r)); });
    return;
  }
  if (request->sink) return relay(from, std::move(request), target);
  messenger_.send(target, messaging::encode_request(*request));
}

void ClusterRouter::relay(runtime::Shard& from, RequestPtr original, const SiloAddress& target) {
  // A request from another silo that must go on to a third: call it from here and pass the reply back.
  auto copy = std::make_unique<Request>();
  copy->kind = original->kind;
  copy->cls = original->cls;
  copy->key = original->key;
  copy->method = original->method;
  copy->arg = std::move(original->arg);
  copy->arg_bytes = std::move(original->arg_bytes);
  copy->chain = original->chain;
  copy->deadline = original->deadline;
  copy->hops = original->hops;
  if (original->call_id == 0 && !original->sink) return send_to(from, std::move(copy), target);
  asio::co_spawn(from.io(), relay_call(from, std::move(original), std::move(copy), target),
                 [](std::exception_ptr e) {
                   if (e) spdlog::error("router: relaying a call failed unexpectedly");
                 });
}

// A member coroutine with by-value parameters rather than a capturing lambda: GCC 12 mishandles
// temporaries in co_await expressions inside lambda coroutines (seen as a double free here).
Task<void> ClusterRouter::relay_call(runtime::Shard& from, RequestPtr original, RequestPtr copy,
                                     SiloAddress target) {
  std::function<void(RequestPtr)> send = [this, &from, target](RequestPtr r) {
    send_to(from, std::move(r), target);
  };
  Reply reply = co_await from.call(std::move(copy), std::move(send));
  original->sink->reply(*original, std::move(reply));
}

void ClusterRouter::forward(runtime::Shard& from, RequestPtr request, const std::string& silo) {
  SiloAddress target;
  if (++request->hops > max_hops || !parse_silo_address(silo, target)) {
    // Not run: it bounced while the directory converged (a drain's unregister still in flight, say).
    Reply r = Reply::failure(StatusCode::unavailable,
                             request->describe() + " moved between silos too often; not run, retry the call");
    r.not_run = true;
    from.reply(*request, std::move(r));
    return;
  }
  directory_.cache(grain_id(*request->cls, request->key), target);
  send_to(from, std::move(request), target);
}

bool ClusterRouter::place_elsewhere(runtime::Shard& from, RequestPtr& request) {
  SiloAddress target;
  if (!place(*request->cls, request->key, true, target)) return false;
  forward(from, std::move(request), target.str());
  return true;
}

void ClusterRouter::register_activation(runtime::Shard& shard, const runtime::GrainClass& cls,
                                        const std::string& key, runtime::Clock::time_point deadline,
                                        std::function<void(Registration)> done) {
  const std::string id = grain_id(cls, key);
  asio::co_spawn(shard.io(), register_loop(shard, id, identity(id, true), deadline, std::move(done)),
                 [](std::exception_ptr e) {
                   if (e) spdlog::error("directory: registering an activation failed unexpectedly");
                 });
}

// Asks the owner under the current view until one confirms under a view that is still current: an owner
// that is unreachable, behind or ahead, or still recovering its ranges is asked again after a pause (a new
// view is on its way), never bypassed.
Task<void> ClusterRouter::register_loop(runtime::Shard& shard, std::string id, ActivationRef me,
                                        runtime::Clock::time_point deadline,
                                        std::function<void(Registration)> done) {
  constexpr auto pause = std::chrono::milliseconds(50);
  asio::steady_timer timer(shard.io());
  for (;;) {
    const std::int64_t view = directory_.version();
    const SiloAddress owner = directory_.owner(id);
    std::optional<ActivationRef> holder;
    if (owner.empty()) {
      holder = me;  // no active silo: nothing to agree with
    } else if (owner == self_) {
      const auto r = directory_.register_local(id, me, view, false);
      if (r.result == Directory::Result::ok) holder = r.holder;
    } else {
      in::DirectoryRequest req;
      req.set_op(in::DirectoryRequest::REGISTER);
      req.set_view(view);
      req.set_from(self_.str());
      req.add_grain_ids(id);
      req.add_silos(me.silo);
      req.add_activations(me.activation);
      const auto left = deadline - runtime::Clock::now();
      if (left > runtime::Clock::duration::zero()) {
        auto reply = co_await ask(shard, owner, std::move(req),
                                  std::min<runtime::Clock::duration>(left, directory_timeout));
        if (reply && reply->status() == in::DirectoryReply::OK && reply->silos_size() > 0)
          holder = ActivationRef{reply->silos(0), reply->activations_size() ? reply->activations(0) : 0};
      }
    }
    if (holder && directory_.version() == view) {
      Registration reg;
      if (*holder == me) {
        reg.outcome = Registration::Outcome::registered;
      } else {
        forget(id, me.activation);
        reg.outcome = Registration::Outcome::elsewhere;
        reg.holder = holder->silo;
      }
      done(std::move(reg));
      co_return;
    }
    if (runtime::Clock::now() + pause >= deadline) {
      spdlog::warn("directory: no owner confirmed {} before its deadline (view {}); the calls fail unrun", id,
                   view);
      forget(id, me.activation);
      // It may have been registered meanwhile (a re-registration batch listed it): take that back.
      if (!owner.empty()) {
        in::DirectoryRequest req;
        req.set_op(in::DirectoryRequest::UNREGISTER);
        req.add_grain_ids(id);
        req.add_silos(me.silo);
        req.add_activations(me.activation);
        if (owner == self_)
          directory_.unregister_local(id, me);
        else
          messenger_.directory(owner, std::move(req), directory_timeout, [](bool, in::DirectoryReply) {});
      }
      done(Registration{Registration::Outcome::unavailable, {}});
      co_return;
    }
    timer.expires_after(pause);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

Task<std::optional<in::DirectoryReply>> ClusterRouter::ask(runtime::Shard& shard, SiloAddress owner,
                                                           in::DirectoryRequest request,
                                                           runtime::Clock::duration timeout) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(std::optional<in::DirectoryReply>)>(
      [this, &shard, owner = std::move(owner), request = std::move(request), timeout](auto handler) mutable {
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        messenger_.directory(
            owner, std::move(request), std::chrono::duration_cast<std::chrono::milliseconds>(timeout),
            [&shard, h](bool ok, in::DirectoryReply reply) {
              std::optional<in::DirectoryReply> out;
              if (ok) out = std::move(reply);
              asio::post(shard.io(), [h, out = std::move(out)]() mutable { std::move (*h)(std::move(out)); });
            });
      },
      asio::use_awaitable);
}

void ClusterRouter::unregister_activation(const runtime::GrainClass& cls, const std::string& key) {
  const std::string id = grain_id(cls, key);
  directory_.uncache(id);
  std::uint64_t activation = 0;
  {
    std::lock_guard lock(ids_mutex_);
    auto it = local_ids_.find(id);
    if (it == local_ids_.end()) return;
    activation = it->second;
    local_ids_.erase(it);
  }
  const ActivationRef me{self_.str(), activation};
  const SiloAddress owner = directory_.owner(id);
  if (owner.empty() || owner == self_) return directory_.unregister_local(id, me);
  in::DirectoryRequest req;
  req.set_op(in::DirectoryRequest::UNREGISTER);
  req.set_view(directory_.version());
  req.set_from(self_.str());
  req.add_grain_ids(id);
  req.add_silos(me.silo);
  req.add_activations(me.activation);
  messenger_.directory(owner, std::move(req), directory_timeout, [](bool, in::DirectoryReply) {});
}

void ClusterRouter::on_request(in::Envelope env, std::shared_ptr<messaging::ResponseSink> sink) {
  const std::uint64_t id = env.id();
  auto decoded = messaging::decode_request(
      env, [this](std::string_view type) { return rt_.find_class(type); }, rt_.options().call_timeout,
      self_.str());
  if (!decoded.request) {
    if (!sink) return;
    in::Envelope r;
    r.set_id(id);
    r.set_kind(in::Envelope::RESPONSE);
    r.set_code(static_cast<int>(decoded.code));
    r.set_error(std::move(decoded.error));
    r.set_not_run(true);  // refused before it reached a grain (expired, or unknown here)
    sink->send(std::move(r));
    return;
  }
  RequestPtr r = std::move(decoded.request);
  if (sink) {
    r->call_id = id;
    r->sink = std::make_shared<EnvelopeSink>(std::move(sink), self_.str());
  }
  runtime::Shard& shard = rt_.shard_for(*r->cls, r->key);
  asio::post(shard.io(), [&shard, r = std::move(r)]() mutable { shard.deliver(std::move(r)); });
}

std::string ClusterRouter::refuse_sender(const std::string& sender) {
  std::lock_guard lock(mutex_);
  if (auto it = refused_senders_.find(sender); it != refused_senders_.end()) return it->second;
  if (last_status_.contains(sender)) return {};
  // Not in the view: a silo newer than our view is served (it joined a moment ago); an older generation
  // of an address whose newer generation the view knows is a process that restarted since (or froze).
  SiloAddress from;
  if (!parse_silo_address(sender, from)) return {};
  auto it = newest_generation_.find(from.endpoint());
  if (it != newest_generation_.end() && it->second > from.generation)
    return "a newer generation of its address is in the membership";
  return {};
}

void ClusterRouter::on_response(in::Envelope env) {
  const std::uint32_t index = runtime::Shard::shard_of(env.id());
  if (index >= rt_.shard_count()) return;
  if (!env.location().empty() && !env.grain_type().empty()) {
    SiloAddress where;
    if (parse_silo_address(env.location(), where)) {
      directory_.cache(env.grain_type() + "/" + env.grain_key(), where);
    }
  }
  Reply reply = messaging::decode_reply(env);
  runtime::Shard& shard = rt_.shard(index);
  asio::post(shard.io(), [&shard, id = env.id(), reply = std::move(reply)]() mutable {
    shard.complete(id, std::move(reply));
  });
}

}  // namespace silo::cluster
