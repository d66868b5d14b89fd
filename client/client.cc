// The client library: control-plane calls, region handles, lease renewal and the fetch path.
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
#include "client/cluster_internal.h"
#include "client/fetch_planner.h"
#include "client/internal.h"
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
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// The client stops trusting a lease this long before the daemon would let it lapse.
int64_t LeaseTrustNs(int64_t lease_ms) { return lease_ms * 1'000'000 * 4 / 5; }

// Per-thread scratch for resolved offsets: grows to the largest fetch a thread has made, then
// never allocates again.
std::vector<int64_t>& OffsetScratch(size_t n) {
  thread_local std::vector<int64_t> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch;
}

}  // namespace

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
    auto ctx = client->Context();
    auto status = FromGrpcStatus(client->stub->OpenRegion(ctx.get(), request, &reply), client->What("OpenRegion"));
    if (status.code() == absl::StatusCode::kFailedPrecondition && request.for_write()) {
      // The write lease lapsed and another handle took it (or the region was sealed meanwhile):
      // this handle stays open, read-only, instead of becoming unusable.
      SKV_LOG_WARN("sparsekv", "region '%s': this handle lost its write lease (%s); it is read-only now", key,
                   status.message());
      request.set_for_write(false);
      request.set_replaces_lease_id(0);
      sent = NowNs();
      auto retry = client->Context();
      status = FromGrpcStatus(client->stub->OpenRegion(retry.get(), request, &reply), client->What("OpenRegion"));
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
    auto ctx = client->Context();
    auto status = FromGrpcStatus(client->stub->ExtendRegion(ctx.get(), request, &reply), client->What("ExtendRegion"));
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
    auto ctx = client->Context();
    auto status = FromGrpcStatus(client->stub->CommitRegion(ctx.get(), request, &reply), client->What("CommitRegion"));
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

// ---------------------------------------------------------------------------------------------
// Client

absl::StatusOr<std::shared_ptr<Transport>> Client::Impl::TransportFor(const v1::TransportDescriptor& d) {
  std::string choice = options.transport == "tcp-gather" ? "tcp" : options.transport;
  if (choice != "auto" && choice != "shm" && choice != "tcp" && choice != "fabric" && choice != "verbs") {
    return absl::InvalidArgumentError(absl::StrFormat(
        "transport '%s' is not one of auto, shm, verbs, fabric, tcp", options.transport));
  }
  const auto& shm = d.shm();
  // One transport per pool and data-plane address: a restarted daemon may listen elsewhere.
  const std::string cache_key =
      absl::StrCat(choice, "|", shm.pool_uuid(), "|", d.gather_host(), ":", d.gather_port(), "/", d.gather_secret(), "|",
                   absl::BytesToHexString(d.fabric().address()), "|", d.verbs().host(), ":", d.verbs().port());
  {
    absl::MutexLock lock(&mu);
    if (auto it = transports.find(cache_key); it != transports.end()) return it->second;
  }
  std::string control_host = "127.0.0.1";
  if (options.server.rfind("unix:", 0) != 0) control_host = options.server.substr(0, options.server.rfind(':'));
  std::shared_ptr<Transport> transport;
  std::vector<std::string> tried;  // why each better transport was passed over
  auto want = [&](const char* name) { return choice == "auto" || choice == name; };
  auto register_all = [&](Transport* t) -> absl::Status {
    std::map<void*, size_t> buffers;
    {
      absl::MutexLock lock(&mu);
      buffers = registered_buffers;
    }
    for (const auto& [addr, bytes] : buffers) {
      if (auto st = t->RegisterBuffer(addr, bytes); !st.ok()) return st;
    }
    return absl::OkStatus();
  };
  if (want("shm")) {
    ShmPoolAddress address{shm.fd_socket_path(), shm.path(), shm.pool_bytes(), shm.pool_uuid(), shm.host_id(),
                           shm.arena_offset()};
    auto mapped = ShmTransport::Map(address);
    if (mapped.ok()) {
      transport = *std::move(mapped);
      transport->set_reason(choice == "shm" ? "forced by ClientOptions.transport" : "the pool can be mapped on this host");
    } else {
      tried.push_back(absl::StrCat("shm/CXL: ", mapped.status().message()));
    }
  }
  if (transport == nullptr && want("verbs")) {
    if (!d.has_verbs()) {
      tried.push_back("verbs: the daemon has no RDMA device");
    } else {
      auto opened = OpenVerbsTransport(d.verbs(), control_host, options.rpc_timeout_ms);
      if (opened.ok() && !register_all(opened->get()).ok()) opened = absl::ResourceExhaustedError("cannot register the client's buffers");
      if (opened.ok()) {
        transport = *std::move(opened);
        transport->set_reason(choice == "verbs" ? "forced by ClientOptions.transport" : "an RDMA device reaches the daemon");
      } else {
        tried.push_back(absl::StrCat("verbs: ", opened.status().message()));
      }
    }
  }
  // Hardware RMA beats a server-side gather; software RMA (tcp, sockets) does not: it would
  // turn each entry into a round trip of work on both hosts.
  auto open_fabric = [&](const char* why) {
    auto opened = OpenFabricTransport(d.fabric(), control_host, options.rpc_timeout_ms, options.fabric_force_staging);
    if (!opened.ok()) {
      tried.push_back(absl::StrCat("fabric: ", opened.status().message()));
      return;
    }
    if (auto st = register_all(opened->get()); !st.ok()) {
      tried.push_back(absl::StrCat("fabric: ", st.message()));
      return;
    }
    transport = *std::move(opened);
    transport->set_reason(why);
  };
  if (transport == nullptr && want("fabric")) {
    if (!d.has_fabric()) {
      tried.push_back("fabric: the daemon offers no libfabric endpoint");
    } else if (choice == "fabric") {
      open_fabric("forced by ClientOptions.transport");
    } else if (!d.fabric().software_rma()) {
      open_fabric(absl::StrCat("hardware RMA through libfabric provider ", d.fabric().provider()).c_str());
    } else {
      tried.push_back(absl::StrCat("fabric: provider ", d.fabric().provider(),
                                   " emulates RMA in software, server-side gather preferred"));
    }
  }
  // The daemon's tcp-gather path: reads for clients that cannot map the pool, and the checked
  // write path of the one-sided transports.
  auto tcp_gather = [&]() -> std::shared_ptr<Transport> {
    // 0.0.0.0 means: the host this client reached the control plane on.
    std::string host = d.gather_host();
    if (host.empty() || host == "0.0.0.0") host = control_host;
    return std::make_shared<TcpGatherTransport>(host, d.gather_port(), options.rpc_timeout_ms,
                                                options.data_connections, d.gather_secret());
  };
  if (transport == nullptr && want("tcp")) {
    if (d.gather_port() <= 0) {
      tried.push_back("tcp-gather: the daemon offers no tcp-gather path");
    } else {
      transport = tcp_gather();
      transport->set_reason(choice == "tcp" ? "forced by ClientOptions.transport" : "server-side gather over TCP");
    }
  }
  if (transport == nullptr && choice == "auto" && d.has_fabric() && d.fabric().software_rma()) {
    open_fabric("the only path left: libfabric RMA in software");
  }
  if (transport == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("no data-plane transport reaches the pool of ", options.server,
                                                      " (transport ", choice, "): ", absl::StrJoin(tried, "; ")));
  }
  // One-sided transports read only; their writes go through the daemon's checked tcp-gather path.
  if (auto* rma = dynamic_cast<RmaTransport*>(transport.get()); rma != nullptr && d.gather_port() > 0) {
    rma->set_write_path(tcp_gather());
  }
  if (!tried.empty() && choice == "auto") {
    transport->set_reason(absl::StrCat(transport->reason(), " (passed over: ", absl::StrJoin(tried, "; "), ")"));
  }
  SKV_LOG_INFO("sparsekv", "data plane to %s: %s, because %s", options.server, transport->name(), transport->reason());
  absl::MutexLock lock(&mu);
  auto [it, inserted] = transports.emplace(cache_key, transport);
  return it->second;
}

