// What both RMA transports (fabric, verbs) keep: the idle lanes a fetch takes and gives back (an
// endpoint or queue pair each, so threads never share one), and the caller's registered buffers,
// found by the range a transfer lands in. Neither locks: the transport's mutex guards them.
#ifndef SPARSEKV_CLIENT_TRANSPORTS_RMA_REGISTRY_H_
#define SPARSEKV_CLIENT_TRANSPORTS_RMA_REGISTRY_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

namespace sparsekv {

template <typename Lane>
class IdleLanes {
 public:
  // The most recently returned lane, or null (the caller opens a new one).
  std::unique_ptr<Lane> Take() {
    if (idle_.empty()) return nullptr;
    auto lane = std::move(idle_.back());
    idle_.pop_back();
    return lane;
  }
  void Give(std::unique_ptr<Lane> lane) { idle_.push_back(std::move(lane)); }
  void Clear() { idle_.clear(); }

 private:
  std::vector<std::unique_ptr<Lane>> idle_;
};

// Registered buffers by start address; Handle is the provider's registration (a pointer).
template <typename Handle>
class RegisteredBuffers {
 public:
  // Records `handle` for [addr, addr + bytes); returns the registration it replaces (for the
  // caller to close), or null.
  Handle Put(void* addr, size_t bytes, Handle handle) {
    auto [it, inserted] = map_.emplace(reinterpret_cast<uintptr_t>(addr), std::make_pair(bytes, handle));
    if (inserted) return nullptr;
    Handle old = it->second.second;
    it->second = {bytes, handle};
    return old;
  }
  // Forgets the buffer at addr; returns its registration (to close), or null when none.
  Handle Take(void* addr) {
    auto it = map_.find(reinterpret_cast<uintptr_t>(addr));
    if (it == map_.end()) return nullptr;
    Handle h = it->second.second;
    map_.erase(it);
    return h;
  }
  // The registration of the buffer that holds all of [p, p + len), or null.
  Handle Covering(const void* p, size_t len) const {
    const auto at = reinterpret_cast<uintptr_t>(p);
    auto it = map_.upper_bound(at);
    if (it == map_.begin()) return nullptr;
    --it;
    return at + len <= it->first + it->second.first ? it->second.second : nullptr;
  }
  template <typename F>
  void ForEach(F f) const {
    for (const auto& [addr, entry] : map_) f(entry.second);
  }
  void Clear() { map_.clear(); }

 private:
  std::map<uintptr_t, std::pair<size_t, Handle>> map_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_TRANSPORTS_RMA_REGISTRY_H_
