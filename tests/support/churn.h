// The churn workload: threads that create (and fill, and usually seal) regions, open and fetch
// them, delete each other's regions and drop handles, for a bounded time. Keys carry a
// generation and every entry encodes (generation, layer, token), so a misdirected read counts
// as wrong. Used in-process by the churn test and, as sparsekv-churn, from other processes.
#ifndef SPARSEKV_TESTS_SUPPORT_CHURN_H_
#define SPARSEKV_TESTS_SUPPORT_CHURN_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "sparsekv/client.h"

namespace sparsekv::testing {

struct ChurnOptions {
  std::string server;
  int threads = 4;
  double seconds = 3;
  uint64_t seed = 1;
  std::string key_prefix = "churn";  // keys are PREFIX-GENERATION; generations are per process
  bool some_clients_never_renew = true;
};

struct ChurnStats {
  std::atomic<int64_t> creates{0}, deletes{0}, fetches{0}, entries{0}, wrong{0}, unexpected{0}, refused{0};
  std::string first_unexpected;
  std::string ToJson() const;
};

void RunChurn(const ChurnOptions& options, ChurnStats* stats);

}  // namespace sparsekv::testing

#endif  // SPARSEKV_TESTS_SUPPORT_CHURN_H_