void Client::Impl::RenewOnce() {
  std::vector<std::shared_ptr<Region::State>> live;
  {
    absl::MutexLock lock(&mu);
    for (auto it = open.begin(); it != open.end();) {
      if (auto s = it->second.lock()) {
        if (!s->revoked.load()) live.push_back(std::move(s));  // a revoked handle stays revoked
        ++it;
      } else {
        open.erase(it++);
      }
    }
  }
  if (live.empty()) return;
  v1::RenewLeasesRequest request;
  for (const auto& s : live) request.add_lease_ids(s->lease_id.load());
  auto* stats = request.mutable_stats();
  const auto reporting = live.front()->CurrentTransport();
  stats->set_transport(reporting->name());
  stats->set_transport_reason(reporting->reason());
  stats->set_client_id(client_id);
  stats->set_fetches(data.fetches.exchange(0));
  stats->set_fetched_entries(data.fetched_entries.exchange(0));
  stats->set_fetched_bytes(data.fetched_bytes.exchange(0));
  stats->set_writes(data.writes.exchange(0));
  stats->set_written_bytes(data.written_bytes.exchange(0));
  v1::RenewLeasesResponse reply;
  int64_t sent = NowNs();
  auto ctx = Context();
  auto status = FromGrpcStatus(stub->RenewLeases(ctx.get(), request, &reply), What("RenewLeases"));
  if (!status.ok()) {  // not reported: count it again next time
    CountFetch(stats->fetches(), stats->fetched_entries(), stats->fetched_bytes());
    data.writes.fetch_add(stats->writes());
    data.written_bytes.fetch_add(stats->written_bytes());
  }
  if (!status.ok() || reply.leases_size() != static_cast<int>(live.size())) {
    std::string why = status.ok() ? "malformed renewal reply" : std::string(status.message());
    for (const auto& s : live) {
      absl::MutexLock lock(&s->mu);
      s->renew_error = why;
    }
    return;
  }
  for (size_t i = 0; i < live.size(); ++i) {
    Region::State& s = *live[i];
    const auto& state = reply.leases(static_cast<int>(i));
    if (state.lease_id() != s.lease_id.load()) continue;  // refreshed meanwhile
    if (state.valid()) {
      s.lease_deadline_ns.store(sent + LeaseTrustNs(state.lease_ms()), std::memory_order_release);
      // Committed length only grows; a concurrent local commit may be ahead of this reply.
      int64_t seen = s.committed.load();
      while (state.committed_tokens() > seen &&
             !s.committed.compare_exchange_weak(seen, state.committed_tokens())) {
      }
      if (state.sealed()) s.sealed.store(true);
      absl::MutexLock lock(&s.mu);
      s.renew_error.clear();
    } else {
      // The lease is gone, but the region may not be: after a daemon restart, or a lease that
      // lapsed in a network hiccup, reopening the same region (same id) continues safely.
      bool reopened = false;
      {
        absl::MutexLock lock(&s.write_mu);
        reopened = s.Refresh().ok();
      }
      if (!reopened) {
        {
          absl::MutexLock lock(&s.mu);
          s.revoked_reason = state.reason();
        }
        s.revoked.store(true, std::memory_order_release);
      }
    }
  }
}

