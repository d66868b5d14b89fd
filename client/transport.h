// Transport moves entries between a pool and client memory. One class per medium (shm/CXL
// today; libfabric and verbs next), all behind this narrow interface.
//
// The planner has already validated and resolved every entry to a byte offset in the pool, so a
// transport only moves bytes: one virtual call per batch item, tight loops inside, no
// allocation and no lock on the way.
#ifndef SPARSEKV_CLIENT_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sparsekv {

// One batch item resolved for a transport: entry i of `offsets` lands at dst + i * entry_bytes.
struct GatherWork {
  absl::Span<const int64_t> offsets;
  int32_t entry_bytes = 0;
  std::byte* dst = nullptr;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  // Copies entry_bytes from each pool offset to dst, densely: entry i lands at dst + i * entry_bytes.
  virtual absl::Status Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes,
                              std::byte* dst) = 0;
  // Copies entry i of src (at src + i * entry_bytes) to pool_offsets[i].
  virtual absl::Status Scatter(const std::byte* src, int32_t entry_bytes,
                               absl::Span<const int64_t> pool_offsets) = 0;
  // A whole decode batch at once. Network transports override it to keep many requests in
  // flight; the default moves one item after the other. On error, which item failed is in the
  // message; dst contents are then unspecified.
  virtual absl::Status GatherBatch(absl::Span<const GatherWork> work) {
    for (size_t i = 0; i < work.size(); ++i) {
      if (auto st = Gather(work[i].offsets, work[i].entry_bytes, work[i].dst); !st.ok()) return st;
    }
    return absl::OkStatus();
  }
  // Registers a client buffer for RMA transports (destination of fetches used in place, no
  // staging copy); the others need no registration and accept it as a no-op.
  virtual absl::Status RegisterBuffer(void* addr, size_t bytes) { return absl::OkStatus(); }
  virtual absl::Status UnregisterBuffer(void* addr) { return absl::OkStatus(); }
  // True when GatherBatch beats calling Gather from several threads (network transports).
  virtual bool prefers_batch() const { return false; }
  // Why this transport was chosen (for logs and sparsekvctl status).
  const std::string& reason() const { return reason_; }
  void set_reason(std::string reason) { reason_ = std::move(reason); }

 private:
  std::string reason_;
};

// One-sided RMA transports (libfabric, verbs): one primitive moves a batch either way; reads of
// one item and writes are batches of one.
class RmaTransport : public Transport {
 public:
  absl::Status Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes, std::byte* dst) override {
    GatherWork one{pool_offsets, entry_bytes, dst};
    return Transfer(false, absl::MakeConstSpan(&one, 1));
  }
  absl::Status Scatter(const std::byte* src, int32_t entry_bytes, absl::Span<const int64_t> pool_offsets) override {
    GatherWork one{pool_offsets, entry_bytes, const_cast<std::byte*>(src)};
    return Transfer(true, absl::MakeConstSpan(&one, 1));
  }
  absl::Status GatherBatch(absl::Span<const GatherWork> work) override { return Transfer(false, work); }
  bool prefers_batch() const override { return true; }

 protected:
  // Moves the entries of `work` between work.dst and the pool: reads, or writes from work.dst.
  virtual absl::Status Transfer(bool write, absl::Span<const GatherWork> work) = 0;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORT_H_
