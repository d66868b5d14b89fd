// libsparsekv: the client that decode and prefill servers link to read and write latent-cache
// regions held by sparsekvd.
//
// A Client holds one control-plane connection (gRPC over TCP or a Unix socket), the mappings of
// the pools it reaches (shm/CXL), and a background thread that renews the leases of every open
// Region. Fetches never talk to the daemon: they resolve token indices to pool addresses from
// the cached page tables and copy entries straight from the mapped pool.
//
// Thread-safe: many decode threads share one Client and its Regions.
//
// Errors are absl::Status with the daemon's codes: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
// RESOURCE_EXHAUSTED, FAILED_PRECONDITION, OUT_OF_RANGE, UNAVAILABLE, DEADLINE_EXCEEDED.
#ifndef SPARSEKV_CLIENT_H_
#define SPARSEKV_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "sparsekv/region.h"

namespace sparsekv {

namespace v1 {
class CreateRegionRequest;  // private: the generated control-plane messages are not installed
}

struct ClientOptions {
  // "HOST:PORT" or "unix:/path/to/control.sock".
  std::string server = "127.0.0.1:7370";
  // A cluster instead of one daemon: "etcd://HOST:PORT[,HOST:PORT...]/NAME" (then `server` is
  // not used). The client reads membership and the region directory from etcd, places new
  // regions by weighted rendezvous hashing over the nodes' free capacity, opens each node's
  // connection on first use, and spreads a FetchBatch over the nodes its items live on. Every
  // other option applies to each node's connection.
  std::string cluster;
  // Deadline of every control-plane call.
  int64_t rpc_timeout_ms = 5000;
  // How long Connect waits for the daemon to answer (0: rpc_timeout_ms). Cluster clients connect
  // to a node with at most 2000 ms, so a node that died a moment ago costs no more than that.
  int64_t connect_timeout_ms = 0;
  // Data-plane transport:
  //   "auto"   shm/CXL when the pool can be mapped; else verbs when an RDMA device reaches the
  //            daemon; else libfabric RMA on a hardware provider; else the server-side gather
  //            over TCP; else libfabric RMA in software (tcp provider)
  //   "shm", "verbs", "fabric" (one-sided libfabric RMA), "tcp" (server-side gather): forced.
  // The choice and its reason are logged and reported to the daemon (sparsekvctl status).
  std::string transport = "auto";
  // Fabric transport: send every unregistered buffer through the registered staging area even
  // where the provider does not need local registration (tests of the staging path).
  bool fabric_force_staging = false;
  // Renew the leases of open regions in the background (turn off only in tests of lease expiry).
  bool renew_leases = true;
  // Threads that copy one FetchBatch: 1 copies on the calling thread only; N adds N-1 helper
  // threads owned by the Client, used for batches of at least fetch_parallel_min_bytes.
  int32_t fetch_threads = 1;
  int64_t fetch_parallel_min_bytes = int64_t{4} << 20;
  // Control-plane security (empty: from SPARSEKV_TOKEN, SPARSEKV_TLS_CA, SPARSEKV_TLS_CERT,
  // SPARSEKV_TLS_KEY). token: the tenant's bearer token, sent with every call. tls_ca_file: PEM CA
  // of the daemon's certificate (turns TLS on); tls_cert_file/tls_key_file: client certificate
  // for mutual TLS.
  std::string token;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // Network transports: connections one batch is spread over.
  int32_t data_connections = 4;
};

struct RegionSpec {
  std::string key;              // client-chosen, unique per daemon (e.g. a request id)
  int32_t layers = 0;
  int32_t entry_bytes = 0;      // 656 for the DeepSeek-V3.2 latent cache, 132 for indexer keys
  int64_t capacity_tokens = 0;  // initial capacity; Append and Reserve grow it
  int64_t ttl_ms = 0;           // delete after this long idle; 0 for never
  // Cluster: copies wanted once the region is sealed (the node holding it copies it to
  // replicas - 1 more nodes, node to node); readers then pick a live copy. 1: no copies.
  int32_t replicas = 1;
};

struct RegionInfo {
  std::string key;
  uint64_t region_id = 0;
  int32_t layers = 0;
  int32_t entry_bytes = 0;
  int32_t entry_stride_bytes = 0;
  int64_t capacity_tokens = 0;
  int64_t committed_tokens = 0;
  bool sealed = false;
  int64_t bytes = 0;
  int32_t active_leases = 0;
  int64_t created_unix_ms = 0;
  bool has_checksum = false;    // sealed: XXH3-64 of the committed entries
  uint64_t checksum = 0;
  std::vector<std::string> nodes;  // cluster: the nodes holding it, primary first
};

// A cluster member as the directory shows it.
struct NodeInfo {
  std::string id;
  std::string control;  // HOST:PORT
  std::string zone;
  int64_t pool_bytes = 0;
  int64_t free_bytes = 0;
  int64_t used_bytes = 0;
  int64_t regions = 0;
  int64_t active_leases = 0;
  bool draining = false;
};

struct PoolStats {
  int64_t pool_bytes = 0;
  int64_t used_bytes = 0;
  int64_t free_bytes = 0;
  int64_t quarantined_bytes = 0;
  int64_t regions = 0;
  int64_t active_leases = 0;
  int64_t evictions = 0;
  int64_t abandoned_regions = 0;  // unsealed regions deleted after their writer vanished
  std::string backing;
  int64_t nodes = 1;  // nodes these figures add up (cluster clients: every live node)
};

// One (region, layer, top-k indices, destination) item of a batched fetch. The k entries are
// written densely to dst: entry i at dst[i * entry_bytes].
struct FetchItem {
  const Region* region = nullptr;
  int32_t layer = 0;
  absl::Span<const int32_t> indices;
  absl::Span<std::byte> dst;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Creates a region and opens it for writing: the returned handle holds the region's write
  // lease (see region.h) until it seals the region, calls ReleaseWrite(), or is destroyed.
  absl::StatusOr<std::shared_ptr<Region>> Create(const RegionSpec& spec);
  // Opens an existing region by key for reading: page tables, committed length and a lease. The
  // handle is read-only: Write, Append, Reserve, Commit and Seal fail with FAILED_PRECONDITION.
  absl::StatusOr<std::shared_ptr<Region>> Open(const std::string& key);
  // Opens an unsealed region and takes its write lease (the handoff from prefill to decode).
  // FAILED_PRECONDITION, naming the holder's lease and when it lapses, while another handle holds
  // the write lease; FAILED_PRECONDITION once the region is sealed.
  absl::StatusOr<std::shared_ptr<Region>> OpenForWrite(const std::string& key);
  // Deletes a region. Handles still open keep reading its old bytes until their leases lapse.
  absl::Status Delete(const std::string& key);
  absl::StatusOr<std::vector<RegionInfo>> List(const std::string& key_prefix = "");
  absl::StatusOr<PoolStats> Stats();