void Client::Impl::RenewLoop() {
  absl::MutexLock lock(&mu);
  auto last = Clock::now();
  while (!stopping) {
    // Renew four times per lease period, so a lost or slow renewal still leaves time for
    // another. Wake often enough to notice a shorter lease granted since.
    mu.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(25));
    if (stopping) break;
    if (Clock::now() - last < std::chrono::milliseconds(lease_ms.load() / 4)) continue;
    last = Clock::now();
    mu.Unlock();
    RenewOnce();
    mu.Lock();
  }
}

Client::Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Client::~Client() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->renewer.joinable()) impl_->renewer.join();
}

const ClientOptions& Client::options() const { return impl_->options; }

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.fetch_threads < 1 || options.fetch_threads > 256) {
    return absl::InvalidArgumentError(absl::StrFormat("fetch_threads must be in [1, 256], got %d", options.fetch_threads));
  }
  if (options.rpc_timeout_ms <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("rpc_timeout_ms must be positive, got %d", options.rpc_timeout_ms));
  }
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  if (!options.cluster.empty()) {
    auto cluster = ClusterClient::Make(options);
    if (!cluster.ok()) return cluster.status();
    impl->cluster = *std::move(cluster);
    return std::unique_ptr<Client>(new Client(std::move(impl)));
  }
  {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    std::random_device rd;
    impl->client_id = absl::StrFormat("%s:%d:%08x", host, getpid(), rd());
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // A call that dies with its connection (daemon restarting) is retried on the new one.
  args.SetServiceConfigJSON(R"({"methodConfig":[{"name":[{"service":"sparsekv.v1.Control"}],
      "retryPolicy":{"maxAttempts":3,"initialBackoff":"0.05s","maxBackoff":"0.5s",
                     "backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]})");
  const ControlPlaneSecurity security =
      WithEnvironment({options.token, options.tls_ca_file, options.tls_cert_file, options.tls_key_file});
  auto credentials = ChannelCredentialsFor(security);
  if (!credentials.ok()) return credentials.status();
  impl->token = security.token;
  impl->channel = grpc::CreateCustomChannel(options.server, *credentials, args);
  const int64_t connect_ms = options.connect_timeout_ms > 0 ? options.connect_timeout_ms : options.rpc_timeout_ms;
  if (!impl->channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::milliseconds(connect_ms))) {
    return absl::UnavailableError(absl::StrFormat(
        "cannot reach sparsekvd at %s within %d ms%s", options.server, connect_ms,
        security.ca_file.empty() ? " (plaintext; a TLS-only daemon refuses it)"
                                 : " (TLS: the handshake fails if the daemon's certificate is not signed by the CA given, "
                                   "or it requires a client certificate this client does not present)"));
  }
  impl->stub = v1::Control::NewStub(impl->channel);
  if (options.fetch_threads > 1) impl->fetch_workers = std::make_unique<WorkerPool>(options.fetch_threads - 1);
  if (options.renew_leases) {
    impl->renewer = std::thread([raw = impl.get()] { raw->RenewLoop(); });
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

namespace {

absl::StatusOr<std::shared_ptr<Region::State>> MakeState(const std::shared_ptr<Client::Impl>& impl,
                                                         const v1::OpenRegionResponse& reply,
                                                         int64_t sent_ns) {
  auto state = std::make_shared<Region::State>();
  state->client = impl;
  state->key = reply.info().key();
  state->region_id = reply.info().region_id();
  const auto& g = reply.info().geometry();
  state->geometry.layers = g.layers();
  state->geometry.entry_bytes = g.entry_bytes();
  state->geometry.entry_stride_bytes = g.entry_stride_bytes();
  state->geometry.tokens_per_page = g.tokens_per_page();
  state->geometry.page_bytes = g.page_bytes();
  int64_t page_span = 0;
  if (g.layers() <= 0 || g.entry_bytes() <= 0 || g.tokens_per_page() <= 0 || g.page_bytes() <= 0 ||
      g.entry_stride_bytes() < g.entry_bytes() || reply.layers_size() != g.layers() ||
      !CheckedMul(int64_t{g.tokens_per_page()}, int64_t{g.entry_stride_bytes()}, &page_span) ||
      page_span > g.page_bytes()) {
    return absl::DataLossError(absl::StrFormat("the daemon described region '%s' inconsistently", state->key));
  }
  if (const auto& shm = reply.transport().shm(); shm.pool_bytes() > 0) {
    state->page_lo = shm.arena_offset() / g.page_bytes();
    state->page_hi = (shm.arena_offset() + shm.pool_bytes()) / g.page_bytes();
  }
  auto transport = impl->TransportFor(reply.transport());
  if (!transport.ok()) return transport.status();
  state->transport.store(*std::move(transport), std::memory_order_release);
  if (auto st = state->Adopt(reply, sent_ns); !st.ok()) return st;
  return state;
}

// Turns an open or create reply into a handle the renewer knows about. If this client cannot
// use it (no transport reaches the pool), gives back what the reply granted: the lease, and the
// region itself when this call created it, so nothing is left behind that nobody can write.
absl::StatusOr<std::shared_ptr<Region::State>> AdoptReply(const std::shared_ptr<Client::Impl>& impl,
                                                          const v1::OpenRegionResponse& reply,
                                                          int64_t sent_ns, bool created) {
  auto state = MakeState(impl, reply, sent_ns);
  if (!state.ok()) {
    v1::ReleaseLeasesRequest release;
    release.add_lease_ids(reply.lease().lease_id());
    v1::ReleaseLeasesResponse released;
    auto ctx = impl->Context();
    impl->stub->ReleaseLeases(ctx.get(), release, &released);
    if (created) {
      v1::DeleteRegionRequest del;
      del.set_key(reply.info().key());
      v1::DeleteRegionResponse deleted;
      auto ctx2 = impl->Context();
      impl->stub->DeleteRegion(ctx2.get(), del, &deleted);
    }
    return state.status();
  }
  // Setting up the first transport to a daemon (loading the RMA plugin, a provider's start-up)
  // can take longer than the lease can be trusted: take a fresh one before handing it out.
  if (!(*state)->CheckLease().ok()) {
    absl::MutexLock lock(&(*state)->write_mu);
    if (auto st = (*state)->Refresh(); !st.ok()) return st;
  }
  absl::MutexLock lock(&impl->mu);
  impl->open[state->get()] = *state;
  return state;
}

}  // namespace

namespace {

v1::CreateRegionRequest CreateRequest(const RegionSpec& spec) {
  v1::CreateRegionRequest request;
  request.set_key(spec.key);
  request.set_layers(spec.layers);
  request.set_entry_bytes(spec.entry_bytes);
  request.set_capacity_tokens(spec.capacity_tokens);
  request.set_ttl_ms(spec.ttl_ms);
  request.set_replicas(spec.replicas);
  return request;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Region>> Client::Create(const RegionSpec& spec) {
  if (spec.replicas < 1 || spec.replicas > 16) {
    return absl::InvalidArgumentError(absl::StrFormat("region '%s': replicas %d, want 1 to 16", spec.key, spec.replicas));
  }
  if (impl_->cluster) return impl_->cluster->Create(spec);
  return CreateFrom(CreateRequest(spec));
}

absl::StatusOr<std::shared_ptr<Region>> ClusterInternals::CreateReplica(Client& client, const RegionSpec& spec,
                                                                        const std::string& source_node) {
  v1::CreateRegionRequest request = CreateRequest(spec);
  request.set_replica_of(source_node);
  return client.CreateFrom(request);
}

absl::StatusOr<v1::ReplicateRegionResponse> ClusterInternals::Replicate(Client& client, const std::string& key,
                                                                        int32_t replicas, bool exclude_self) {
  v1::ReplicateRegionRequest request;
  request.set_key(key);
  request.set_replicas(replicas);
  request.set_exclude_self(exclude_self);
  v1::ReplicateRegionResponse reply;
  auto ctx = client.impl_->Context();
  // Copying a large region takes longer than a control call.
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  auto status = FromGrpcStatus(client.impl_->stub->ReplicateRegion(ctx.get(), request, &reply),
                               client.impl_->What("ReplicateRegion"));
  if (!status.ok()) return status;
  return reply;
}

absl::StatusOr<std::string> ClusterInternals::Namespace(Client& client) {
  v1::ListRegionsRequest request;
  request.set_key_prefix(std::string(1, '\x01'));  // matches no key: only the namespace comes back
  request.set_limit(1);
  v1::ListRegionsResponse reply;
  auto ctx = client.impl_->Context();
  auto status = FromGrpcStatus(client.impl_->stub->ListRegions(ctx.get(), request, &reply),
                               client.impl_->What("ListRegions"));
  if (!status.ok()) return status;
  return reply.key_prefix();
}

absl::StatusOr<std::shared_ptr<Region>> Client::CreateFrom(const v1::CreateRegionRequest& request) {
  v1::OpenRegionResponse reply;
  int64_t sent = NowNs();
  auto ctx = impl_->Context();
  auto status = FromGrpcStatus(impl_->stub->CreateRegion(ctx.get(), request, &reply), impl_->What("CreateRegion"));
  if (!status.ok()) return status;
  auto state = AdoptReply(impl_, reply, sent, /*created=*/true);
  if (!state.ok()) return state.status();
  return std::shared_ptr<Region>(new Region(*std::move(state)));
}

absl::StatusOr<std::shared_ptr<Region>> Client::Open(const std::string& key) { return OpenRegion(key, false); }

absl::StatusOr<std::shared_ptr<Region>> Client::OpenForWrite(const std::string& key) { return OpenRegion(key, true); }

absl::StatusOr<std::shared_ptr<Region>> Client::OpenRegion(const std::string& key, bool for_write) {
  if (impl_->cluster) return impl_->cluster->Open(key, for_write);
  v1::OpenRegionRequest request;
  request.set_key(key);
  request.set_for_write(for_write);
  v1::OpenRegionResponse reply;
  int64_t sent = NowNs();
  auto ctx = impl_->Context();
  auto status = FromGrpcStatus(impl_->stub->OpenRegion(ctx.get(), request, &reply), impl_->What("OpenRegion"));
  if (!status.ok()) return status;
  auto state = AdoptReply(impl_, reply, sent, /*created=*/false);
  if (!state.ok()) return state.status();
  return std::shared_ptr<Region>(new Region(*std::move(state)));
}

absl::Status Client::Delete(const std::string& key) {
  if (impl_->cluster) return impl_->cluster->Delete(key);
  v1::DeleteRegionRequest request;
  request.set_key(key);
  v1::DeleteRegionResponse reply;
  auto ctx = impl_->Context();
  return FromGrpcStatus(impl_->stub->DeleteRegion(ctx.get(), request, &reply), impl_->What("DeleteRegion"));
}

absl::StatusOr<std::vector<RegionInfo>> Client::List(const std::string& key_prefix) {
  if (impl_->cluster) return impl_->cluster->List(key_prefix);
  v1::ListRegionsRequest request;
  request.set_key_prefix(key_prefix);
  request.set_limit(10000);
  v1::ListRegionsResponse reply;
  auto ctx = impl_->Context();
  auto status = FromGrpcStatus(impl_->stub->ListRegions(ctx.get(), request, &reply), impl_->What("ListRegions"));
  if (!status.ok()) return status;
  std::vector<RegionInfo> out;
  for (const auto& r : reply.regions()) {
    RegionInfo info;
    info.key = r.key();
    info.region_id = r.region_id();
    info.layers = r.geometry().layers();
    info.entry_bytes = r.geometry().entry_bytes();
    info.entry_stride_bytes = r.geometry().entry_stride_bytes();
    info.capacity_tokens = r.capacity_tokens();
    info.committed_tokens = r.committed_tokens();
    info.sealed = r.sealed();
    info.bytes = r.bytes();
    info.active_leases = r.active_leases();
    info.created_unix_ms = r.created_unix_ms();
    info.has_checksum = r.has_checksum();
    info.checksum = r.checksum();
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<PoolStats> Client::Stats() {
  if (impl_->cluster) return impl_->cluster->Stats();
  v1::StatsResponse reply;
  auto ctx = impl_->Context();
  auto status = FromGrpcStatus(impl_->stub->Stats(ctx.get(), v1::StatsRequest(), &reply), impl_->What("Stats"));
  if (!status.ok()) return status;
  PoolStats out;
  out.pool_bytes = reply.pool_bytes();
  out.used_bytes = reply.used_bytes();
  out.free_bytes = reply.free_bytes();
  out.quarantined_bytes = reply.quarantined_bytes();
  out.regions = reply.regions();
  out.active_leases = reply.active_leases();
  out.evictions = reply.evictions();
  out.abandoned_regions = reply.abandoned_regions();
  out.backing = reply.backing_detail();
  return out;
}

absl::StatusOr<std::vector<NodeInfo>> Client::Nodes() {
  if (!impl_->cluster) return absl::FailedPreconditionError("Nodes: this client talks to one daemon, not a cluster");
  return impl_->cluster->Nodes();
}

absl::Status Client::Replicate(const std::string& key, int32_t replicas) {
  if (!impl_->cluster) return absl::FailedPreconditionError("Replicate: this client talks to one daemon, not a cluster");
  return impl_->cluster->Replicate(key, replicas);
}

absl::Status Client::RegisterBuffer(void* addr, size_t bytes) {
  if (addr == nullptr || bytes == 0) return absl::InvalidArgumentError("RegisterBuffer: empty buffer");
  if (impl_->cluster) return impl_->cluster->RegisterBuffer(addr, bytes);
  std::vector<std::shared_ptr<Transport>> live;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->registered_buffers[addr] = bytes;
    for (const auto& [key, t] : impl_->transports) live.push_back(t);
  }
  for (const auto& t : live) {
    if (auto st = t->RegisterBuffer(addr, bytes); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status Client::UnregisterBuffer(void* addr) {
  if (impl_->cluster) return impl_->cluster->UnregisterBuffer(addr);
  std::vector<std::shared_ptr<Transport>> live;
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->registered_buffers.erase(addr) == 0) {
      return absl::NotFoundError(absl::StrFormat("no buffer registered at %p", addr));
    }
    for (const auto& [key, t] : impl_->transports) live.push_back(t);
  }
  for (const auto& t : live) (void)t->UnregisterBuffer(addr);
  return absl::OkStatus();
}

std::vector<std::string> Client::TransportChoices() const {
  std::vector<std::string> out;
  if (impl_->cluster) {
    for (const auto& [id, client] : impl_->cluster->Connected()) {
      for (auto& line : client->TransportChoices()) out.push_back(absl::StrCat(id, " ", line));
    }
    return out;
  }
  absl::MutexLock lock(&impl_->mu);
  for (const auto& [key, t] : impl_->transports) out.push_back(absl::StrCat(t->name(), ": ", t->reason()));
  return out;
}

absl::Status Client::FetchBatch(absl::Span<const FetchItem> items) {
  if (impl_->cluster) return ClusterFetchBatch(items);
  size_t total = 0;
  for (const auto& item : items) total += item.indices.size();
  std::vector<int64_t>& offsets = OffsetScratch(total);
  // Pass 1: validate and resolve everything; nothing is written until all of it is good.
  std::vector<size_t> starts(items.size());  // where each item's offsets begin
  size_t bytes = 0;
  size_t at = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const FetchItem& item = items[i];
    if (item.region == nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("batch item %d has no region", i));
    }
    Region::State& s = *item.region->state_;
    if (s.client != impl_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: region '%s' was opened by another client", i, s.key));
    }
    size_t need = 0;
    if (!CheckedMul(item.indices.size(), static_cast<size_t>(s.geometry.entry_bytes), &need) ||
        item.dst.size() < need) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: destination of %d bytes cannot hold %d entries of %d bytes of region '%s'",
          i, item.dst.size(), item.indices.size(), s.geometry.entry_bytes, s.key));
    }
    if (auto st = s.CheckLease(); !st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
    if (auto st = s.Resolve(item.layer, item.indices, absl::MakeSpan(offsets.data() + at, item.indices.size()));
        !st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
    starts[i] = at;
    bytes += need;
    at += item.indices.size();
  }
  // Pass 2: move the bytes, on helper threads too when the batch is large.
  absl::Mutex error_mu;
  absl::Status error;
  const int64_t* resolved = offsets.data();
  std::function<void(size_t)> copy_item = [&](size_t i) {
    Region::State& s = *items[i].region->state_;
    auto st = s.CurrentTransport()->Gather(absl::MakeConstSpan(resolved + starts[i], items[i].indices.size()),
                                  s.geometry.entry_bytes, items[i].dst.data());
    if (!st.ok()) {
      absl::MutexLock lock(&error_mu);
      if (error.ok()) error = absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
  };
  std::shared_ptr<Transport> shared = items.empty() ? nullptr : items[0].region->state_->CurrentTransport();
  for (const FetchItem& item : items) {
    if (shared != nullptr && item.region->state_->CurrentTransport() != shared) shared = nullptr;
  }
  if (shared != nullptr && shared->prefers_batch()) {
    // A network transport keeps the whole batch in flight itself.
    std::vector<GatherWork> work(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      work[i] = {absl::MakeConstSpan(resolved + starts[i], items[i].indices.size()),
                 items[i].region->state_->geometry.entry_bytes, items[i].dst.data()};
    }
    error = shared->GatherBatch(work);
  } else if (impl_->fetch_workers && static_cast<int64_t>(bytes) >= impl_->options.fetch_parallel_min_bytes) {
    impl_->fetch_workers->ParallelFor(items.size(), copy_item);
  } else {
    for (size_t i = 0; i < items.size(); ++i) copy_item(i);
  }
  if (!error.ok()) return error;
  impl_->CountFetch(static_cast<int64_t>(items.size()), static_cast<int64_t>(total), static_cast<int64_t>(bytes));
  // The leases must still have held when the last byte was copied.
  for (size_t i = 0; i < items.size(); ++i) {
    if (auto st = items[i].region->state_->CheckLease(); !st.ok()) {
      return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    }
  }
  return absl::OkStatus();
}

// A cluster batch: checked whole first (so an error names the item and nothing is fetched), then
// split by node, every node's part in flight at once.
absl::Status Client::ClusterFetchBatch(absl::Span<const FetchItem> items) {
  const auto nodes = impl_->cluster->Connected();
  std::vector<std::vector<FetchItem>> parts(nodes.size());
  std::vector<std::vector<size_t>> origin(nodes.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const FetchItem& item = items[i];
    if (item.region == nullptr) return absl::InvalidArgumentError(absl::StrFormat("batch item %d has no region", i));
    Region::State& s = *item.region->state_;
    size_t part = nodes.size();
    for (size_t n = 0; n < nodes.size(); ++n) {
      if (nodes[n].second->impl_ == s.client) part = n;
    }
    if (part == nodes.size()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("batch item %d: region '%s' was opened by another client", i, s.key));
    }
    size_t need = 0;
    if (!CheckedMul(item.indices.size(), static_cast<size_t>(s.geometry.entry_bytes), &need) || item.dst.size() < need) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "batch item %d: destination of %d bytes cannot hold %d entries of %d bytes of region '%s'", i,
          item.dst.size(), item.indices.size(), s.geometry.entry_bytes, s.key));
    }
    if (auto st = s.CheckLease(); !st.ok()) return absl::Status(st.code(), absl::StrFormat("batch item %d: %s", i, st.message()));
    if (item.layer < 0 || item.layer >= s.geometry.layers) {
      return absl::OutOfRangeError(absl::StrFormat("batch item %d: layer %d of region '%s' with %d layers", i,
                                                   item.layer, s.key, s.geometry.layers));
    }
    const int64_t committed = s.committed.load();
    for (int32_t index : item.indices) {
      if (index < 0 || index >= committed) {
        return absl::OutOfRangeError(absl::StrFormat(
            "batch item %d: token index %d of region '%s' is outside [0, %d) (committed)", i, index, s.key, committed));
      }
    }
    parts[part].push_back(item);
    origin[part].push_back(i);
  }
  std::vector<size_t> used;
  for (size_t n = 0; n < parts.size(); ++n) {
    if (!parts[n].empty()) used.push_back(n);
  }
  absl::Mutex error_mu;
  absl::Status error;
  auto run = [&](size_t u) {
    const size_t n = used[u];
    auto st = nodes[n].second->FetchBatch(parts[n]);
    if (!st.ok()) {
      absl::MutexLock lock(&error_mu);
      if (error.ok()) error = absl::Status(st.code(), absl::StrFormat("node %s: %s", nodes[n].first, st.message()));
    }
  };
  if (used.size() == 1) run(0);
  else if (used.size() > 1) impl_->cluster->workers()->ParallelFor(used.size(), run);
  return error;
}

