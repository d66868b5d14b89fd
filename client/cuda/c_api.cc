// The skv_cuda_* part of the C ABI (sparsekv/sparsekv_c.h), exported by libsparsekv-cuda.so.
#include <memory>

#include "sparsekv/cuda.h"
#include "sparsekv/sparsekv_c.h"

namespace sparsekv {
std::shared_ptr<Region> RegionOfC(skv_region* r);
Client* ClientOfC(skv_client* c);
int FailC(const absl::Status& status);
}  // namespace sparsekv

struct skv_device_batch {
  std::unique_ptr<sparsekv::cuda::DeviceBatch> batch;
};
struct skv_residency_cache {
  std::unique_ptr<sparsekv::cuda::ResidencyCache> cache;
  int32_t layers;
};

namespace {
using sparsekv::FailC;
cudaStream_t S(void* stream) { return static_cast<cudaStream_t>(stream); }
int Null(const char* what) { return FailC(absl::InvalidArgumentError(std::string(what) + ": NULL argument")); }
}  // namespace

extern "C" {

int skv_cuda_batch_create(skv_client* client, int device, int32_t max_slots, int32_t layers, int32_t entry_bytes,
                          int64_t max_tokens, skv_device_batch** out) {
  if (client == nullptr || out == nullptr) return Null("skv_cuda_batch_create");
  auto b = sparsekv::cuda::DeviceBatch::Create(*sparsekv::ClientOfC(client),
                                               {.device = device, .max_slots = max_slots, .layers = layers,
                                                .entry_bytes = entry_bytes, .max_tokens = max_tokens});
  if (!b.ok()) return FailC(b.status());
  *out = new skv_device_batch{*std::move(b)};
  return 0;
}
void skv_cuda_batch_free(skv_device_batch* b) { delete b; }
int skv_cuda_bind(skv_device_batch* b, int32_t slot, skv_region* region, void* stream) {
  if (b == nullptr || region == nullptr) return Null("skv_cuda_bind");
  return FailC(b->batch->Bind(slot, sparsekv::RegionOfC(region), S(stream)));
}
int skv_cuda_release(skv_device_batch* b, int32_t slot) {
  if (b == nullptr) return Null("skv_cuda_release");
  b->batch->Release(slot);
  return 0;
}
int skv_cuda_sync(skv_device_batch* b, void* stream) {
  if (b == nullptr) return Null("skv_cuda_sync");
  return FailC(b->batch->Sync(S(stream)));
}
int skv_cuda_gather(skv_device_batch* b, void* stream, int32_t layer, const int32_t* indices, int32_t rows, int32_t k,
                    const int32_t* row_slot, void* dst, const int32_t* dst_slots) {
  if (b == nullptr) return Null("skv_cuda_gather");
  return FailC(b->batch->Gather(S(stream), layer, indices, rows, k, row_slot, dst, dst_slots));
}
int skv_cuda_end_step(skv_device_batch* b, void* stream) {
  if (b == nullptr) return Null("skv_cuda_end_step");
  return FailC(b->batch->EndStep(S(stream)));
}
int skv_cuda_check_errors(skv_device_batch* b, void* stream) {
  if (b == nullptr) return Null("skv_cuda_check_errors");
  return FailC(b->batch->CheckErrors(S(stream)));
}
int skv_cuda_cache_create(skv_device_batch* b, int32_t capacity, int32_t max_k, int32_t max_batch,
                          skv_residency_cache** out) {
  if (b == nullptr || out == nullptr) return Null("skv_cuda_cache_create");
  auto c = sparsekv::cuda::ResidencyCache::Create(*b->batch, {.capacity = capacity, .max_k = max_k, .max_batch = max_batch});
  if (!c.ok()) return FailC(c.status());
  *out = new skv_residency_cache{*std::move(c), b->batch->options().layers};
  return 0;
}
void skv_cuda_cache_free(skv_residency_cache* c) { delete c; }
int skv_cuda_cache_lookup(skv_residency_cache* c, void* stream, int32_t layer, const int32_t* indices, int32_t rows,
                          int32_t k, const int32_t* row_slot, int32_t* out_slots) {
  if (c == nullptr) return Null("skv_cuda_cache_lookup");
  return FailC(c->cache->Lookup(S(stream), layer, indices, rows, k, row_slot, out_slots));
}
void* skv_cuda_cache_hot_buffer(skv_residency_cache* c, int32_t slot, int32_t layer) {
  return c != nullptr ? c->cache->hot_buffer(slot, layer) : nullptr;
}
int skv_cuda_cache_release_slot(skv_residency_cache* c, void* stream, int32_t slot) {
  if (c == nullptr) return Null("skv_cuda_cache_release_slot");
  return FailC(c->cache->ReleaseSlot(S(stream), slot));
}
int skv_cuda_cache_counters(skv_residency_cache* c, void* stream, uint64_t* hits, uint64_t* misses, int32_t layers,
                            int reset) {
  if (c == nullptr || hits == nullptr || misses == nullptr) return Null("skv_cuda_cache_counters");
  auto counters = c->cache->Counters(S(stream), reset != 0);
  if (!counters.ok()) return FailC(counters.status());
  for (int32_t l = 0; l < layers && l < static_cast<int32_t>(counters->size()); ++l) {
    hits[l] = (*counters)[l].hits;
    misses[l] = (*counters)[l].misses;
  }
  return 0;
}

}  // extern "C"
