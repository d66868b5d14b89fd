// sparsekv-churn: the churn workload from its own process, for soak and fault tests.
//   sparsekv-churn --server HOST:PORT [--seconds S] [--threads N] [--seed N] [--prefix P]
//   sparsekv-churn --server HOST:PORT --hold N --prefix P   (create N regions, hold their leases,
//                                                            print "holding", wait to be killed)
// Prints one JSON line of counts; exits 1 if any byte was wrong or any error unexpected.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/support/churn.h"
#include "tests/support/pattern_regions.h"

int main(int argc, char** argv) {
  sparsekv::testing::ChurnOptions options;
  int hold = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--server") options.server = v;
    else if (a == "--seconds") options.seconds = std::atof(v.c_str());
    else if (a == "--threads") options.threads = std::atoi(v.c_str());
    else if (a == "--seed") options.seed = std::strtoull(v.c_str(), nullptr, 10);
    else if (a == "--prefix") options.key_prefix = v;
    else if (a == "--hold") hold = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (hold > 0) {
    auto client = sparsekv::Client::Connect({.server = options.server});
    if (!client.ok()) return 1;
    std::vector<std::shared_ptr<sparsekv::Region>> held;
    for (int i = 0; i < hold; ++i) {
      auto r = sparsekv::testing::MakePatternRegion(**client, absl::StrCat(options.key_prefix, "-", i), 2, 656, 500, i,
                                                    /*seal=*/i % 2 == 0);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        return 1;
      }
      held.push_back(*r);
    }
    std::printf("holding\n");
    std::fflush(stdout);
    while (true) pause();
  }
  sparsekv::testing::ChurnStats stats;
  sparsekv::testing::RunChurn(options, &stats);
  std::printf("%s\n", stats.ToJson().c_str());
  if (!stats.first_unexpected.empty()) std::fprintf(stderr, "first unexpected: %s\n", stats.first_unexpected.c_str());
  return stats.wrong == 0 && stats.unexpected == 0 ? 0 : 1;
}