// ---------------------------------------------------------------------------------------------
// Region

Region::Region(std::shared_ptr<State> state) : state_(std::move(state)) {}

Region::~Region() {
  Client::Impl* impl = state_->client.get();
  {
    absl::MutexLock lock(&impl->mu);
    impl->open.erase(state_.get());
  }
  v1::ReleaseLeasesRequest request;
  request.add_lease_ids(state_->lease_id.load());
  v1::ReleaseLeasesResponse ignored;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  if (!impl->token.empty()) ctx.AddMetadata("authorization", "Bearer " + impl->token);
  impl->stub->ReleaseLeases(&ctx, request, &ignored);  // best effort: unreleased leases expire
}

const std::string& Region::key() const { return state_->key; }
int32_t Region::layers() const { return state_->geometry.layers; }
int32_t Region::entry_bytes() const { return state_->geometry.entry_bytes; }
int32_t Region::entry_stride_bytes() const { return state_->geometry.entry_stride_bytes; }
int32_t Region::tokens_per_page() const { return state_->geometry.tokens_per_page; }
int64_t Region::capacity_tokens() const { return state_->table.load()->capacity_tokens; }
int64_t Region::committed_tokens() const { return state_->committed.load(); }
bool Region::sealed() const { return state_->sealed.load(); }
absl::Status Region::LeaseStatus() const { return state_->CheckLease(); }
std::string Region::transport_name() const { return state_->CurrentTransport()->name(); }

