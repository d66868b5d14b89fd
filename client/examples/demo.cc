// sparsekv-demo: what a prefill server and a decode server do with sparsekv, end to end.
//
// 1. prefill: create a DeepSeek-V3.2-shaped region (61 layers x N tokens x 656-byte latent
//    entries) and write every layer;
// 2. decode: append tokens one at a time, growing the region across page boundaries;
// 3. seal it, then open it by key from a second handle (as a decode server elsewhere would);
// 4. fetch top-k entries of every layer in one batched call (DSA-like selections: sink tokens,
//    a recent window, scattered older tokens) and verify every byte;
// 5. print the daemon's stats and delete the region.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/entry_pattern.h"
#include "sparsekv/client.h"

namespace {

int Die(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "sparsekv-demo: %s: %s\n", what.c_str(), status.ToString().c_str());
  return 1;
}

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  sparsekv::ClientOptions options;
  int64_t prefill_tokens = 4000, decode_tokens = 96;
  int32_t layers = 61, entry_bytes = 656, topk = 2048;
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--server") options.server = next();
    else if (a == "--tokens") prefill_tokens = std::atoll(next().c_str());
    else if (a == "--decode-tokens") decode_tokens = std::atoll(next().c_str());
    else if (a == "--layers") layers = std::atoi(next().c_str());
    else if (a == "--entry-bytes") entry_bytes = std::atoi(next().c_str());
    else if (a == "--topk") topk = std::atoi(next().c_str());
    else if (a == "--keep") keep = true;
    else {
      std::fprintf(stderr,
                   "usage: sparsekv-demo [--server HOST:PORT|unix:PATH] [--tokens N] [--decode-tokens N]\n"
                   "                     [--layers N] [--entry-bytes N] [--topk K] [--keep]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  const uint64_t salt = static_cast<uint64_t>(getpid()) * 0x9e3779b97f4a7c15ULL;
  auto client = sparsekv::Client::Connect(options);
  if (!client.ok()) return Die("connect", client.status());
  std::printf("connected to sparsekvd at %s\n", options.server.c_str());

  const std::string key = absl::StrFormat("demo-%d", getpid());
  auto t0 = std::chrono::steady_clock::now();
  auto writer = (*client)->Create({key, layers, entry_bytes, prefill_tokens, 0});
  if (!writer.ok()) return Die("create", writer.status());
  std::vector<std::byte> layer_buf(static_cast<size_t>(prefill_tokens) * entry_bytes);
  for (int32_t l = 0; l < layers; ++l) {
    for (int64_t t = 0; t < prefill_tokens; ++t) {
      sparsekv::FillEntry(salt, l, t, entry_bytes, layer_buf.data() + t * entry_bytes);
    }
    if (auto s = (*writer)->Write(l, 0, layer_buf); !s.ok()) return Die("prefill write", s);
  }
  if (auto s = (*writer)->Commit(prefill_tokens); !s.ok()) return Die("commit", s);
  double prefill_s = Since(t0);
  std::printf("prefill: region '%s', %d layers x %lld tokens x %d-byte entries (stride %d B, %d tokens/page), "
              "%.1f MB written in %.3f s via %s\n",
              key.c_str(), layers, static_cast<long long>(prefill_tokens), entry_bytes,
              (*writer)->entry_stride_bytes(), (*writer)->tokens_per_page(),
              prefill_tokens * layers * entry_bytes / 1e6, prefill_s, (*writer)->transport_name().c_str());

  t0 = std::chrono::steady_clock::now();
  std::vector<std::byte> step(static_cast<size_t>(layers) * entry_bytes);
  for (int64_t d = 0; d < decode_tokens; ++d) {
    int64_t t = prefill_tokens + d;
    for (int32_t l = 0; l < layers; ++l) sparsekv::FillEntry(salt, l, t, entry_bytes, step.data() + l * entry_bytes);
    if (auto s = (*writer)->Append(step, 1); !s.ok()) return Die("decode append", s);
  }
  const int64_t total_tokens = prefill_tokens + decode_tokens;
  std::printf("decode: appended %lld tokens one step at a time (%.1f us/step); capacity now %lld tokens\n",
              static_cast<long long>(decode_tokens), decode_tokens ? Since(t0) / decode_tokens * 1e6 : 0.0,
              static_cast<long long>((*writer)->capacity_tokens()));
  if (auto s = (*writer)->Seal(); !s.ok()) return Die("seal", s);
  std::printf("sealed at %lld tokens\n", static_cast<long long>((*writer)->committed_tokens()));

  auto reader = (*client)->Open(key);
  if (!reader.ok()) return Die("open", reader.status());
  const int32_t k = static_cast<int32_t>(std::min<int64_t>(topk, total_tokens));
  std::mt19937 rng(42);
  std::vector<std::vector<int32_t>> indices(layers);
  for (int32_t l = 0; l < layers; ++l) {
    auto& idx = indices[l];
    for (int32_t t = 0; t < 4 && t < k; ++t) idx.push_back(t);                         // sinks
    for (int64_t t = std::max<int64_t>(4, total_tokens - k / 4); t < total_tokens; ++t) idx.push_back(static_cast<int32_t>(t));  // recent
    std::uniform_int_distribution<int32_t> older(4, static_cast<int32_t>(total_tokens - 1));
    while (static_cast<int32_t>(idx.size()) < k) idx.push_back(older(rng));             // scattered
  }
  std::vector<std::byte> dst(static_cast<size_t>(layers) * k * entry_bytes);
  std::vector<sparsekv::FetchItem> batch;
  for (int32_t l = 0; l < layers; ++l) {
    batch.push_back({reader->get(), l, indices[l],
                     absl::MakeSpan(dst.data() + static_cast<size_t>(l) * k * entry_bytes, static_cast<size_t>(k) * entry_bytes)});
  }
  if (auto s = (*client)->FetchBatch(batch); !s.ok()) return Die("fetch", s);  // warm-up
  t0 = std::chrono::steady_clock::now();
  if (auto s = (*client)->FetchBatch(batch); !s.ok()) return Die("fetch", s);
  double fetch_s = Since(t0);
  int64_t wrong = 0;
  for (int32_t l = 0; l < layers; ++l) {
    for (int32_t i = 0; i < k; ++i) {
      const std::byte* e = dst.data() + (static_cast<size_t>(l) * k + i) * entry_bytes;
      wrong += sparsekv::EntryMatches(salt, l, indices[l][i], entry_bytes, e) ? 0 : 1;
    }
  }
  double mb = static_cast<double>(layers) * k * entry_bytes / 1e6;
  std::printf("fetch: top-%d of %lld tokens in each of %d layers in one batch: %.1f MB in %.2f ms (%.2f GB/s)\n",
              k, static_cast<long long>(total_tokens), layers, mb, fetch_s * 1e3, mb / 1e3 / fetch_s);
  std::printf("verify: %lld entries checked byte for byte, %lld wrong\n",
              static_cast<long long>(layers) * k, static_cast<long long>(wrong));

  // A bad request gets a precise error and changes nothing.
  std::vector<int32_t> bad = {0, static_cast<int32_t>(total_tokens)};
  std::vector<std::byte> small(2 * entry_bytes);
  auto refused = (*reader)->Fetch(0, bad, absl::MakeSpan(small));
  std::printf("bad index check: %s\n", refused.ToString().c_str());

  auto stats = (*client)->Stats();
  if (!stats.ok()) return Die("stats", stats.status());
  std::printf("daemon: backing %s, pool %.1f MB, used %.1f MB, free %.1f MB, %lld regions, %lld leases, %lld evictions\n",
              stats->backing.c_str(), stats->pool_bytes / 1e6, stats->used_bytes / 1e6, stats->free_bytes / 1e6,
              static_cast<long long>(stats->regions), static_cast<long long>(stats->active_leases),
              static_cast<long long>(stats->evictions));
  if (!keep) {
    reader->reset();
    writer->reset();
    if (auto s = (*client)->Delete(key); !s.ok()) return Die("delete", s);
    std::printf("deleted region '%s'\n", key.c_str());
  }
  if (wrong != 0 || refused.code() != absl::StatusCode::kOutOfRange) {
    std::printf("DEMO FAILED\n");
    return 1;
  }
  std::printf("demo OK\n");
  return 0;
}
