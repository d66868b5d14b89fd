/* sparsekv C API: a stable C ABI over libsparsekv, for the Python package (ctypes) and any
 * other language. Exported by libsparsekv.so (and, for the skv_cuda_* calls, libsparsekv-cuda.so).
 *
 * Every call returns a status code (SKV_OK = 0, else the absl/gRPC code numbers below); the
 * message of the last failed call on this thread is skv_last_error(). Handles are opaque; each
 * *_free releases one. Calls that wait or copy never hold a lock of the caller's (Python's ctypes
 * releases the GIL around every foreign call). Strings returned by skv_list/skv_stats are JSON,
 * released with skv_free_string. Thread-safe as the C++ API is.
 *
 * ABI: structs are only passed by pointer, with a leading size field where they may grow. */
#ifndef SPARSEKV_SPARSEKV_C_H_
#define SPARSEKV_SPARSEKV_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SKV_OK = 0,
  SKV_CANCELLED = 1,
  SKV_UNKNOWN = 2,
  SKV_INVALID_ARGUMENT = 3,
  SKV_DEADLINE_EXCEEDED = 4,
  SKV_NOT_FOUND = 5,
  SKV_ALREADY_EXISTS = 6,
  SKV_PERMISSION_DENIED = 7,
  SKV_RESOURCE_EXHAUSTED = 8,
  SKV_FAILED_PRECONDITION = 9,
  SKV_ABORTED = 10,
  SKV_OUT_OF_RANGE = 11,
  SKV_UNIMPLEMENTED = 12,
  SKV_INTERNAL = 13,
  SKV_UNAVAILABLE = 14,
  SKV_DATA_LOSS = 15,
  SKV_UNAUTHENTICATED = 16,
};

typedef struct skv_client skv_client;
typedef struct skv_region skv_region;

/* Options of skv_connect; NULL or empty strings take the C++ defaults (ClientOptions). */
typedef struct skv_options {
  size_t struct_size; /* sizeof(skv_options) */
  const char* server;
  const char* transport;
  const char* token;
  const char* tls_ca_file;
  const char* tls_cert_file;
  const char* tls_key_file;
  int64_t rpc_timeout_ms; /* 0: default */
  int32_t fetch_threads;  /* 0: default */
  int32_t data_connections; /* 0: default */
  const char* cluster;      /* "etcd://HOST:PORT[,...]/NAME": a cluster instead of `server` */
} skv_options;

typedef struct skv_region_info {
  size_t struct_size; /* sizeof(skv_region_info) */
  int32_t layers;
  int32_t entry_bytes;
  int32_t entry_stride_bytes;
  int32_t tokens_per_page;
  int64_t capacity_tokens;
  int64_t committed_tokens;
  int32_t sealed;
  int32_t writable;
} skv_region_info;

typedef struct skv_fetch_item {
  skv_region* region;
  int32_t layer;
  const int32_t* indices;
  size_t count;
  void* dst;
  size_t dst_bytes;
} skv_fetch_item;

const char* skv_last_error(void);
const char* skv_version(void);
void skv_free_string(char* s);

int skv_connect(const skv_options* options, skv_client** out);
void skv_client_free(skv_client* client);
int skv_create(skv_client* client, const char* key, int32_t layers, int32_t entry_bytes, int64_t capacity_tokens,
               int64_t ttl_ms, skv_region** out);
/* As skv_create; in a cluster, `replicas` copies are kept once the region is sealed. */
int skv_create_replicated(skv_client* client, const char* key, int32_t layers, int32_t entry_bytes,
                          int64_t capacity_tokens, int64_t ttl_ms, int32_t replicas, skv_region** out);
int skv_open(skv_client* client, const char* key, int for_write, skv_region** out);
int skv_delete(skv_client* client, const char* key);
int skv_list(skv_client* client, const char* prefix, char** json_out);
int skv_stats(skv_client* client, char** json_out);
int skv_fetch_batch(skv_client* client, const skv_fetch_item* items, size_t count);
int skv_transport_choices(skv_client* client, char** json_out);

void skv_region_free(skv_region* region);
int skv_region_info_get(skv_region* region, skv_region_info* out);
const char* skv_region_key(skv_region* region);
const char* skv_region_transport(skv_region* region); /* valid until the next call on this thread */
int skv_write(skv_region* region, int32_t layer, int64_t first_token, const void* data, size_t bytes);
int skv_append(skv_region* region, const void* data, size_t bytes, int64_t tokens);
int skv_reserve(skv_region* region, int64_t capacity_tokens);
int skv_commit(skv_region* region, int64_t committed_tokens);
int skv_seal(skv_region* region);
int skv_refresh(skv_region* region);
int skv_verify(skv_region* region);
int skv_release_write(skv_region* region);
int skv_lease_status(skv_region* region);
int skv_fetch(skv_region* region, int32_t layer, const int32_t* indices, size_t count, void* dst, size_t dst_bytes);

/* GPU path (libsparsekv-cuda.so). Streams are cudaStream_t passed as void*; device pointers as
 * void*. See sparsekv/cuda.h for the semantics. */
typedef struct skv_device_batch skv_device_batch;
typedef struct skv_residency_cache skv_residency_cache;
int skv_cuda_batch_create(skv_client* client, int device, int32_t max_slots, int32_t layers, int32_t entry_bytes,
                          int64_t max_tokens, skv_device_batch** out);
void skv_cuda_batch_free(skv_device_batch* batch);
int skv_cuda_bind(skv_device_batch* batch, int32_t slot, skv_region* region, void* stream);
int skv_cuda_release(skv_device_batch* batch, int32_t slot);
int skv_cuda_sync(skv_device_batch* batch, void* stream);
int skv_cuda_gather(skv_device_batch* batch, void* stream, int32_t layer, const int32_t* indices, int32_t rows, int32_t k,
                    const int32_t* row_slot, void* dst, const int32_t* dst_slots);
int skv_cuda_end_step(skv_device_batch* batch, void* stream);
int skv_cuda_check_errors(skv_device_batch* batch, void* stream);
int skv_cuda_cache_create(skv_device_batch* batch, int32_t capacity, int32_t max_k, int32_t max_batch,
                          skv_residency_cache** out);
void skv_cuda_cache_free(skv_residency_cache* cache);
int skv_cuda_cache_lookup(skv_residency_cache* cache, void* stream, int32_t layer, const int32_t* indices, int32_t rows,
                          int32_t k, const int32_t* row_slot, int32_t* out_slots);
void* skv_cuda_cache_hot_buffer(skv_residency_cache* cache, int32_t slot, int32_t layer);
int skv_cuda_cache_release_slot(skv_residency_cache* cache, void* stream, int32_t slot);
/* hits and misses: arrays of `layers` entries, filled. */
int skv_cuda_cache_counters(skv_residency_cache* cache, void* stream, uint64_t* hits, uint64_t* misses, int32_t layers,
                            int reset);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEKV_SPARSEKV_C_H_ */