absl::Status Region::Write(int32_t layer, int64_t first_token, absl::Span<const std::byte> entries) {
  return state_->WriteTokens(layer, first_token, entries);
}

absl::Status Region::Append(absl::Span<const std::byte> entries, int64_t tokens) {
  State& s = *state_;
  if (auto st = s.CheckWritable("append"); !st.ok()) return st;
  if (tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("append to region '%s' of %d tokens", s.key, tokens));
  }
  int64_t per_layer_bytes = 0, all_bytes = 0;
  if (auto st = CheckedBytes(tokens, s.geometry.entry_bytes, absl::StrFormat("append to region '%s'", s.key),
                             &per_layer_bytes);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckedBytes(per_layer_bytes, s.geometry.layers, absl::StrFormat("append to region '%s'", s.key),
                             &all_bytes);
      !st.ok()) {
    return st;
  }
  const size_t per_layer = static_cast<size_t>(per_layer_bytes);
  if (entries.size() != static_cast<size_t>(all_bytes)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "append of %d tokens to region '%s' needs %d bytes (%d layers x %d tokens x %d bytes), got %d",
        tokens, s.key, per_layer * s.geometry.layers, s.geometry.layers, tokens, s.geometry.entry_bytes,
        entries.size()));
  }
  absl::MutexLock lock(&s.write_mu);
  if (s.sealed.load()) {
    return absl::FailedPreconditionError(absl::StrFormat("region '%s' is sealed; it accepts no appends", s.key));
  }
  const int64_t first = s.committed.load();
  int64_t end = 0;
  if (!CheckedAdd(first, tokens, &end)) {
    return absl::OutOfRangeError(absl::StrFormat("append of %d tokens to region '%s' at %d overflows", tokens, s.key, first));
  }
  if (end > s.table.load()->capacity_tokens) {
    // Grow by whole pages: pages are what memory costs anyway.
    int64_t grown = s.geometry.PagesPerLayer(end) * s.geometry.tokens_per_page;
    if (auto st = s.ReserveLocked(grown); !st.ok()) return st;
  }
  for (int32_t layer = 0; layer < s.geometry.layers; ++layer) {
    if (auto st = s.WriteTokens(layer, first, entries.subspan(layer * per_layer, per_layer)); !st.ok()) return st;
  }
  return s.CommitLocked(end, /*seal=*/false);
}

