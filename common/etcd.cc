#include "common/etcd.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/grpc_status.h"
#include "etcd/rpc.grpc.pb.h"

namespace sparsekv {

std::string ClusterUrl::ToString() const { return absl::StrCat("etcd://", absl::StrJoin(endpoints, ","), "/", name); }

absl::StatusOr<ClusterUrl> ParseClusterUrl(std::string_view url) {
  constexpr std::string_view kScheme = "etcd://";
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cluster '%s': %s (want etcd://HOST:PORT[,HOST:PORT...]/NAME)", url, why));
  };
  if (url.substr(0, kScheme.size()) != kScheme) return bad("not an etcd:// URL");
  std::string_view rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return bad("no cluster name after the endpoints");
  ClusterUrl out;
  out.name = std::string(rest.substr(slash + 1));
  if (out.name.empty()) return bad("empty cluster name");
  for (char c : out.name) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return bad(absl::StrFormat("cluster name may hold letters, digits, '-', '_' and '.', not '%c'", c));
    }
  }
  for (absl::string_view endpoint : absl::StrSplit(absl::string_view(rest.data(), slash), ',')) {
    const size_t colon = endpoint.rfind(':');
    if (endpoint.empty() || colon == std::string_view::npos || colon == 0 || colon + 1 == endpoint.size()) {
      return bad(absl::StrFormat("endpoint '%s' is not HOST:PORT", endpoint));
    }
    int port = 0;
    for (char c : endpoint.substr(colon + 1)) {
      if (c < '0' || c > '9') return bad(absl::StrFormat("endpoint '%s' has a bad port", endpoint));
      port = port * 10 + (c - '0');
      if (port > 65535) return bad(absl::StrFormat("endpoint '%s' has a bad port", endpoint));
    }
    if (port == 0) return bad(absl::StrFormat("endpoint '%s' has port 0, which nothing listens on", endpoint));
    out.endpoints.emplace_back(std::string(endpoint));
  }
  return out;
}

struct EtcdClient::Channels {
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> kv;
  std::vector<std::unique_ptr<etcdserverpb::Lease::Stub>> lease;
};

EtcdClient::EtcdClient(std::vector<std::string> endpoints, int64_t timeout_ms)
    : endpoints_(std::move(endpoints)), timeout_ms_(timeout_ms), channels_(std::make_unique<Channels>()) {
  for (const auto& endpoint : endpoints_) {
    grpc::ChannelArguments args;
    // etcd restarts should be noticed in about a second, not after gRPC's default backoff (2 min).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto channel = grpc::CreateCustomChannel(endpoint, grpc::InsecureChannelCredentials(), args);
    channels_->kv.push_back(etcdserverpb::KV::NewStub(channel));
    channels_->lease.push_back(etcdserverpb::Lease::NewStub(channel));
  }
}

EtcdClient::~EtcdClient() = default;

namespace {

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

// The transaction's guard: `key` was last modified at `revision`.
void StillAt(etcdserverpb::TxnRequest* request, const std::string& key, int64_t revision) {
  auto* compare = request->add_compare();
  compare->set_key(key);
  compare->set_target(etcdserverpb::Compare::MOD);
  compare->set_result(etcdserverpb::Compare::EQUAL);
  compare->set_mod_revision(revision);
}

EtcdKv FromProto(const mvccpb::KeyValue& kv) {
  return EtcdKv{kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.lease()};
}

}  // namespace

// Runs call(endpoint index, context) on the current endpoint, then on each other one while the
// failure is one of reaching etcd (UNAVAILABLE, DEADLINE_EXCEEDED).
template <typename Call>
absl::Status EtcdClient::Failover(const char* what, Call&& call) {
  const size_t n = endpoints_.size();
  const size_t first = current_.load();
  absl::Status last;
  for (size_t i = 0; i < n; ++i) {
    const size_t at = (first + i) % n;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms_));
    // Wait for a (re)connection within the deadline: a channel that saw etcd down must not fail
    // fast on its stale state once etcd is back.
    ctx.set_wait_for_ready(true);
    grpc::Status status = call(at, &ctx);
    if (status.ok()) {
      if (at != first) current_.store(at);
      return absl::OkStatus();
    }
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      // Calls wait for a connection within their deadline: no answer means unreachable.
      last = absl::UnavailableError(
          absl::StrFormat("etcd at %s: %s: no answer within %d ms", endpoints_[at], what, timeout_ms_));
      continue;
    }
    last = FromGrpcStatus(status, absl::StrFormat("etcd at %s: %s", endpoints_[at], what));
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return last;
  }
  return last;
}

absl::Status EtcdClient::Range(const etcdserverpb::RangeRequest& request, etcdserverpb::RangeResponse* reply) {
  return Failover("Range",
                  [&](size_t at, grpc::ClientContext* ctx) { return channels_->kv[at]->Range(ctx, request, reply); });
}

absl::Status EtcdClient::Txn(const etcdserverpb::TxnRequest& request, etcdserverpb::TxnResponse* reply) {
  return Failover("Txn", [&](size_t at, grpc::ClientContext* ctx) { return channels_->kv[at]->Txn(ctx, request, reply); });
}

absl::StatusOr<std::optional<EtcdKv>> EtcdClient::Get(const std::string& key) {
  etcdserverpb::RangeRequest request;
  request.set_key(key);
  etcdserverpb::RangeResponse reply;
  if (auto s = Range(request, &reply); !s.ok()) return s;
  if (reply.kvs_size() == 0) return std::optional<EtcdKv>();
  return std::optional<EtcdKv>(FromProto(reply.kvs(0)));
}