  // Fetches every item of a decode batch. All items are validated before any byte is written:
  // on error nothing is reported as fetched, and the message names the failing item.
  absl::Status FetchBatch(absl::Span<const FetchItem> items);

  // Registers a buffer that fetches land in (e.g. the decode server's latent-cache staging
  // tensor) with every RMA transport of this client, now and later, so one-sided reads write
  // into it directly. Optional: unregistered buffers work too, through a registered staging
  // area where the provider needs one. Unregister before freeing the memory.
  absl::Status RegisterBuffer(void* addr, size_t bytes);
  absl::Status UnregisterBuffer(void* addr);

  // The data-plane transports in use ("fabric: because ..."), one line each.
  std::vector<std::string> TransportChoices() const;

  const ClientOptions& options() const;

  // Cluster clients only (FAILED_PRECONDITION otherwise): the live nodes, and a request that the
  // sealed region `key` be held by `replicas` live nodes in all (copied node to node; returns
  // once they hold it, or RESOURCE_EXHAUSTED saying how many could).
  absl::StatusOr<std::vector<NodeInfo>> Nodes();
  absl::Status Replicate(const std::string& key, int32_t replicas);

  struct Impl;

 private:
  friend struct NodeCalls;
  explicit Client(std::shared_ptr<Impl> impl);
  absl::StatusOr<std::shared_ptr<Region>> OpenRegion(const std::string& key, bool for_write);
  absl::StatusOr<std::shared_ptr<Region>> CreateFrom(const v1::CreateRegionRequest& request);
  // A batch in two passes (fetch_batch.cc): every item checked and resolved, then the bytes
  // moved; a cluster view resolves each node's part on that node's client, then moves them all.
  struct ResolvedBatch;
  absl::Status ResolveBatch(absl::Span<const FetchItem> items, absl::Span<const size_t> numbers,
                            ResolvedBatch* out) const;
  absl::Status MoveBatch(const ResolvedBatch& batch);
  absl::Status ClusterFetchBatch(absl::Span<const FetchItem> items);
  std::shared_ptr<Impl> impl_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_H_