absl::Status Region::Reserve(int64_t capacity_tokens) {
  if (auto st = state_->CheckWritable("reserve"); !st.ok()) return st;
  absl::MutexLock lock(&state_->write_mu);
  if (capacity_tokens <= state_->table.load()->capacity_tokens) return absl::OkStatus();
  return state_->ReserveLocked(capacity_tokens);
}

absl::Status Region::Commit(int64_t committed_tokens) {
  if (auto st = state_->CheckWritable("commit"); !st.ok()) return st;
  absl::MutexLock lock(&state_->write_mu);
  return state_->CommitLocked(committed_tokens, /*seal=*/false);
}

absl::Status Region::Seal() {
  State& s = *state_;
  absl::MutexLock lock(&s.write_mu);
  if (s.sealed.load() && s.has_checksum.load()) return absl::OkStatus();  // sealing twice is harmless
  if (auto st = s.CheckWritable("seal"); !st.ok()) return st;
  const int64_t committed = s.committed.load();
  const int64_t written = s.written_end.load();
  if (written > committed) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "seal of region '%s' refused: this handle wrote tokens up to %d but only %d are committed; Commit(%d) "
        "first (or Commit the length you mean to keep), then Seal()",
        s.key, written, committed, written));
  }
  return s.CommitLocked(committed, /*seal=*/true);
}