absl::StatusOr<std::vector<EtcdKv>> EtcdClient::List(const std::string& prefix) {
  std::vector<EtcdKv> out;
  std::string from = prefix;
  const std::string end = PrefixEnd(prefix);
  int64_t revision = 0;  // every page from one revision: a consistent listing
  while (true) {
    etcdserverpb::RangeRequest request;
    request.set_key(from);
    request.set_range_end(end);
    request.set_limit(1000);
    request.set_revision(revision);
    etcdserverpb::RangeResponse reply;
    if (auto s = Range(request, &reply); !s.ok()) return s;
    revision = reply.header().revision();
    for (const auto& kv : reply.kvs()) out.push_back(FromProto(kv));
    if (!reply.more() || reply.kvs_size() == 0) break;
    from = reply.kvs(reply.kvs_size() - 1).key() + std::string(1, '\0');
  }
  return out;
}

absl::Status EtcdClient::Put(const std::string& key, const std::string& value, int64_t lease) {
  etcdserverpb::PutRequest request;
  request.set_key(key);
  request.set_value(value);
  request.set_lease(lease);
  etcdserverpb::PutResponse reply;
  return Failover("Put", [&](size_t at, grpc::ClientContext* ctx) { return channels_->kv[at]->Put(ctx, request, &reply); });
}

absl::StatusOr<std::optional<EtcdKv>> EtcdClient::Create(const std::string& key, const std::string& value,
                                                         int64_t lease) {
  etcdserverpb::TxnRequest request;
  auto* compare = request.add_compare();
  compare->set_key(key);
  compare->set_target(etcdserverpb::Compare::CREATE);
  compare->set_result(etcdserverpb::Compare::EQUAL);
  compare->set_create_revision(0);  // absent
  auto* put = request.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  request.add_failure()->mutable_request_range()->set_key(key);
  etcdserverpb::TxnResponse reply;
  if (auto s = Txn(request, &reply); !s.ok()) return s;
  if (reply.succeeded()) return std::optional<EtcdKv>();
  if (reply.responses_size() > 0 && reply.responses(0).response_range().kvs_size() > 0) {
    return std::optional<EtcdKv>(FromProto(reply.responses(0).response_range().kvs(0)));
  }
  return absl::AbortedError(absl::StrFormat("etcd: key '%s' existed and then vanished during create; retry", key));
}

absl::StatusOr<bool> EtcdClient::Swap(const std::string& key, int64_t revision, const std::string& value) {
  etcdserverpb::TxnRequest request;
  StillAt(&request, key, revision);
  auto* put = request.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  etcdserverpb::TxnResponse reply;
  if (auto s = Txn(request, &reply); !s.ok()) return s;
  return reply.succeeded();
}

absl::StatusOr<bool> EtcdClient::DeleteIf(const std::string& key, int64_t revision) {
  etcdserverpb::TxnRequest request;
  StillAt(&request, key, revision);
  request.add_success()->mutable_request_delete_range()->set_key(key);
  etcdserverpb::TxnResponse reply;
  if (auto s = Txn(request, &reply); !s.ok()) return s;
  return reply.succeeded();
}

absl::Status EtcdClient::Delete(const std::string& key) {
  etcdserverpb::DeleteRangeRequest request;
  request.set_key(key);
  etcdserverpb::DeleteRangeResponse reply;
  return Failover("DeleteRange",
                  [&](size_t at, grpc::ClientContext* ctx) { return channels_->kv[at]->DeleteRange(ctx, request, &reply); });
}

absl::StatusOr<int64_t> EtcdClient::Grant(int64_t ttl_s) {
  etcdserverpb::LeaseGrantRequest request;
  request.set_ttl(ttl_s);
  etcdserverpb::LeaseGrantResponse reply;
  if (auto s = Failover("LeaseGrant", [&](size_t at, grpc::ClientContext* ctx) {
        return channels_->lease[at]->LeaseGrant(ctx, request, &reply);
      });
      !s.ok()) {
    return s;
  }
  if (!reply.error().empty()) return absl::UnavailableError(absl::StrCat("etcd: LeaseGrant: ", reply.error()));
  return reply.id();
}

absl::StatusOr<int64_t> EtcdClient::KeepAlive(int64_t lease) {
  etcdserverpb::LeaseKeepAliveResponse reply;
  if (auto s = Failover("LeaseKeepAlive", [&](size_t at, grpc::ClientContext* ctx) {
        auto stream = channels_->lease[at]->LeaseKeepAlive(ctx);
        etcdserverpb::LeaseKeepAliveRequest request;
        request.set_id(lease);
        if (stream->Write(request)) {
          stream->WritesDone();
          if (!stream->Read(&reply)) reply.Clear();
        }
        ctx->TryCancel();
        grpc::Status status = stream->Finish();
        if (reply.id() != 0) return grpc::Status::OK;
        if (status.ok() || status.error_code() == grpc::StatusCode::CANCELLED) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no keep-alive reply");
        }
        return status;
      });
      !s.ok()) {
    return s;
  }
  if (reply.ttl() <= 0) return absl::NotFoundError(absl::StrFormat("etcd lease %x has expired", lease));
  return reply.ttl();
}

absl::Status EtcdClient::Revoke(int64_t lease) {
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseRevokeResponse reply;
  return Failover("LeaseRevoke", [&](size_t at, grpc::ClientContext* ctx) {
    return channels_->lease[at]->LeaseRevoke(ctx, request, &reply);
  });
}

}  // namespace sparsekv
