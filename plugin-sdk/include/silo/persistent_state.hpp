#pragma once
/// @file
/// silo::PersistentState<Msg>: a grain's durable state, stored by a named provider.
///
/// ```cpp
/// class Thermostat final : public iot::ThermostatGrain {
///   silo::PersistentState<iot::ThermostatState> state_{*this, "default"};  // storage.default in YAML
///  public:
///   silo::Task<void> on_activate() override { co_await state_.read(); }
///   silo::Task<iot::Status> SetTarget(const iot::Target& t) override {
///     state_->set_target(t.celsius());
///     co_await state_.write();   // etag-checked
///     ...
/// ```

#include <cstdint>
#include <string>
#include <utility>

#include "silo/error.hpp"
#include "silo/grain.hpp"
#include "silo/task.hpp"

namespace silo {

template <class Msg>
class PersistentState {
 public:
  /// `provider`: a name under `storage:` in the silo's YAML. `name` tells several states of one grain apart.
  explicit PersistentState(Grain& owner, std::string provider = "default", std::string name = "state")
      : owner_(owner), provider_(std::move(provider)), name_(std::move(name)) {
    detail::GrainAccess::declare_state(owner_, provider_, name_);
  }

  /// Loads the stored state (an empty message when nothing is stored).
  Task<void> read() {
    auto stored = co_await detail::GrainAccess::context(owner_).read_state(provider_, name_);
    value_.Clear();
    if (stored.etag != 0 && !value_.ParseFromString(stored.data)) {
      throw Error(StatusCode::data_loss, "stored state '" + name_ + "' of " + owner_.key() +
                                             " does not parse as " + value_.GetTypeName());
    }
    etag_ = stored.etag;
  }

  /// Stores the current value. Throws silo::Error(aborted) when the stored state changed since it was read,
  /// silo::Error(unavailable) when the store cannot be reached. Either way the activation is deactivated
  /// after this call, so its unsaved value is never written later by another call: the next call
  /// re-reads what is stored.
  Task<void> write() {
    std::string data;
    value_.SerializeToString(&data);
    etag_ =
        co_await detail::GrainAccess::context(owner_).write_state(provider_, name_, std::move(data), etag_);
  }

  /// Deletes the stored state and resets the value.
  Task<void> clear() {
    co_await detail::GrainAccess::context(owner_).clear_state(provider_, name_, etag_);
    value_.Clear();
    etag_ = 0;
  }

  /// The stored version this value is based on; 0 when nothing is stored.
  std::uint64_t etag() const noexcept { return etag_; }
  /// True when a stored state exists (after read() or write()).
  bool exists() const noexcept { return etag_ != 0; }

  Msg* operator->() noexcept { return &value_; }
  const Msg* operator->() const noexcept { return &value_; }
  Msg& operator*() noexcept { return value_; }
  const Msg& operator*() const noexcept { return value_; }

 private:
  Grain& owner_;
  std::string provider_;
  std::string name_;
  Msg value_;
  std::uint64_t etag_ = 0;
};

}  // namespace silo