absl::Status Region::ReleaseWrite() {
  State& s = *state_;
  absl::MutexLock lock(&s.write_mu);
  if (!s.writable.load()) return absl::OkStatus();
  return s.Refresh(/*keep_write=*/false);
}

bool Region::writable() const { return state_->writable.load(); }

absl::Status Region::Refresh() {
  absl::MutexLock lock(&state_->write_mu);
  return state_->Refresh();
}

absl::Status Region::Verify() const {
  State& s = *state_;
  if (!s.has_checksum.load()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "region '%s' has no checksum: only sealed regions can be verified", s.key));
  }
  // Read every committed entry through this handle's transport and hash it as the daemon did.
  const int64_t committed = s.committed.load();
  const int64_t chunk = 8192;
  std::vector<int32_t> indices;
  std::vector<std::byte> buf(static_cast<size_t>(chunk) * s.geometry.entry_bytes);
  XXH3_state_t* hash = XXH3_createState();
  XXH3_64bits_reset(hash);
  absl::Status status;
  for (int32_t layer = 0; layer < s.geometry.layers && status.ok(); ++layer) {
    for (int64_t first = 0; first < committed && status.ok(); first += chunk) {
      int64_t n = std::min(chunk, committed - first);
      indices.resize(n);
      for (int64_t i = 0; i < n; ++i) indices[i] = static_cast<int32_t>(first + i);
      status = Fetch(layer, indices, absl::MakeSpan(buf.data(), static_cast<size_t>(n) * s.geometry.entry_bytes));
      if (status.ok()) XXH3_64bits_update(hash, buf.data(), static_cast<size_t>(n) * s.geometry.entry_bytes);
    }
  }
  uint64_t now = XXH3_64bits_digest(hash);
  XXH3_freeState(hash);
  if (!status.ok()) return status;
  if (now != s.checksum.load()) {
    return absl::DataLossError(absl::StrFormat(
        "region '%s' changed since it was sealed: checksum %016x at seal, %016x read now", s.key,
        s.checksum.load(), now));
  }
  return absl::OkStatus();
}

