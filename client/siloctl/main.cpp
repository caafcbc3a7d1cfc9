// siloctl: the operator's CLI. Calls any grain method with JSON through the gateway's server reflection, and
// shows cluster status and activation counts through silo.gateway.Gateway.

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <future>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/descriptor_database.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <silo/version.hpp>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "silo/gateway.grpc.pb.h"

namespace {

namespace pb = google::protobuf;
namespace rv = grpc::reflection::v1alpha;
namespace gw = silo::gateway;
using Clock = std::chrono::system_clock;

constexpr const char* usage_text = R"(Usage: siloctl [--gateway HOST:PORT] [--timeout DURATION] COMMAND ...

Commands:
  call SERVICE KEY METHOD [JSON]   call a grain method; JSON is the request (default {}, - reads stdin)
  status                           cluster id and the silos with their status and activations
  grains                           activations per silo and grain type
  services                         services and methods the gateway serves
  help                             show this help

Options:
  --gateway HOST:PORT   gateway to talk to (default: $SILO_GATEWAY, else 127.0.0.1:30000)
  --timeout DURATION    give up after this long, e.g. 500ms, 10s, 1m (default: 10s)
  -h, --help            show this help
  --version             show the version

Example:
  siloctl call iot.Thermostat t1 SetTarget '{"celsius": 21.5}'

Exit codes: 0 ok, 1 the call failed, 2 usage error.
)";

// Exit code 2: the command line (or what it names) is wrong; retrying the same command will not help.
struct UsageError : std::runtime_error {
  explicit UsageError(const std::string& what, bool syntax = true)
      : std::runtime_error(what), syntax(syntax) {}
  bool syntax;  // the command line itself is malformed, so pointing at --help helps
};
// Exit code 1: the gateway or the grain call failed.
struct CallFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string gateway;
  std::chrono::milliseconds timeout{10'000};
  Clock::time_point deadline;  // one deadline for the whole command, so --timeout bounds what the user waits
};

const char* code_name(grpc::StatusCode code) {
  static constexpr const char* names[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  const auto i = static_cast<std::size_t>(code);
  return i < std::size(names) ? names[i] : "UNKNOWN";
}

// "CODE: message", plus what to try next for the failures an operator can do something about.
CallFailed call_failed(const grpc::Status& s, const Options& opt, const std::string& what = {}) {
  std::string text =
      std::string(code_name(s.error_code())) + ": " + (what.empty() ? "" : what + ": ") + s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE)
    text += "\n  is silod running at " + opt.gateway +
            "? start it, or pass --gateway HOST:PORT / set SILO_GATEWAY";
  else if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    text += "\n  no answer within --timeout " + std::to_string(opt.timeout.count()) + "ms; raise --timeout";
  return CallFailed(text);
}

std::chrono::milliseconds parse_duration(const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  double ms_per_unit = 0;
  if (unit == "ms")
    ms_per_unit = 1;
  else if (unit == "s")
    ms_per_unit = 1000;
  else if (unit == "m")
    ms_per_unit = 60'000;
  else if (unit == "h")
    ms_per_unit = 3'600'000;
  const double ms = value * ms_per_unit;
  if (used == 0 || ms_per_unit == 0 || !(ms >= 1) || ms > 1e12)
    throw UsageError("bad --timeout '" + text +
                     "': expected a positive duration with a unit (ms, s, m, h), " + "like 500ms, 10s or 1m");
  return std::chrono::milliseconds(static_cast<std::int64_t>(ms));
}

void check_gateway(const std::string& target) {
  // gRPC target URIs (unix:, dns:///...) go through as they are; plain ones must be HOST:PORT.
  if (target.starts_with("unix:") || target.find("://") != std::string::npos) return;
  const auto colon = target.rfind(':');
  const std::string port = colon == std::string::npos ? "" : target.substr(colon + 1);
  const bool digits = !port.empty() && port.size() <= 5 &&
                      std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (colon == 0 || !digits || std::stoi(port) == 0 || std::stoi(port) > 65535)
    throw UsageError("bad gateway '" + target + "': expected HOST:PORT, e.g. 127.0.0.1:30000");
}

std::shared_ptr<grpc::Channel> make_channel(const Options& opt) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // an operator asking for a big answer should see it, not an error
  return grpc::CreateCustomChannel(opt.gateway, grpc::InsecureChannelCredentials(), args);
}

