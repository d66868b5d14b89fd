#include "tests/support/churn.h"

#include <chrono>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "tests/support/pattern_regions.h"

namespace sparsekv::testing {

std::string ChurnStats::ToJson() const {
  return absl::StrFormat(
      "{\"creates\":%d,\"deletes\":%d,\"fetches\":%d,\"entries\":%d,\"wrong\":%d,\"unexpected\":%d,\"refused\":%d}",
      creates.load(), deletes.load(), fetches.load(), entries.load(), wrong.load(), unexpected.load(), refused.load());
}

void RunChurn(const ChurnOptions& options, ChurnStats* stats) {
  const int32_t kLayers = 2, kEntry = 656;
  std::atomic<int64_t> next_generation{1};
  std::mutex mu;
  std::vector<std::string> live;
  const std::string prefix = options.key_prefix + "-";
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(options.seconds * 1000));
  auto expected = [](absl::StatusCode code) {
    return code == absl::StatusCode::kNotFound || code == absl::StatusCode::kFailedPrecondition ||
           code == absl::StatusCode::kResourceExhausted || code == absl::StatusCode::kAlreadyExists;
  };
  auto note = [&](const absl::Status& status, const char* what) {
    if (expected(status.code())) {
      stats->refused++;
      return;
    }
    stats->unexpected++;
    std::lock_guard lock(mu);
    if (stats->first_unexpected.empty()) stats->first_unexpected = absl::StrCat(what, ": ", status.ToString());
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < options.threads; ++t) {
    threads.emplace_back([&, t] {
      ClientOptions client_options;
      client_options.server = options.server;
      client_options.renew_leases = !(options.some_clients_never_renew && t % 3 == 2);
      auto client = Client::Connect(client_options);
      if (!client.ok()) {
        note(client.status(), "connect");
        return;
      }
      std::mt19937_64 rng(options.seed * 7919 + t);
      std::vector<std::shared_ptr<Region>> held;
      while (std::chrono::steady_clock::now() < deadline) {
        int op = static_cast<int>(rng() % 10);
        if (op < 3) {
          int64_t gen = next_generation++;
          std::string key = absl::StrCat(prefix, gen);
          int64_t tokens = 200 + static_cast<int64_t>(rng() % 1500);
          auto r = MakePatternRegion(**client, key, kLayers, kEntry, tokens, options.seed * 1000003 + gen, rng() % 4 != 0);
          if (!r.ok()) {
            note(r.status(), "create");
            continue;
          }
          stats->creates++;
          std::lock_guard lock(mu);
          live.push_back(key);
          if (rng() % 2) held.push_back(*r);
        } else if (op < 8) {
          std::shared_ptr<Region> region;
          if (!held.empty() && rng() % 2) {
            region = held[rng() % held.size()];
          } else {
            std::string key;
            {
              std::lock_guard lock(mu);
              if (live.empty()) continue;
              key = live[rng() % live.size()];
            }
            auto opened = (*client)->Open(key);
            if (!opened.ok()) {
              note(opened.status(), "open");
              continue;
            }
            region = *opened;
            if (rng() % 3 == 0) held.push_back(region);
          }
          int64_t gen = std::stoll(region->key().substr(prefix.size()));
          int64_t committed = region->committed_tokens();
          if (committed == 0) continue;
          std::vector<int32_t> idx(64);
          for (auto& i : idx) i = static_cast<int32_t>(rng() % committed);
          std::vector<std::byte> dst(idx.size() * kEntry);
          int32_t layer = static_cast<int32_t>(rng() % kLayers);
          if (rng() % 5 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 50));
          auto st = region->Fetch(layer, idx, absl::MakeSpan(dst));
          if (!st.ok()) {
            note(st, "fetch");
            continue;
          }
          stats->fetches++;
          stats->entries += static_cast<int64_t>(idx.size());
          stats->wrong += CountWrong(options.seed * 1000003 + gen, layer, idx, kEntry, dst);
        } else if (op < 9) {
          std::string key;
          {
            std::lock_guard lock(mu);
            if (live.empty()) continue;
            size_t i = rng() % live.size();
            key = live[i];
            live.erase(live.begin() + static_cast<long>(i));
          }
          auto st = (*client)->Delete(key);
          if (st.ok()) stats->deletes++;
          else note(st, "delete");
        } else if (!held.empty()) {
          held.erase(held.begin() + static_cast<long>(rng() % held.size()));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
}

}  // namespace sparsekv::testing
