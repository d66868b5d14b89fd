#include "server/eviction.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace sparsekv {
namespace {

class LruPolicy : public EvictionPolicy {
 public:
  const char* name() const override { return "lru"; }
  void Order(std::vector<EvictionCandidate>* candidates) const override {
    std::stable_sort(candidates->begin(), candidates->end(),
                     [](const EvictionCandidate& a, const EvictionCandidate& b) {
                       return a.last_access < b.last_access;
                     });
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name) {
  if (name == "lru") return std::make_unique<LruPolicy>();
  return absl::InvalidArgumentError(absl::StrFormat("unknown eviction policy '%s' (known: lru)", name));
}

}  // namespace sparsekv