absl::Status Region::Fetch(int32_t layer, absl::Span<const int32_t> indices, absl::Span<std::byte> dst) const {
  State& s = *state_;
  size_t need = 0;
  if (!CheckedMul(indices.size(), static_cast<size_t>(s.geometry.entry_bytes), &need) || dst.size() < need) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "destination of %d bytes cannot hold %d entries of %d bytes of region '%s'", dst.size(),
        indices.size(), s.geometry.entry_bytes, s.key));
  }
  if (auto st = s.CheckLease(); !st.ok()) return st;
  std::vector<int64_t>& offsets = OffsetScratch(indices.size());
  auto resolved = absl::MakeSpan(offsets.data(), indices.size());
  if (auto st = s.Resolve(layer, indices, resolved); !st.ok()) return st;
  if (auto st = s.CurrentTransport()->Gather(resolved, s.geometry.entry_bytes, dst.data()); !st.ok()) return st;
  s.client->CountFetch(1, static_cast<int64_t>(indices.size()), static_cast<int64_t>(need));
  return s.CheckLease();  // the lease must still have held when the copy finished
}

RegionView ViewOf(const Region& region) {
  const Region::State& s = *region.state_;
  RegionView view;
  view.geometry = s.geometry;
  view.table = s.table.load(std::memory_order_acquire);
  view.committed_tokens = s.committed.load(std::memory_order_acquire);
  view.transport = s.CurrentTransport();
  return view;
}

}  // namespace sparsekv
