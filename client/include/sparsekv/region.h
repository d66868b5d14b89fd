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

  // Copies entries to tokens [first_token, first_token + n) of `layer`, where n is
  // entries.size() / entry_bytes(). The tokens must lie within capacity; they become visible to
  // readers once committed.
  absl::Status Write(int32_t layer, int64_t first_token, absl::Span<const std::byte> entries);
  // Appends `tokens` tokens to every layer after the committed length, growing capacity as
  // needed, and commits them. `entries` is laid out [layer][token][entry_bytes].
  absl::Status Append(absl::Span<const std::byte> entries, int64_t tokens);
  // Grows capacity to at least `capacity_tokens`.
  absl::Status Reserve(int64_t capacity_tokens);
  // Makes tokens [0, committed_tokens) visible to readers. Only grows.
  absl::Status Commit(int64_t committed_tokens);
  // Commits the current length and seals: no more writes; the region becomes evictable once
  // no lease holds it.
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
  explicit Region(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_REGION_H_
