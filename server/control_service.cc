#include "server/control_service.h"

#include "common/grpc_status.h"

namespace sparsekv {
namespace {

template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status ControlService::CreateRegion(grpc::ServerContext*, const v1::CreateRegionRequest* request,
                                          v1::OpenRegionResponse* response) {
  return Reply(table_->Create(*request), response);
}
grpc::Status ControlService::OpenRegion(grpc::ServerContext*, const v1::OpenRegionRequest* request,
                                        v1::OpenRegionResponse* response) {
  return Reply(table_->Open(*request), response);
}
grpc::Status ControlService::ExtendRegion(grpc::ServerContext*, const v1::ExtendRegionRequest* request,
                                          v1::ExtendRegionResponse* response) {
  return Reply(table_->Extend(*request), response);
}
grpc::Status ControlService::CommitRegion(grpc::ServerContext*, const v1::CommitRegionRequest* request,
                                          v1::CommitRegionResponse* response) {
  return Reply(table_->Commit(*request), response);
}
grpc::Status ControlService::RenewLeases(grpc::ServerContext*, const v1::RenewLeasesRequest* request,
                                         v1::RenewLeasesResponse* response) {
  return Reply(table_->Renew(*request), response);
}
grpc::Status ControlService::ReleaseLeases(grpc::ServerContext*, const v1::ReleaseLeasesRequest* request,
                                           v1::ReleaseLeasesResponse*) {
  return ToGrpcStatus(table_->Release(*request));
}
grpc::Status ControlService::DeleteRegion(grpc::ServerContext*, const v1::DeleteRegionRequest* request,
                                          v1::DeleteRegionResponse* response) {
  return Reply(table_->Delete(*request), response);
}
grpc::Status ControlService::ListRegions(grpc::ServerContext*, const v1::ListRegionsRequest* request,
                                         v1::ListRegionsResponse* response) {
  return Reply(table_->List(*request), response);
}
grpc::Status ControlService::GetRegion(grpc::ServerContext*, const v1::GetRegionRequest* request,
                                       v1::RegionInfo* response) {
  return Reply(table_->Get(*request), response);
}
grpc::Status ControlService::Stats(grpc::ServerContext*, const v1::StatsRequest*,
                                   v1::StatsResponse* response) {
  *response = table_->Stats();
  return grpc::Status::OK;
}
grpc::Status ControlService::Evict(grpc::ServerContext*, const v1::EvictRequest* request,
                                   v1::EvictResponse* response) {
  return Reply(table_->Evict(*request), response);
}

}  // namespace sparsekv
