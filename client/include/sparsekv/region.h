// Region is an open handle on one sequence's latent cache: layers x tokens x entry.
//
// A handle caches the region's page tables and holds a lease that the Client renews in the
// background. While the lease holds, the daemon never reuses the region's memory, so fetches
// read the region's own bytes. Once the lease is gone (the region was deleted or evicted, or
// renewals failed) every call returns an error that says why; a handle never returns bytes it
// cannot vouch for.
//
// Writes go straight into the pool: Write fills a token range of a layer (prefill), Append adds
// tokens to every layer and commits them (decode). Readers see tokens [0, committed_tokens()).
//
// One writer per region. Write access is a lease of its own, held by one handle at a time: the
// handle from Client::Create holds it; a handle from Client::Open is read-only (its Write,
// Append, Reserve, Commit and Seal fail with FAILED_PRECONDITION saying why), and where the pool
// is mapped, readers map it read-only. The handoff from prefill to decode: the prefill server
// writes and commits, then calls ReleaseWrite() (or destroys its handle); the decode server calls
// Client::OpenForWrite, which fails with FAILED_PRECONDITION while another handle holds the write
// lease (until it is released, or lapses when its holder stops renewing it). The daemon refuses
// extends and commits from any other lease, and writes to sealed regions on its network paths.
//
// Visibility: Write and Append return only once the bytes are in the pool (shm: stored by this
// thread; tcp-gather: acknowledged by the daemon after they are in pool memory; fabric and verbs
// write through the daemon's tcp-gather path, never by one-sided RMA). So a Commit or Seal sent
// after them always covers bytes that are there, on every transport, and the seal checksum is
// computed over the final bytes.
//
// Thread-safe. Fetch is lock-free and allocation-free after its first call on a thread.
#ifndef SPARSEKV_REGION_H_
#define SPARSEKV_REGION_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sparsekv {

class Region {
 public:
  ~Region();  // releases the lease
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  const std::string& key() const;
  int32_t layers() const;
  int32_t entry_bytes() const;
  int32_t entry_stride_bytes() const;
  int32_t tokens_per_page() const;
  int64_t capacity_tokens() const;
  // As last learned from the daemon (this handle's own commits, renewals, Refresh).
  int64_t committed_tokens() const;
  bool sealed() const;
  // OK while the lease holds; otherwise why it does not.
  absl::Status LeaseStatus() const;
  // The data-plane transport this handle uses ("shm").
  std::string transport_name() const;

  // True while this handle holds the region's write lease.
  bool writable() const;
  // Gives the write lease back (the handle stays open, read-only), so another handle can take it
  // with Client::OpenForWrite. OK if this handle does not hold it.
  absl::Status ReleaseWrite();

  // Copies entries to tokens [first_token, first_token + n) of `layer`, where n is
  // entries.size() / entry_bytes(). The tokens must lie within capacity (OUT_OF_RANGE naming the
  // range and the capacity otherwise, also for values near INT64_MAX); they become visible to
  // readers once committed.
  absl::Status Write(int32_t layer, int64_t first_token, absl::Span<const std::byte> entries);
  // Appends `tokens` tokens to every layer after the committed length, growing capacity as
  // needed, and commits them. `entries` is laid out [layer][token][entry_bytes].
  absl::Status Append(absl::Span<const std::byte> entries, int64_t tokens);
  // Grows capacity to at least `capacity_tokens`.
  absl::Status Reserve(int64_t capacity_tokens);
  // Makes tokens [0, committed_tokens) visible to readers. Only grows.
  absl::Status Commit(int64_t committed_tokens);
  // Seals the region at the committed length: no more writes, ever; the daemon checksums the
  // committed entries and the region becomes evictable once no lease holds it. Seal commits
  // nothing itself: if this handle wrote tokens past the committed length, Seal fails with
  // FAILED_PRECONDITION naming both lengths (call Commit first), instead of silently sealing
  // less than was written. Sealing a sealed region again is OK.
  absl::Status Seal();
  // Re-reads page tables and committed length from the daemon (takes a fresh lease).
  absl::Status Refresh();

  // Re-reads every committed entry and checks it against the checksum the daemon computed when
  // the region was sealed: DATA_LOSS if any byte changed, FAILED_PRECONDITION if not sealed.
  absl::Status Verify() const;

  // Copies the entries of `layer` at `indices` densely into dst (entry i at i * entry_bytes()).
  // dst must hold indices.size() * entry_bytes() bytes. An index at or past the committed
  // length is OUT_OF_RANGE and nothing is written.
  absl::Status Fetch(int32_t layer, absl::Span<const int32_t> indices,
                     absl::Span<std::byte> dst) const;

  struct State;

 private:
  friend class Client;
  friend struct RegionView ViewOf(const Region& region);
  explicit Region(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_REGION_H_