void set_deadline(grpc::ClientContext& ctx, const Options& opt) {
  ctx.set_deadline(opt.deadline);
}

// Prints rows as columns separated by two spaces; the first row is the header.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], row[i].size());
    }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << '\n';
  }
}

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& s : items)
    out += (out.empty() ? "" : sep) + s;
  return out;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Collects descriptor build errors so they can be reported as one message instead of protobuf's log lines.
class ErrorCollector final : public pb::DescriptorPool::ErrorCollector {
 public:
  void AddError(const std::string& filename, const std::string& element, const pb::Message*, ErrorLocation,
                const std::string& message) override {
    errors += (errors.empty() ? "" : "; ") + filename + ": " + element + ": " + message;
  }
  std::string errors;
};

// Server reflection over one bidi stream: the descriptors the gateway serves, loaded into a private pool.
class Reflection {
 public:
  explicit Reflection(const Options& opt, std::shared_ptr<grpc::Channel> channel)
      : opt_(opt), stub_(rv::ServerReflection::NewStub(channel)), pool_(&database_, &errors_) {
    set_deadline(ctx_, opt);
    stream_ = stub_->ServerReflectionInfo(&ctx_);
  }

  ~Reflection() {
    if (!finished_) {
      // The answers we needed are in; cancelling spares waiting for the server to close the stream.
      ctx_.TryCancel();
      stream_->Finish().ok();
    }
  }

  std::vector<std::string> list_services() {
    rv::ServerReflectionRequest req;
    req.set_list_services("*");
    const auto resp = ask(req, "listing services");
    std::vector<std::string> names;
    for (const auto& s : resp.list_services_response().service())
      names.push_back(s.name());
    std::sort(names.begin(), names.end());
    return names;
  }

  // nullptr when the gateway does not know `name` as a service.
  const pb::ServiceDescriptor* find_service(const std::string& name) {
    rv::ServerReflectionRequest req;
    req.set_file_containing_symbol(name);
    const auto resp = ask(req, "looking up " + name);
    if (resp.has_error_response()) {
      if (resp.error_response().error_code() == static_cast<int>(grpc::StatusCode::NOT_FOUND)) return nullptr;
      throw CallFailed(
          std::string(code_name(static_cast<grpc::StatusCode>(resp.error_response().error_code()))) +
          ": reflection lookup of " + name + ": " + resp.error_response().error_message());
    }
    add_files(resp);
    resolve_imports();
    const auto* service = pool_.FindServiceByName(name);
    if (!service && !errors_.errors.empty())
      throw CallFailed("INTERNAL: the gateway's descriptors for " + name +
                       " do not build: " + errors_.errors);
    return service;
  }

 private:
  rv::ServerReflectionResponse ask(const rv::ServerReflectionRequest& req, const std::string& what) {
    rv::ServerReflectionResponse resp;
    if (finished_) throw CallFailed("UNKNOWN: " + what + ": the reflection stream has already ended");
    if (!stream_->Write(req) || !stream_->Read(&resp)) {
      finished_ = true;
      auto status = stream_->Finish();
      if (status.ok()) status = grpc::Status(grpc::StatusCode::UNKNOWN, "the reflection stream ended early");
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED)
        throw CallFailed("UNIMPLEMENTED: " + opt_.gateway +
                         " does not serve grpc.reflection.v1alpha.ServerReflection; is it a silod gateway?");
      throw call_failed(status, opt_, what);
    }
    return resp;
  }

  void add_files(const rv::ServerReflectionResponse& resp) {
    for (const auto& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      pb::FileDescriptorProto file;
      if (!file.ParseFromString(bytes)) throw CallFailed("INTERNAL: the gateway sent a malformed descriptor");
      // SimpleDescriptorDatabase refuses a file twice; every answer repeats the imports.
      if (have_.insert(file.name()).second) database_.Add(file);
    }
  }

  // The server sends each file with its imports; this covers servers that do not, and well-known protos
  // (google/protobuf/descriptor.proto) missing from a server's pool, taking them from siloctl's own.
  void resolve_imports() {
    for (bool added = true; added;) {
      added = false;
      std::vector<std::string> missing;
      for (const auto& name : have_) {
        pb::FileDescriptorProto file;
        database_.FindFileByName(name, &file);
        for (const auto& dep : file.dependency())
          if (!have_.count(dep)) missing.push_back(dep);
      }
      for (const auto& dep : missing) {
        if (have_.count(dep)) continue;
        rv::ServerReflectionRequest req;
        req.set_file_by_filename(dep);
        const auto resp = ask(req, "fetching " + dep);
        if (!resp.has_error_response()) {
          add_files(resp);
        } else if (const auto* own = pb::DescriptorPool::generated_pool()->FindFileByName(dep)) {
          pb::FileDescriptorProto file;
          own->CopyTo(&file);
          have_.insert(dep);
          database_.Add(file);
        } else {
          continue;  // the pool reports the missing import when it builds the file
        }
        added = true;
      }
    }
  }

  const Options& opt_;
  std::unique_ptr<rv::ServerReflection::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<rv::ServerReflectionRequest, rv::ServerReflectionResponse>>
      stream_;
  bool finished_ = false;
  std::set<std::string> have_;
  pb::SimpleDescriptorDatabase database_;
  ErrorCollector errors_;
  pb::DescriptorPool pool_;
};

