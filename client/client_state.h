// Private to the client library: what a Client and its Region handles share (Client::Impl,
// Region::State: geometry, page tables, leases, the write path) and small helpers.
#ifndef SPARSEKV_CLIENT_CLIENT_STATE_H_
#define SPARSEKV_CLIENT_CLIENT_STATE_H_

#include "sparsekv/client.h"

#include <unistd.h>

#include <atomic>
#include <map>
#include <chrono>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <xxhash.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "client/cluster_client.h"
#include "client/node_calls.h"
#include "client/fetch_planner.h"
#include "client/region_view.h"
#include "client/transports/shm_transport.h"
#include "client/rma_loader.h"
#include "client/transports/tcp_gather_transport.h"
#include "common/log.h"
#include "client/worker_pool.h"
#include "common/checked.h"
#include "common/geometry.h"
#include "common/grpc_status.h"
#include "common/grpc_tls.h"
#include "sparsekv/region.h"
#include "sparsekv/v1/control.grpc.pb.h"

namespace sparsekv {
namespace client_detail {

using Clock = std::chrono::steady_clock;

inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// The client stops trusting a lease this long before the daemon would let it lapse.
inline int64_t LeaseTrustNs(int64_t lease_ms) { return lease_ms * 1'000'000 * 4 / 5; }

// Per-thread scratch for resolved offsets: grows to the largest fetch a thread has made, then
// never allocates again.
inline std::vector<int64_t>& OffsetScratch(size_t n) {
  thread_local std::vector<int64_t> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch;
}

}  // namespace client_detail

using client_detail::Clock;
using client_detail::LeaseTrustNs;
using client_detail::NowNs;
using client_detail::OffsetScratch;

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Control::Stub> stub;
  std::unique_ptr<ClusterClient> cluster;  // ClientOptions::cluster: then no channel of its own

  absl::Mutex mu;
  absl::flat_hash_map<std::string, std::shared_ptr<Transport>> transports ABSL_GUARDED_BY(mu);
  std::map<void*, size_t> registered_buffers ABSL_GUARDED_BY(mu);  // RegisterBuffer, for RMA transports
  absl::flat_hash_map<Region::State*, std::weak_ptr<Region::State>> open ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::thread renewer;
  std::atomic<int64_t> lease_ms{10000};  // the shortest lease the daemon has granted us
  std::unique_ptr<WorkerPool> fetch_workers;  // helpers for large batches (fetch_threads > 1)
  std::string client_id;  // HOST:PID:RANDOM, in reports to the daemon
  std::string token;      // bearer token sent with every call ("" : none)

  // Data-plane counters since the last renewal; reported to the daemon for its metrics.
  struct DataCounters {
    std::atomic<int64_t> fetches{0}, fetched_entries{0}, fetched_bytes{0}, writes{0}, written_bytes{0};
  } data;
  void CountFetch(int64_t calls, int64_t entries, int64_t bytes) {
    data.fetches.fetch_add(calls, std::memory_order_relaxed);
    data.fetched_entries.fetch_add(entries, std::memory_order_relaxed);
    data.fetched_bytes.fetch_add(bytes, std::memory_order_relaxed);
  }

  // One control call with the client's context (deadline, token, wait-for-ready), its gRPC
  // status turned into an absl::Status naming the call and the daemon.
  template <typename Request, typename Reply>
  absl::Status Call(grpc::Status (v1::Control::Stub::*method)(grpc::ClientContext*, const Request&, Reply*),
                    const char* name, const Request& request, Reply* reply) const {
    auto ctx = Context();
    return FromGrpcStatus((stub.get()->*method)(ctx.get(), request, reply), What(name));
  }

  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    // Wait out a reconnect (the daemon restarting) within the deadline instead of failing fast.
    ctx->set_wait_for_ready(true);
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options.rpc_timeout_ms));
    return ctx;
  }
  std::string What(const char* call) const { return absl::StrCat(call, " to ", options.server); }

  absl::StatusOr<std::shared_ptr<Transport>> TransportFor(const v1::TransportDescriptor& descriptor);
  void RenewLoop();
  void RenewOnce();
};

