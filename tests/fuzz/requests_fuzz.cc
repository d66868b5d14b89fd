// Fuzz target: control-plane request validation. The input is a sequence of (op, length, bytes)
// records; each is parsed as the op's request message and applied to a fresh RegionTable over a
// small pool. Whatever arrives, the table must answer with a status, and every page must stay
// in exactly one place (used + free + quarantined == pool).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "server/region_table.h"

namespace {

std::unique_ptr<sparsekv::Pool>& SharedPool() {
  static auto* pool = new std::unique_ptr<sparsekv::Pool>(
      *sparsekv::Pool::Create({}, 64 * 64 * 1024, /*prefault=*/false));
  return *pool;
}

template <typename Message>
bool Parse(const uint8_t* data, size_t size, Message* message) {
  return message->ParseFromArray(data, static_cast<int>(size));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sparsekv;
  DaemonConfig config;
  config.page_bytes = 64 * 1024;
  config.lease_ms = 1000;
  config.limits.max_regions = 16;
  config.limits.max_layers = 8;
  config.limits.max_capacity_tokens = 100000;
  config.limits.max_entry_bytes = 4096;
  RegionTable table(SharedPool().get(), config, *MakeEvictionPolicy("lru"), "/nonexistent");
  size_t at = 0;
  auto now = RegionTable::Clock::now();
  while (at + 2 <= size) {
    uint8_t op = data[at] % 13;
    size_t len = std::min<size_t>(data[at + 1], size - at - 2);
    const uint8_t* body = data + at + 2;
    at += 2 + len;
    switch (op) {
      case 0: { v1::CreateRegionRequest r; if (Parse(body, len, &r)) (void)table.Create(r); break; }
      case 1: { v1::OpenRegionRequest r; if (Parse(body, len, &r)) (void)table.Open(r); break; }
      case 2: { v1::ExtendRegionRequest r; if (Parse(body, len, &r)) (void)table.Extend(r); break; }
      case 3: { v1::CommitRegionRequest r; if (Parse(body, len, &r)) (void)table.Commit(r); break; }
      case 4: { v1::RenewLeasesRequest r; if (Parse(body, len, &r)) (void)table.Renew(r); break; }
      case 5: { v1::ReleaseLeasesRequest r; if (Parse(body, len, &r)) (void)table.Release(r); break; }
      case 6: { v1::DeleteRegionRequest r; if (Parse(body, len, &r)) (void)table.Delete(r); break; }
      case 7: { v1::ListRegionsRequest r; if (Parse(body, len, &r)) (void)table.List(r); break; }
      case 8: { v1::GetRegionRequest r; if (Parse(body, len, &r)) (void)table.Get(r); break; }
      case 9: { v1::EvictRequest r; if (Parse(body, len, &r)) (void)table.Evict(r); break; }
      case 10: { v1::VerifyRegionRequest r; if (Parse(body, len, &r)) (void)table.Verify(r); break; }
      case 11: now += std::chrono::milliseconds(len * 20); table.Reap(now); break;
      case 12: table.SetDraining(len % 2 == 1); break;
    }
    auto stats = table.Stats();
    if (stats.used_bytes() + stats.free_bytes() + stats.quarantined_bytes() != stats.pool_bytes()) std::abort();
    if (stats.used_bytes() < 0 || stats.free_bytes() < 0) std::abort();
  }
  // Deleting everything returns every page (after the leases' time has passed).
  v1::ListRegionsRequest list;
  auto all = table.List(list);
  if (all.ok()) {
    for (const auto& r : all->regions()) {
      v1::DeleteRegionRequest d;
      d.set_key(r.key());
      (void)table.Delete(d);
    }
  }
  table.Reap(now + std::chrono::hours(1));
  auto stats = table.Stats();
  if (stats.free_bytes() != stats.pool_bytes()) std::abort();
  return 0;
}