// "unknown service X; the gateway serves: ..." with a hint when only the package was left out.
UsageError unknown_service(const Options& opt, const std::string& name,
                           const std::vector<std::string>& available) {
  if (std::find(available.begin(), available.end(), name) != available.end())
    return UsageError("the gateway at " + opt.gateway + " lists " + name +
                          " but has no descriptors for it (reflection answers NOT_FOUND), so siloctl cannot "
                          "build its messages",
                      false);
  std::string text = "unknown service '" + name + "'";
  for (const auto& s : available)
    if (lower(s) == lower(name) || lower(s).ends_with("." + lower(name))) {
      text += "; did you mean " + s + "?";
      break;
    }
  return UsageError(
      text + "\n  the gateway at " + opt.gateway + " serves: " + join(available) +
          "\n  a grain service is missing when its plugin is not in plugins.load of silod's config",
      false);
}

std::string read_stdin() {
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

std::string describe_fields(const pb::Descriptor* type) {
  std::vector<std::string> fields;
  for (int i = 0; i < type->field_count(); ++i) {
    const auto* f = type->field(i);
    const std::string kind = f->message_type() ? f->message_type()->full_name()
                             : f->enum_type()  ? f->enum_type()->full_name()
                                               : f->type_name();
    fields.push_back(f->name() + " (" + (f->is_repeated() ? "repeated " : "") + kind + ")");
  }
  return fields.empty() ? "no fields, so pass {} or nothing" : "fields: " + join(fields);
}

int cmd_call(const Options& opt, const std::vector<std::string>& args) {
  if (args.size() < 3 || args.size() > 4)
    throw UsageError("call needs SERVICE KEY METHOD [JSON], e.g. siloctl call iot.Thermostat t1 GetStatus");
  const std::string& service_name = args[0];
  const std::string& key = args[1];
  const std::string& method_name = args[2];
  std::string json = args.size() == 4 ? args[3] : "{}";
  if (json == "-") json = read_stdin();
  if (key.empty()) throw UsageError("the grain KEY is empty; pass the id of the grain to call");
  // gRPC only carries printable ASCII in a text metadata value; anything else would fail on the wire.
  if (!std::all_of(key.begin(), key.end(), [](char c) { return c >= 0x20 && c <= 0x7e; }))
    throw UsageError("the grain KEY '" + key +
                     "' has characters gRPC metadata cannot carry (printable ASCII only)");

  auto channel = make_channel(opt);
  Reflection reflection(opt, channel);
  const auto* service = reflection.find_service(service_name);
  if (!service) throw unknown_service(opt, service_name, reflection.list_services());
  const auto* method = service->FindMethodByName(method_name);
  if (!method) {
    std::vector<std::string> names;
    std::string hint;
    for (int i = 0; i < service->method_count(); ++i) {
      names.push_back(service->method(i)->name());
      if (lower(names.back()) == lower(method_name)) hint = "; did you mean " + names.back() + "?";
    }
    throw UsageError("service " + service_name + " has no method '" + method_name + "'" + hint +
                         "\n  its methods: " + join(names),
                     false);
  }
  if (method->client_streaming() || method->server_streaming())
    throw UsageError(
        service_name + "/" + method_name + " is a streaming method; siloctl calls unary methods only", false);

  pb::DynamicMessageFactory factory;
  std::unique_ptr<pb::Message> request(factory.GetPrototype(method->input_type())->New());
  std::unique_ptr<pb::Message> response(factory.GetPrototype(method->output_type())->New());
  const auto parsed = pb::util::JsonStringToMessage(json, request.get());
  if (!parsed.ok())
    throw UsageError("bad JSON for " + method->input_type()->full_name() + " (the request of " +
                         service_name + "/" + method_name + "): " + std::string(parsed.message()) + "\n  " +
                         method->input_type()->full_name() + " has " + describe_fields(method->input_type()),
                     false);

  std::string bytes;
  request->SerializeToString(&bytes);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext ctx;
  set_deadline(ctx, opt);
  ctx.AddMetadata("silo-key", key);
  grpc::GenericStub stub(channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/" + service->full_name() + "/" + method->name(), grpc::StubOptions(),
                 &request_buffer, &response_buffer,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  const auto status = done.get_future().get();
  if (!status.ok()) throw call_failed(status, opt);

  grpc::ProtoBufferReader reader(&response_buffer);
  if (!response->ParseFromZeroCopyStream(&reader))
    throw CallFailed("INTERNAL: the response is not a valid " + method->output_type()->full_name());
  pb::util::JsonPrintOptions print;
  print.add_whitespace = true;
  print.always_print_primitive_fields = true;  // zeros are answers too: show "readings": "0"
  print.preserve_proto_field_names = true;     // the names the .proto and the request JSON use
  std::string out;
  const auto printed = pb::util::MessageToJsonString(*response, &out, print);
  if (!printed.ok())
    throw CallFailed("INTERNAL: cannot print the response: " + std::string(printed.message()));
  if (!out.ends_with('\n')) out += '\n';
  std::cout << out;
  return 0;
}

int cmd_services(const Options& opt) {
  Reflection reflection(opt, make_channel(opt));
  for (const auto& name : reflection.list_services()) {
    std::cout << name << '\n';
    // Some listed services (the health check) have no descriptors on the server; their name is enough.
    const auto* service = reflection.find_service(name);
    if (!service) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      const auto* m = service->method(i);
      std::cout << "  " << m->name() << '(' << (m->client_streaming() ? "stream " : "")
                << m->input_type()->full_name() << ") returns (" << (m->server_streaming() ? "stream " : "")
                << m->output_type()->full_name() << ")\n";
    }
  }
  return 0;
}

int cmd_status(const Options& opt) {
  auto stub = gw::Gateway::NewStub(make_channel(opt));
  grpc::ClientContext ctx;
  set_deadline(ctx, opt);
  gw::ClusterStatus status;
  const auto s = stub->Status(&ctx, gw::StatusRequest(), &status);
  if (!s.ok()) throw call_failed(s, opt);
  std::cout << "cluster: " << status.cluster_id() << " (answered by " << status.answered_by() << ")\n\n";
  std::vector<std::vector<std::string>> rows{
      {"NAME", "ADDRESS", "GATEWAY", "STATUS", "ACTIVATIONS", "GRAIN TYPES"}};
  std::vector<const gw::SiloInfo*> silos;
  for (const auto& silo : status.silos())
    silos.push_back(&silo);
  std::sort(silos.begin(), silos.end(), [](auto* a, auto* b) { return a->name() < b->name(); });
  for (const auto* silo : silos) {
    std::vector<std::string> types(silo->grain_types().begin(), silo->grain_types().end());
    std::sort(types.begin(), types.end());
    rows.push_back({silo->name(), silo->address(), silo->gateway(), silo->status(),
                    std::to_string(silo->activations()), types.empty() ? "-" : join(types, ",")});
  }
  print_table(rows);
  return 0;
}

int cmd_grains(const Options& opt) {
  // Each gateway counts its own silo's activations: ask the cluster for its silos, then every active one.
  std::vector<std::string> gateways;
  {
    auto stub = gw::Gateway::NewStub(make_channel(opt));
    grpc::ClientContext ctx;
    set_deadline(ctx, opt);
    gw::ClusterStatus status;
    const auto s = stub->Status(&ctx, gw::StatusRequest(), &status);
    if (!s.ok()) throw call_failed(s, opt);
    for (const auto& silo : status.silos()) {
      if (silo.status() == "active" && !silo.gateway().empty()) gateways.push_back(silo.gateway());
    }
    if (gateways.empty()) gateways.push_back(opt.gateway);
  }
  std::map<std::pair<std::string, std::string>, std::int64_t> counts;  // (silo, type): sorted and merged
  std::map<std::string, std::int64_t> totals;
  std::set<std::string> silos;
  for (const auto& gateway : gateways) {
    Options one = opt;
    one.gateway = gateway;
    auto stub = gw::Gateway::NewStub(make_channel(one));
    grpc::ClientContext ctx;
    set_deadline(ctx, one);
    gw::GrainStats stats;
    const auto s = stub->Grains(&ctx, gw::GrainsRequest(), &stats);
    if (!s.ok()) {
      std::cerr << "siloctl: gateway " << gateway << " did not answer (" << s.error_message()
                << "); its silo's activations are missing below\n";
      continue;
    }
    for (const auto& c : stats.counts()) {
      counts[{c.silo(), c.grain_type()}] += c.activations();
      totals[c.grain_type()] += c.activations();
      silos.insert(c.silo());
    }
  }
  if (counts.empty()) {
    std::cout << "no grain activations\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows{{"SILO", "GRAIN TYPE", "ACTIVATIONS"}};
  for (const auto& [k, n] : counts)
    rows.push_back({k.first, k.second, std::to_string(n)});
  print_table(rows);
  if (silos.size() > 1) {
    std::cout << '\n';
    std::vector<std::vector<std::string>> total_rows{{"GRAIN TYPE", "TOTAL ACTIVATIONS"}};
    for (const auto& [type, n] : totals)
      total_rows.push_back({type, std::to_string(n)});
    print_table(total_rows);
  }
  return 0;
}

int run(int argc, char** argv) {
  Options opt;
  const char* env = std::getenv("SILO_GATEWAY");
  opt.gateway = env && *env ? env : "127.0.0.1:30000";
  std::vector<std::string> words;
  bool options_done = false;
  // Options may come anywhere before "--", so `siloctl status --gateway X` works as well.
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const std::string& flag) -> std::string {
      if (arg.size() > flag.size() && arg[flag.size()] == '=') return arg.substr(flag.size() + 1);
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      return argv[++i];
    };
    if (options_done || arg == "-" || !arg.starts_with("-")) {
      words.push_back(arg);
    } else if (arg == "--") {
      options_done = true;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << usage_text;
      return 0;
    } else if (arg == "--version") {
      std::cout << "siloctl " << SILO_SDK_VERSION << '\n';
      return 0;
    } else if (arg == "--gateway" || arg.starts_with("--gateway=")) {
      opt.gateway = value("--gateway");
    } else if (arg == "--timeout" || arg.starts_with("--timeout=")) {
      opt.timeout = parse_duration(value("--timeout"));
    } else {
      throw UsageError("unknown option '" + arg + "'");
    }
  }
  if (words.empty()) throw UsageError("no command given");
  check_gateway(opt.gateway);
  opt.deadline = Clock::now() + opt.timeout;
  const std::string command = words.front();
  const std::vector<std::string> args(words.begin() + 1, words.end());
  if (command == "help") {
    std::cout << usage_text;
    return 0;
  }
  if (command == "call") return cmd_call(opt, args);
  const std::map<std::string, int (*)(const Options&)> plain{
      {"status", cmd_status}, {"grains", cmd_grains}, {"services", cmd_services}};
  if (const auto it = plain.find(command); it != plain.end()) {
    if (!args.empty()) throw UsageError(command + " takes no arguments, got '" + args.front() + "'");
    return it->second(opt);
  }
  throw UsageError("unknown command '" + command + "' (commands: call, status, grains, services, help)");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "siloctl: " << e.what() << '\n';
    if (e.syntax) std::cerr << "Run 'siloctl --help' for usage.\n";
    return 2;
  } catch (const CallFailed& e) {
    std::cerr << "siloctl: " << e.what() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "siloctl: " << e.what() << '\n';
    return 1;
  }
}
