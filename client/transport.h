// Transport moves entries between a pool and client memory. One class per medium (shm/CXL,
// tcp-gather, libfabric RMA, verbs), all behind this narrow interface.
//
// The planner has already validated and resolved every entry to a byte offset in the pool, so a
// transport only moves bytes: one virtual call per batch item, tight loops inside, no
// allocation and no lock on the way.
#ifndef SPARSEKV_CLIENT_TRANSPORT_H_
#define SPARSEKV_CLIENT_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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

// One-sided RMA transports (libfabric, verbs): reads are one-sided (one primitive moves a batch;
// a read of one item is a batch of one). Writes are not: the daemon registers its pool for remote
// read only, and writes go through `write_path` (the daemon's tcp-gather path), which the daemon
// checks (it refuses a sealed region's pages) and acknowledges only once the bytes are in pool
// memory, so a commit sent after a write returns always covers bytes that are there, whatever the
// provider's completion semantics.
class RmaTransport : public Transport {
 public:
  void set_write_path(std::shared_ptr<Transport> path) { write_path_ = std::move(path); }
  absl::Status Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes, std::byte* dst) override {
    GatherWork one{pool_offsets, entry_bytes, dst};
    return Read(absl::MakeConstSpan(&one, 1));
  }
  absl::Status Scatter(const std::byte* src, int32_t entry_bytes, absl::Span<const int64_t> pool_offsets) override {
    if (write_path_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          name(), ": the daemon offers no checked write path (tcp-gather, [listen] data); one-sided RMA writes "
                  "are not used, since the daemon could neither refuse them for sealed regions nor know when they "
                  "have landed"));
    }
    return write_path_->Scatter(src, entry_bytes, pool_offsets);
  }
  absl::Status GatherBatch(absl::Span<const GatherWork> work) override { return Read(work); }
  bool prefers_batch() const override { return true; }

 protected:
  // Reads the entries of `work` from the pool into work.dst (one-sided; writes go to write_path).
  virtual absl::Status Read(absl::Span<const GatherWork> work) = 0;

 private:
  std::shared_ptr<Transport> write_path_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORT_H_