struct Region::State {
  std::shared_ptr<Client::Impl> client;
  std::string key;
  uint64_t region_id = 0;
  Geometry geometry;
  // Replaced when a reopen finds the daemon's data paths elsewhere (a restarted daemon).
  std::atomic<std::shared_ptr<Transport>> transport;
  std::shared_ptr<Transport> CurrentTransport() const { return transport.load(std::memory_order_acquire); }

  std::atomic<std::shared_ptr<const PageTable>> table;
  std::atomic<int64_t> committed{0};
  std::atomic<bool> sealed{false};
  std::atomic<uint64_t> lease_id{0};
  std::atomic<int64_t> lease_deadline_ns{0};
  std::atomic<bool> revoked{false};
  std::atomic<bool> has_checksum{false};  // the daemon's checksum of the sealed entries
  std::atomic<uint64_t> checksum{0};
  std::atomic<bool> writable{false};        // this handle holds the region's write lease
  std::atomic<int64_t> written_end{0};      // one past the last token this handle wrote
  // Page numbers the daemon may name: those of the pool (or arena) this handle reaches.
  int64_t page_lo = 0, page_hi = INT64_MAX;

  mutable absl::Mutex mu;
  std::string revoked_reason ABSL_GUARDED_BY(mu);
  std::string renew_error ABSL_GUARDED_BY(mu);

  absl::Mutex write_mu;  // serializes Append, Reserve, Commit, Refresh of one handle

  // A page table from the wire, checked before anything trusts it: one list per layer, enough
  // pages for the capacity, every page inside the pool this handle reaches.
  absl::StatusOr<std::shared_ptr<PageTable>> ParseTable(
      const google::protobuf::RepeatedPtrField<v1::LayerPages>& layers, int64_t capacity) const {
    if (layers.size() != geometry.layers || capacity < 0) {
      return absl::DataLossError(absl::StrFormat(
          "the daemon described region '%s' inconsistently: %d page lists for %d layers, capacity %d", key,
          layers.size(), geometry.layers, capacity));
    }
    const int64_t need = geometry.PagesPerLayer(capacity);
    auto next = std::make_shared<PageTable>();
    next->layers.reserve(layers.size());
    for (const auto& layer : layers) {
      if (layer.pages_size() < need) {
        return absl::DataLossError(absl::StrFormat(
            "the daemon described region '%s' inconsistently: %d pages in a layer, %d tokens need %d", key,
            layer.pages_size(), capacity, need));
      }
      for (uint32_t page : layer.pages()) {
        if (page < page_lo || page >= page_hi) {
          return absl::DataLossError(absl::StrFormat(
              "the daemon described region '%s' inconsistently: page %d is outside the pool's pages [%d, %d)", key,
              page, page_lo, page_hi));
        }
      }
      next->layers.emplace_back(layer.pages().begin(), layer.pages().end());
    }
    next->capacity_tokens = capacity;
    return next;
  }

  // Takes over what an open (or create) reply says; `sent_ns` is when the request left.
  absl::Status Adopt(const v1::OpenRegionResponse& reply, int64_t sent_ns) {
    auto next = ParseTable(reply.layers(), reply.info().capacity_tokens());
    if (!next.ok()) return next.status();
    table.store(*std::move(next), std::memory_order_release);
    writable.store(reply.lease().writer(), std::memory_order_release);
    committed.store(reply.info().committed_tokens(), std::memory_order_release);
    sealed.store(reply.info().sealed());
    checksum.store(reply.info().checksum());
    has_checksum.store(reply.info().has_checksum());
    lease_id.store(reply.lease().lease_id());
    lease_deadline_ns.store(sent_ns + LeaseTrustNs(reply.lease().lease_ms()));
    int64_t seen = client->lease_ms.load();
    while (reply.lease().lease_ms() < seen &&
           !client->lease_ms.compare_exchange_weak(seen, reply.lease().lease_ms())) {
    }
    {
      absl::MutexLock lock(&mu);
      revoked_reason.clear();
      renew_error.clear();
    }
    revoked.store(false, std::memory_order_release);
    return absl::OkStatus();
  }

