// The C ABI (sparsekv/sparsekv_c.h) over the C++ client.
#include "sparsekv/sparsekv_c.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/version.h"
#include "sparsekv/client.h"

struct skv_client {
  std::unique_ptr<sparsekv::Client> client;
};
struct skv_region {
  std::shared_ptr<sparsekv::Region> region;
};

namespace {

thread_local std::string g_last_error;
thread_local std::string g_scratch;

int Fail(const absl::Status& status) {
  if (status.ok()) return SKV_OK;
  g_last_error = std::string(status.message());
  return static_cast<int>(status.code());
}
int Invalid(const std::string& message) { return Fail(absl::InvalidArgumentError(message)); }

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') absl::StrAppend(&out, "\\", std::string(1, static_cast<char>(c)));
    else if (c < 0x20) absl::StrAppendFormat(&out, "\\u%04x", c);
    else out.push_back(static_cast<char>(c));
  }
  return out;
}

char* Dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

const char* Or(const char* s, const char* fallback) { return s != nullptr && *s != '\0' ? s : fallback; }

}  // namespace

extern "C" {

const char* skv_last_error(void) { return g_last_error.c_str(); }
const char* skv_version(void) { return sparsekv::kVersion; }
void skv_free_string(char* s) { std::free(s); }

int skv_connect(const skv_options* o, skv_client** out) {
  if (out == nullptr) return Invalid("skv_connect: out is NULL");
  sparsekv::ClientOptions options;
  if (o != nullptr) {
    if (o->struct_size < sizeof(skv_options)) return Invalid("skv_connect: skv_options from an older header");
    options.server = Or(o->server, options.server.c_str());
    options.transport = Or(o->transport, options.transport.c_str());
    options.token = Or(o->token, "");
    options.tls_ca_file = Or(o->tls_ca_file, "");
    options.tls_cert_file = Or(o->tls_cert_file, "");
    options.tls_key_file = Or(o->tls_key_file, "");
    if (o->rpc_timeout_ms != 0) options.rpc_timeout_ms = o->rpc_timeout_ms;
    if (o->fetch_threads != 0) options.fetch_threads = o->fetch_threads;
    if (o->data_connections != 0) options.data_connections = o->data_connections;
    options.cluster = Or(o->cluster, "");
  }
  auto client = sparsekv::Client::Connect(options);
  if (!client.ok()) return Fail(client.status());
  *out = new skv_client{*std::move(client)};
  return SKV_OK;
}

void skv_client_free(skv_client* client) { delete client; }

int skv_create(skv_client* c, const char* key, int32_t layers, int32_t entry_bytes, int64_t capacity_tokens,
               int64_t ttl_ms, skv_region** out) {
  if (c == nullptr || key == nullptr || out == nullptr) return Invalid("skv_create: NULL argument");
  auto r = c->client->Create({key, layers, entry_bytes, capacity_tokens, ttl_ms});
  if (!r.ok()) return Fail(r.status());
  *out = new skv_region{*std::move(r)};
  return SKV_OK;
}

int skv_create_replicated(skv_client* c, const char* key, int32_t layers, int32_t entry_bytes, int64_t capacity_tokens,
                          int64_t ttl_ms, int32_t replicas, skv_region** out) {
  if (c == nullptr || key == nullptr || out == nullptr) return Invalid("skv_create_replicated: NULL argument");
  sparsekv::RegionSpec spec{key, layers, entry_bytes, capacity_tokens, ttl_ms};
  spec.replicas = replicas;
  auto r = c->client->Create(spec);
  if (!r.ok()) return Fail(r.status());
  *out = new skv_region{*std::move(r)};
  return SKV_OK;
}

int skv_open(skv_client* c, const char* key, int for_write, skv_region** out) {
  if (c == nullptr || key == nullptr || out == nullptr) return Invalid("skv_open: NULL argument");
  auto r = for_write ? c->client->OpenForWrite(key) : c->client->Open(key);
  if (!r.ok()) return Fail(r.status());
  *out = new skv_region{*std::move(r)};
  return SKV_OK;
}

int skv_delete(skv_client* c, const char* key) {
  if (c == nullptr || key == nullptr) return Invalid("skv_delete: NULL argument");
  return Fail(c->client->Delete(key));
}

int skv_list(skv_client* c, const char* prefix, char** json_out) {
  if (c == nullptr || json_out == nullptr) return Invalid("skv_list: NULL argument");
  auto listed = c->client->List(prefix != nullptr ? prefix : "");
  if (!listed.ok()) return Fail(listed.status());
  std::string json = "[";
  for (size_t i = 0; i < listed->size(); ++i) {
    const auto& r = (*listed)[i];
    absl::StrAppendFormat(&json,
                          R"(%s{"key":"%s","region_id":%d,"layers":%d,"entry_bytes":%d,"entry_stride_bytes":%d,)"
                          R"("capacity_tokens":%d,"committed_tokens":%d,"sealed":%s,"bytes":%d,"active_leases":%d,)"
                          R"("created_unix_ms":%d,"nodes":[)",
                          i ? "," : "", JsonEscape(r.key), r.region_id, r.layers, r.entry_bytes, r.entry_stride_bytes,
                          r.capacity_tokens, r.committed_tokens, r.sealed ? "true" : "false", r.bytes, r.active_leases,
                          r.created_unix_ms);
    for (size_t n = 0; n < r.nodes.size(); ++n) absl::StrAppend(&json, n ? "," : "", "\"", JsonEscape(r.nodes[n]), "\"");
    json += "]}";
  }
  json += "]";
  *json_out = Dup(json);
  return SKV_OK;
}

int skv_stats(skv_client* c, char** json_out) {
  if (c == nullptr || json_out == nullptr) return Invalid("skv_stats: NULL argument");
  auto s = c->client->Stats();
  if (!s.ok()) return Fail(s.status());
  *json_out = Dup(absl::StrFormat(
      R"({"pool_bytes":%d,"used_bytes":%d,"free_bytes":%d,"quarantined_bytes":%d,"regions":%d,"active_leases":%d,)"
      R"("evictions":%d,"abandoned_regions":%d,"backing":"%s","nodes":%d})",
      s->pool_bytes, s->used_bytes, s->free_bytes, s->quarantined_bytes, s->regions, s->active_leases, s->evictions,
      s->abandoned_regions, JsonEscape(s->backing), s->nodes));
  return SKV_OK;
}

int skv_transport_choices(skv_client* c, char** json_out) {
  if (c == nullptr || json_out == nullptr) return Invalid("skv_transport_choices: NULL argument");
  std::string json = "[";
  auto choices = c->client->TransportChoices();
  for (size_t i = 0; i < choices.size(); ++i) absl::StrAppend(&json, i ? "," : "", "\"", JsonEscape(choices[i]), "\"");
  json += "]";
  *json_out = Dup(json);
  return SKV_OK;
}

int skv_fetch_batch(skv_client* c, const skv_fetch_item* items, size_t count) {
  if (c == nullptr || (items == nullptr && count > 0)) return Invalid("skv_fetch_batch: NULL argument");
  std::vector<sparsekv::FetchItem> batch(count);
  for (size_t i = 0; i < count; ++i) {
    if (items[i].region == nullptr) return Invalid(absl::StrFormat("batch item %d has no region", i));
    batch[i] = {items[i].region->region.get(), items[i].layer, absl::MakeConstSpan(items[i].indices, items[i].count),
                absl::MakeSpan(static_cast<std::byte*>(items[i].dst), items[i].dst_bytes)};
  }
  return Fail(c->client->FetchBatch(batch));
}

void skv_region_free(skv_region* region) { delete region; }

int skv_region_info_get(skv_region* r, skv_region_info* out) {
  if (r == nullptr || out == nullptr) return Invalid("skv_region_info_get: NULL argument");
  if (out->struct_size < sizeof(skv_region_info)) return Invalid("skv_region_info from an older header");
  out->layers = r->region->layers();
  out->entry_bytes = r->region->entry_bytes();
  out->entry_stride_bytes = r->region->entry_stride_bytes();
  out->tokens_per_page = r->region->tokens_per_page();
  out->capacity_tokens = r->region->capacity_tokens();
  out->committed_tokens = r->region->committed_tokens();
  out->sealed = r->region->sealed() ? 1 : 0;
  out->writable = r->region->writable() ? 1 : 0;
  return SKV_OK;
}

const char* skv_region_key(skv_region* r) { return r != nullptr ? r->region->key().c_str() : ""; }
const char* skv_region_transport(skv_region* r) {
  g_scratch = r != nullptr ? r->region->transport_name() : "";
  return g_scratch.c_str();
}

#define SKV_REGION_CALL(r, expr) \
  if ((r) == nullptr) return Invalid("NULL region"); \
  return Fail(expr)

int skv_write(skv_region* r, int32_t layer, int64_t first_token, const void* data, size_t bytes) {
  if (data == nullptr && bytes > 0) return Invalid("skv_write: NULL data");
  SKV_REGION_CALL(r, r->region->Write(layer, first_token, absl::MakeConstSpan(static_cast<const std::byte*>(data), bytes)));
}
int skv_append(skv_region* r, const void* data, size_t bytes, int64_t tokens) {
  if (data == nullptr && bytes > 0) return Invalid("skv_append: NULL data");
  SKV_REGION_CALL(r, r->region->Append(absl::MakeConstSpan(static_cast<const std::byte*>(data), bytes), tokens));
}
int skv_reserve(skv_region* r, int64_t capacity_tokens) { SKV_REGION_CALL(r, r->region->Reserve(capacity_tokens)); }
int skv_commit(skv_region* r, int64_t committed_tokens) { SKV_REGION_CALL(r, r->region->Commit(committed_tokens)); }
int skv_seal(skv_region* r) { SKV_REGION_CALL(r, r->region->Seal()); }
int skv_refresh(skv_region* r) { SKV_REGION_CALL(r, r->region->Refresh()); }
int skv_verify(skv_region* r) { SKV_REGION_CALL(r, r->region->Verify()); }
int skv_release_write(skv_region* r) { SKV_REGION_CALL(r, r->region->ReleaseWrite()); }
int skv_lease_status(skv_region* r) { SKV_REGION_CALL(r, r->region->LeaseStatus()); }
int skv_fetch(skv_region* r, int32_t layer, const int32_t* indices, size_t count, void* dst, size_t dst_bytes) {
  if ((indices == nullptr && count > 0) || (dst == nullptr && dst_bytes > 0)) return Invalid("skv_fetch: NULL buffer");
  SKV_REGION_CALL(r, r->region->Fetch(layer, absl::MakeConstSpan(indices, count),
                                      absl::MakeSpan(static_cast<std::byte*>(dst), dst_bytes)));
}

}  // extern "C"

namespace sparsekv {
// For the CUDA component's C API: the handle behind an skv_region.
std::shared_ptr<Region> RegionOfC(skv_region* r) { return r != nullptr ? r->region : nullptr; }
Client* ClientOfC(skv_client* c) { return c != nullptr ? c->client.get() : nullptr; }
int FailC(const absl::Status& status) { return Fail(status); }
}  // namespace sparsekv
