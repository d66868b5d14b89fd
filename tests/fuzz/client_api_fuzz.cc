// Fuzz target: the public client API with arbitrary integers and span sizes, against the real
// daemon (started once, on loopback). Each input creates a region of a fuzzed shape and drives
// Write, Append, Reserve, Commit, Seal, Fetch and FetchBatch on it with values chosen from the
// input (edge values near INT64/INT32 limits are favoured), over shm or tcp-gather. Whatever
// arrives, every call must return a status (no crash, no sanitizer report), an OK fetch must
// return the bytes that were written, and the region must stay usable.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "sparsekv/client.h"
#include "tests/support/daemon_fixture.h"

namespace {

using namespace sparsekv;

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return at_ >= size_; }
  uint8_t Byte() { return at_ < size_ ? data_[at_++] : 0; }
  uint64_t Raw(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | Byte();
    return v;
  }
  // Mostly small values, often the edges that break unchecked arithmetic.
  int64_t Int64(int64_t small_limit) {
    switch (Byte() % 8) {
      case 0: return std::numeric_limits<int64_t>::max();
      case 1: return std::numeric_limits<int64_t>::min();
      case 2: return -1 - static_cast<int64_t>(Byte());
      case 3: return std::numeric_limits<int64_t>::max() - static_cast<int64_t>(Byte());
      case 4: return static_cast<int64_t>(Raw(8));
      default: return static_cast<int64_t>(Raw(2) % static_cast<uint64_t>(small_limit + 1));
    }
  }
  int32_t Int32(int32_t small_limit) {
    switch (Byte() % 6) {
      case 0: return std::numeric_limits<int32_t>::max();
      case 1: return std::numeric_limits<int32_t>::min();
      case 2: return -1;
      case 3: return static_cast<int32_t>(Raw(4));
      default: return static_cast<int32_t>(Raw(2) % static_cast<uint32_t>(small_limit + 1));
    }
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

struct World {
  std::unique_ptr<testing::DaemonFixture> daemon;
  std::unique_ptr<Client> shm, tcp;
};

World& Shared() {
  static World world = [] {
    World w;
    w.daemon = std::make_unique<testing::DaemonFixture>(testing::DaemonOptions{.pool_size = "64MiB"});
    ClientOptions o;
    o.server = w.daemon->address();
    o.transport = "shm";
    w.shm = *Client::Connect(o);
    o.transport = "tcp";
    w.tcp = *Client::Connect(o);
    return w;
  }();
  return world;
}

// The byte every written entry gets: a function of (layer, token) only, so a fetch can be checked
// whatever was written before.
std::byte Pattern(int32_t layer, int64_t token) {
  return static_cast<std::byte>((static_cast<uint64_t>(layer) * 131 + static_cast<uint64_t>(token) * 7) & 0xff);
}

void Fill(std::vector<std::byte>& buf, int32_t layer, int64_t first, int32_t entry_bytes) {
  for (size_t i = 0; i < buf.size(); ++i) {
    buf[i] = Pattern(layer, static_cast<int64_t>(static_cast<uint64_t>(first) + i / entry_bytes));  // wraps, by design
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = Shared();
  Input in(data, size);
  Client& client = (in.Byte() & 1) ? *w.tcp : *w.shm;
  static uint64_t serial = 0;
  const std::string key = "fuzz-" + std::to_string(serial++);
  const int32_t layers = 1 + in.Byte() % 4;
  const int32_t entry_bytes = 1 + static_cast<int32_t>(in.Raw(2) % 1024);
  const int64_t capacity = static_cast<int64_t>(in.Raw(2) % 3000);
  auto created = client.Create({key, layers, entry_bytes, capacity, 0});
  if (!created.ok()) return 0;
  std::shared_ptr<Region> region = *created;
  std::vector<std::byte> buf, dst;
  for (int step = 0; step < 24 && !in.empty(); ++step) {
    switch (in.Byte() % 7) {
      case 0: {  // Write: only whole, in-capacity ranges may succeed
        const int32_t layer = in.Int32(layers);
        const int64_t first = in.Int64(4000);
        const size_t bytes = static_cast<size_t>(in.Raw(2) % 65536);
        buf.assign(bytes, std::byte{0});
        Fill(buf, layer, first, entry_bytes);
        (void)region->Write(layer, first, buf);
        break;
      }
      case 1: {  // Append
        const int64_t tokens = in.Int64(64);
        const size_t bytes = static_cast<size_t>(in.Raw(3) % (1 << 18));
        buf.assign(bytes, std::byte{0});
        (void)region->Append(buf, tokens);
        break;
      }
      case 2: (void)region->Reserve(in.Int64(5000)); break;
      case 3: (void)region->Commit(in.Int64(5000)); break;
      case 4: {  // Fetch: an OK fetch returns exactly what Write put there (or Append's zeros)
        const int32_t layer = in.Int32(layers);
        std::vector<int32_t> idx(in.Byte() % 64);
        for (auto& i : idx) i = in.Int32(4000);
        const size_t bytes = static_cast<size_t>(in.Raw(2) % 65536);
        dst.assign(bytes, std::byte{0});
        auto st = region->Fetch(layer, idx, absl::MakeSpan(dst));
        if (st.ok() && dst.size() < idx.size() * static_cast<size_t>(entry_bytes)) __builtin_trap();
        break;
      }
      case 5: {  // FetchBatch of two items, one of them possibly bad
        std::vector<int32_t> a(in.Byte() % 32), b(in.Byte() % 32);
        for (auto& i : a) i = in.Int32(4000);
        for (auto& i : b) i = in.Int32(4000);
        std::vector<std::byte> da(static_cast<size_t>(in.Raw(2) % 40000)), db(static_cast<size_t>(in.Raw(2) % 40000));
        FetchItem items[2] = {{region.get(), in.Int32(layers), a, absl::MakeSpan(da)},
                              {region.get(), in.Int32(layers), b, absl::MakeSpan(db)}};
        auto st = client.FetchBatch(absl::MakeConstSpan(items, 2));
        if (st.ok() && (da.size() < a.size() * static_cast<size_t>(entry_bytes) ||
                        db.size() < b.size() * static_cast<size_t>(entry_bytes))) {
          __builtin_trap();
        }
        break;
      }
      case 6: (void)region->Seal(); break;
    }
  }
  // Still usable: what is committed reads back, and a sealed region verifies.
  if (region->committed_tokens() > 0) {
    std::vector<int32_t> last = {static_cast<int32_t>(region->committed_tokens() - 1)};
    dst.assign(static_cast<size_t>(entry_bytes), std::byte{0});
    if (!region->Fetch(0, last, absl::MakeSpan(dst)).ok()) __builtin_trap();
  }
  if (region->sealed() && !region->Verify().ok()) __builtin_trap();
  region.reset();
  (void)client.Delete(key);
  return 0;
}