  absl::Status CheckWritable(const char* what) const {
    if (writable.load(std::memory_order_acquire)) return absl::OkStatus();
    if (sealed.load()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s to region '%s' refused: it is sealed at %d tokens and never changes again", what, key, committed.load()));
    }
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s to region '%s' refused: this handle is read-only (from Client::Open, or it released or lost the "
        "write lease); one handle at a time writes a region: its creator until it seals or calls ReleaseWrite(), "
        "then one from Client::OpenForWrite",
        what, key));
  }

  absl::Status CheckLease() const {
    if (revoked.load(std::memory_order_acquire)) {
      absl::MutexLock lock(&mu);
      return absl::NotFoundError(absl::StrFormat("region '%s' is no longer readable through this handle: %s",
                                                 key, revoked_reason));
    }
    int64_t now = NowNs();
    int64_t deadline = lease_deadline_ns.load(std::memory_order_acquire);
    if (now >= deadline) {
      absl::MutexLock lock(&mu);
      return absl::FailedPreconditionError(absl::StrFormat(
          "lease on region '%s' lapsed %.0f ms ago%s; Refresh() takes a new one", key,
          (now - deadline) / 1e6,
          renew_error.empty() ? "" : absl::StrCat(" (last renewal failed: ", renew_error, ")")));
    }
    return absl::OkStatus();
  }

  // Reopens the region with a fresh lease. A writer keeps its write lease (the new lease replaces
  // the old one as the region's writer) unless `keep_write` is false (ReleaseWrite).
  absl::Status Refresh(bool keep_write = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    v1::OpenRegionRequest request;
    request.set_key(key);
    if (keep_write && writable.load() && !sealed.load()) {
      request.set_for_write(true);
      request.set_replaces_lease_id(lease_id.load());
    }
    v1::OpenRegionResponse reply;
    int64_t sent = NowNs();
    auto status = client->Call(&v1::Control::Stub::OpenRegion, "OpenRegion", request, &reply);
    if (status.code() == absl::StatusCode::kFailedPrecondition && request.for_write()) {
      // The write lease lapsed and another handle took it (or the region was sealed meanwhile):
      // this handle stays open, read-only, instead of becoming unusable.
      SKV_LOG_WARN("sparsekv", "region '%s': this handle lost its write lease (%s); it is read-only now", key,
                   status.message());
      request.set_for_write(false);
      request.set_replaces_lease_id(0);
      sent = NowNs();
      status = client->Call(&v1::Control::Stub::OpenRegion, "OpenRegion", request, &reply);
    }
    if (!status.ok()) return status;
    if (reply.info().region_id() != region_id) {
      return absl::NotFoundError(absl::StrFormat(
          "region '%s' was deleted and created anew (id %d, this handle had %d); open it again",
          key, reply.info().region_id(), region_id));
    }
    // A restarted daemon may serve its data paths elsewhere: follow them.
    auto moved = client->TransportFor(reply.transport());
    if (!moved.ok()) return moved.status();
    if (*moved != CurrentTransport()) transport.store(*std::move(moved), std::memory_order_release);
    uint64_t old_lease = lease_id.load();
    if (auto st = Adopt(reply, sent); !st.ok()) return st;
    v1::ReleaseLeasesRequest release;
    release.add_lease_ids(old_lease);
    v1::ReleaseLeasesResponse ignored;
    auto ctx2 = client->Context();
    client->stub->ReleaseLeases(ctx2.get(), release, &ignored);
    return absl::OkStatus();
  }

  // Validates and resolves indices of one layer; refreshes once if the region may have grown.
  // The one check of a fetch from this handle: the destination holds the entries, the lease
  // holds, the layer and every index are readable; resolves the indices to pool offsets and says
  // how many bytes will land in dst. Region::Fetch and every batch use it.
  absl::Status PrepareFetch(int32_t layer, absl::Span<const int32_t> indices, absl::Span<const std::byte> dst,
                            absl::Span<int64_t> offsets, size_t* bytes) {
    size_t need = 0;
    if (!CheckedMul(indices.size(), static_cast<size_t>(geometry.entry_bytes), &need) || dst.size() < need) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "destination of %d bytes cannot hold %d entries of %d bytes of region '%s'", dst.size(), indices.size(),
          geometry.entry_bytes, key));
    }
    if (auto st = CheckLease(); !st.ok()) return st;
    if (auto st = Resolve(layer, indices, offsets); !st.ok()) return st;
    *bytes = need;
    return absl::OkStatus();
  }

  absl::Status Resolve(int32_t layer, absl::Span<const int32_t> indices, absl::Span<int64_t> offsets) {
    auto snapshot = table.load(std::memory_order_acquire);
    RegionLayout layout{&key, geometry, &snapshot->layers};
    absl::Status status = ResolveTopK(layout, layer, indices, committed.load(std::memory_order_acquire), offsets);
    if (status.ok() || status.code() != absl::StatusCode::kOutOfRange || sealed.load() || writable.load() ||
        layer < 0 || layer >= geometry.layers) {
      return status;
    }
    // Another handle may have appended since we last heard: look once more before refusing.
    {
      absl::MutexLock lock(&write_mu);
      if (!Refresh().ok()) return status;
    }
    snapshot = table.load(std::memory_order_acquire);
    layout.pages = &snapshot->layers;
    return ResolveTopK(layout, layer, indices, committed.load(std::memory_order_acquire), offsets);
  }

  absl::Status ReserveLocked(int64_t capacity_tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    v1::ExtendRegionRequest request;
    request.set_key(key);
    request.set_capacity_tokens(capacity_tokens);
    request.set_lease_id(lease_id.load());
    v1::ExtendRegionResponse reply;
    auto status = client->Call(&v1::Control::Stub::ExtendRegion, "ExtendRegion", request, &reply);
    if (!status.ok()) return status;
    auto next = ParseTable(reply.layers(), reply.info().capacity_tokens());
    if (!next.ok()) return next.status();
    table.store(*std::move(next), std::memory_order_release);
    return absl::OkStatus();
  }

  absl::Status CommitLocked(int64_t tokens, bool seal) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    v1::CommitRegionRequest request;
    request.set_key(key);
    request.set_committed_tokens(tokens);
    request.set_seal(seal);
    request.set_lease_id(lease_id.load());
    v1::CommitRegionResponse reply;
    auto status = client->Call(&v1::Control::Stub::CommitRegion, "CommitRegion", request, &reply);
    if (!status.ok()) return status;
    committed.store(reply.info().committed_tokens(), std::memory_order_release);
    sealed.store(reply.info().sealed());
    checksum.store(reply.info().checksum());
    has_checksum.store(reply.info().has_checksum());
    if (reply.info().sealed()) writable.store(false, std::memory_order_release);  // a sealed region has no writer
    return absl::OkStatus();
  }

  absl::Status WriteTokens(int32_t layer, int64_t first_token, absl::Span<const std::byte> entries) {
    if (auto s = CheckWritable("write"); !s.ok()) return s;
    if (auto s = CheckLease(); !s.ok()) return s;
    if (layer < 0 || layer >= geometry.layers) {
      return absl::OutOfRangeError(absl::StrFormat("layer %d of region '%s' is not in [0, %d)", layer, key, geometry.layers));
    }
    if (entries.size() % geometry.entry_bytes != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "write of %d bytes to region '%s' is not a whole number of %d-byte entries", entries.size(),
          key, geometry.entry_bytes));
    }
    const int64_t n = static_cast<int64_t>(entries.size() / geometry.entry_bytes);
    auto snapshot = table.load(std::memory_order_acquire);
    if (auto s = CheckTokenRange(first_token, n, snapshot->capacity_tokens,
                                 absl::StrFormat("write to layer %d of region '%s' (Reserve() or Append() grows the "
                                                 "capacity)", layer, key));
        !s.ok()) {
      return s;
    }
    std::vector<int64_t>& offsets = OffsetScratch(n);
    const auto& pages = snapshot->layers[layer];
    for (int64_t i = 0; i < n; ++i) {
      int64_t t = first_token + i;
      offsets[i] = geometry.EntryOffset(pages, t);
    }
    client->data.writes.fetch_add(1, std::memory_order_relaxed);
    client->data.written_bytes.fetch_add(static_cast<int64_t>(entries.size()), std::memory_order_relaxed);
    auto st = CurrentTransport()->Scatter(entries.data(), geometry.entry_bytes, absl::MakeConstSpan(offsets.data(), n));
    if (st.ok() && n > 0) {
      const int64_t end = first_token + n;
      int64_t seen = written_end.load();
      while (end > seen && !written_end.compare_exchange_weak(seen, end)) {
      }
    }
    return st;
  }
};


}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_CLIENT_STATE_H_
