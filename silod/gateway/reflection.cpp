#include "gateway/reflection.hpp"

#include <set>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace silo::gateway {

namespace {

namespace rv = grpc::reflection::v1alpha;
namespace pb = google::protobuf;

// Adds `file` and everything it imports, each once, dependencies first.
void add_file(const pb::FileDescriptor* file, std::set<std::string>& seen, rv::FileDescriptorResponse& out) {
  if (!file || !seen.insert(file->name()).second) return;
  for (int i = 0; i < file->dependency_count(); ++i)
    add_file(file->dependency(i), seen, out);
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out.add_file_descriptor_proto());
}

class Reactor final
    : public grpc::ServerBidiReactor<rv::ServerReflectionRequest, rv::ServerReflectionResponse> {
 public:
  explicit Reactor(const std::vector<std::string>& services) : services_(services) { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    answer();
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::CANCELLED);
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  void not_found(const std::string& what) {
    auto* e = response_.mutable_error_response();
    e->set_error_code(static_cast<int>(grpc::StatusCode::NOT_FOUND));
    e->set_error_message(what);
  }

  void answer() {
    const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
    response_.Clear();
    response_.set_valid_host(request_.host());
    *response_.mutable_original_request() = request_;
    std::set<std::string> seen;
    switch (request_.message_request_case()) {
      case rv::ServerReflectionRequest::kListServices:
        for (const auto& s : services_)
          response_.mutable_list_services_response()->add_service()->set_name(s);
        break;
      case rv::ServerReflectionRequest::kFileByFilename:
        if (const auto* f = pool->FindFileByName(request_.file_by_filename()))
          add_file(f, seen, *response_.mutable_file_descriptor_response());
        else
          not_found("no file " + request_.file_by_filename());
        break;
      case rv::ServerReflectionRequest::kFileContainingSymbol:
        if (const auto* f = pool->FindFileContainingSymbol(request_.file_containing_symbol()))
          add_file(f, seen, *response_.mutable_file_descriptor_response());
        else
          not_found("no symbol " + request_.file_containing_symbol());
        break;
      case rv::ServerReflectionRequest::kFileContainingExtension: {
        const auto& ext = request_.file_containing_extension();
        const auto* type = pool->FindMessageTypeByName(ext.containing_type());
        const auto* field = type ? pool->FindExtensionByNumber(type, ext.extension_number()) : nullptr;
        if (field)
          add_file(field->file(), seen, *response_.mutable_file_descriptor_response());
        else
          not_found("no extension " + std::to_string(ext.extension_number()) + " of " +
                    ext.containing_type());
        break;
      }
      case rv::ServerReflectionRequest::kAllExtensionNumbersOfType: {
        const auto* type = pool->FindMessageTypeByName(request_.all_extension_numbers_of_type());
        if (!type) {
          not_found("no type " + request_.all_extension_numbers_of_type());
          break;
        }
        std::vector<const pb::FieldDescriptor*> fields;
        pool->FindAllExtensions(type, &fields);
        auto* r = response_.mutable_all_extension_numbers_response();
        r->set_base_type_name(type->full_name());
        for (const auto* f : fields)
          r->add_extension_number(f->number());
        break;
      }
      default: {
        auto* e = response_.mutable_error_response();
        e->set_error_code(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
        e->set_error_message("empty or unknown reflection request");
      }
    }
  }

  const std::vector<std::string>& services_;
  rv::ServerReflectionRequest request_;
  rv::ServerReflectionResponse response_;
};

class Service final : public rv::ServerReflection::CallbackService {
 public:
  explicit Service(std::vector<std::string> services) : services_(std::move(services)) {}
  grpc::ServerBidiReactor<rv::ServerReflectionRequest, rv::ServerReflectionResponse>* ServerReflectionInfo(
      grpc::CallbackServerContext*) override {
    return new Reactor(services_);
  }

 private:
  std::vector<std::string> services_;
};

}  // namespace

std::unique_ptr<grpc::Service> make_reflection_service(std::vector<std::string> services) {
  return std::make_unique<Service>(std::move(services));
}

}  // namespace silo::gateway
