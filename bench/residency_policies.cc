// sparsekv-residency-policies: replacement policies for the GPU residency cache, compared on the
// traces sparsekv-gpu-bench uses (DSA-like top-k whose step-to-step overlap follows ESS's per-layer
// measurement), on the CPU: hit rates are a property of the trace and the policy, not of the GPU.
//
//   LRU   the policy ResidencyCache implements (this program runs its CPU reference,
//         client/cuda/residency_reference.cc, the one the GPU kernels are tested against)
//   FIFO  evict the entry that came in first (no promotion on a hit)
//   LFU   evict the entry with the lowest hit count, decayed by 0.9 every step (frequency with
//         aging; a faster decay, 0.5, ranks like LRU at step granularity)
//   OPT   Belady's offline optimum: evict the entry whose next use is furthest away (the bound)
//
// Every policy serves a step the same way: all of the step's hits count first, then the
// distinct misses replace entries not used in this step. JSON lines: hit rate per policy and
// layer class, with ratios to LRU and to OPT of the same trace.
//
//   sparsekv-residency-policies [--quick] [--capacity 6144] [--k 2048] [--steps 48]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_format.h"
#include "client/cuda/residency_reference.h"

namespace {

// ESS's measured step-to-step overlap of the top-k per layer (DeepSeek-V3.2), as gpu_bench uses it.
double Overlap(int layer) {
  if (layer == 0) return 0.0;
  if (layer <= 16 || layer >= 45) return 0.75;
  if (layer >= 18 && layer <= 43) return 0.4;
  return 0.55;
}

using Step = std::vector<int32_t>;

// "uniform": what is not kept from the previous step is drawn uniformly over the context (the
// gpu-bench trace). "zipf": drawn from a Zipf(1.1) popularity over the context instead (a few
// tokens, scattered over the prefix, are picked again and again: long-range reuse).
std::vector<Step> MakeTrace(const std::string& kind, int layer, int steps, int k, int64_t context, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<double> cdf;
  std::vector<int32_t> scatter;
  if (kind == "zipf") {
    cdf.resize(context);
    double sum = 0;
    for (int64_t r = 0; r < context; ++r) cdf[r] = sum += 1.0 / std::pow(static_cast<double>(r + 1), 1.1);
    scatter.resize(context);
    for (int64_t r = 0; r < context; ++r) scatter[r] = static_cast<int32_t>(r);
    std::shuffle(scatter.begin(), scatter.end(), rng);
  }
  std::uniform_real_distribution<double> unit(0, 1);
  auto fresh = [&]() -> int32_t {
    if (cdf.empty()) return static_cast<int32_t>(rng() % context);
    const double x = unit(rng) * cdf.back();
    return scatter[std::lower_bound(cdf.begin(), cdf.end(), x) - cdf.begin()];
  };
  std::vector<Step> trace(steps, Step(k));
  for (int st = 0; st < steps; ++st) {
    for (int e = 0; e < k; ++e) {
      if (st > 0 && (rng() % 1000) < Overlap(layer) * 1000) trace[st][e] = trace[st - 1][rng() % k];
      else trace[st][e] = fresh();
    }
  }
  return trace;
}

struct Count {
  uint64_t hits = 0, misses = 0;
  double rate() const { return hits + misses == 0 ? 0 : static_cast<double>(hits) / (hits + misses); }
};

// The common step: hits among `resident`, then distinct misses in order of first appearance.
// `Evict(used, n)` drops n entries not used in this step, by the policy's rule.
template <typename Policy>
void Serve(const Step& step, size_t capacity, Policy& policy, Count* count) {
  std::unordered_set<int32_t> used(step.begin(), step.end());
  std::vector<int32_t> misses;
  std::unordered_set<int32_t> missed;
  for (int32_t t : step) {
    if (policy.Resident(t)) {
      policy.Hit(t);
      count->hits++;
    } else if (missed.insert(t).second) {
      misses.push_back(t);
    } else {
      count->hits++;  // a duplicate of a miss: served by the same fetch
    }
  }
  const size_t room = capacity - policy.size();
  if (misses.size() > room) policy.Evict(used, misses.size() - room);
  for (int32_t t : misses) {
    policy.Insert(t);
    count->misses++;
  }
  policy.EndStep();
}

struct Fifo {
  std::vector<int32_t> queue;  // insertion order
  std::unordered_set<int32_t> in;
  bool Resident(int32_t t) const { return in.count(t) > 0; }
  void Hit(int32_t) {}
  size_t size() const { return in.size(); }
  void Evict(const std::unordered_set<int32_t>& used, size_t n) {
    std::vector<int32_t> kept;
    for (int32_t t : queue) {
      if (n > 0 && used.count(t) == 0) {
        in.erase(t);
        --n;
      } else {
        kept.push_back(t);
      }
    }
    queue.swap(kept);
  }
  void Insert(int32_t t) {
    queue.push_back(t);
    in.insert(t);
  }
  void EndStep() {}
};

struct Lfu {
  std::unordered_map<int32_t, std::pair<double, uint64_t>> score;  // token -> (score, insertion tick)
  uint64_t tick = 0;
  bool Resident(int32_t t) const { return score.count(t) > 0; }
  void Hit(int32_t t) { score[t].first += 1; }
  size_t size() const { return score.size(); }
  void Evict(const std::unordered_set<int32_t>& used, size_t n) {
    std::vector<std::pair<std::pair<double, uint64_t>, int32_t>> candidates;
    for (const auto& [t, s] : score) {
      if (used.count(t) == 0) candidates.push_back({s, t});
    }
    n = std::min(n, candidates.size());
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<long>(n), candidates.end());
    for (size_t i = 0; i < n; ++i) score.erase(candidates[i].second);
  }
  void Insert(int32_t t) { score[t] = {1.0, tick++}; }
  void EndStep() {
    for (auto& [t, s] : score) s.first *= 0.9;  // slow aging: frequency counts, not only the last step
  }
};

struct Opt {
  const std::map<int32_t, std::vector<int>>* uses = nullptr;  // token -> steps it appears in
  int step = 0;
  std::unordered_set<int32_t> in;
  bool Resident(int32_t t) const { return in.count(t) > 0; }
  void Hit(int32_t) {}
  size_t size() const { return in.size(); }
  int NextUse(int32_t t) const {
    const auto& s = uses->at(t);
    auto it = std::upper_bound(s.begin(), s.end(), step);
    return it == s.end() ? 1 << 30 : *it;
  }
  void Evict(const std::unordered_set<int32_t>& used, size_t n) {
    std::vector<std::pair<int, int32_t>> candidates;  // (-next use, token): furthest first
    for (int32_t t : in) {
      if (used.count(t) == 0) candidates.push_back({-NextUse(t), t});
    }
    n = std::min(n, candidates.size());
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<long>(n), candidates.end());
    for (size_t i = 0; i < n; ++i) in.erase(candidates[i].second);
  }
  void Insert(int32_t t) { in.insert(t); }
  void EndStep() { ++step; }
};

void Emit(const std::string& labels, const std::string& metric, double value, double vs_lru, double vs_opt) {
  std::printf("{\"bench\":\"residency_policies\"%s,\"metric\":\"%s\",\"value\":%.4f,\"ratio\":%.4f,\"ratio_to\":\"lru\","
              "\"ratio_opt\":%.4f}\n",
              labels.c_str(), metric.c_str(), value, vs_lru, vs_opt);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int capacity = 6144, k = 2048, steps = 48;
  std::vector<int> layers = {0, 8, 17, 30, 50};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      steps = 12;
      layers = {0, 8, 30};
    } else if (a == "--capacity" && i + 1 < argc) {
      capacity = std::atoi(argv[++i]);
    } else if (a == "--k" && i + 1 < argc) {
      k = std::atoi(argv[++i]);
    } else if (a == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: sparsekv-residency-policies [--quick] [--capacity N] [--k N] [--steps N]\n");
      return 2;
    }
  }
  if (capacity < k) {
    std::fprintf(stderr, "sparsekv-residency-policies: --capacity %d must be at least --k %d\n", capacity, k);
    return 2;
  }
  for (const std::string kind : {"uniform", "zipf"})
  for (int64_t context : {int64_t{32768}, int64_t{131072}}) {
    for (int layer : layers) {
      const auto trace = MakeTrace(kind, layer, steps, k, context, 1000 + layer);
      Count lru, fifo, lfu, opt;
      sparsekv::cuda::ResidencyReference reference(capacity);
      sparsekv::cuda::StepResult result;
      Fifo f;
      Lfu u;
      std::map<int32_t, std::vector<int>> uses;
      for (int st = 0; st < steps; ++st) {
        for (int32_t t : trace[st]) {
          auto& s = uses[t];
          if (s.empty() || s.back() != st) s.push_back(st);
        }
      }
      Opt o;
      o.uses = &uses;
      for (int st = 0; st < steps; ++st) {
        if (!reference.Step(trace[st].data(), k, context, &result)) {
          std::fprintf(stderr, "LRU reference refused step %d (capacity)\n", st);
          return 1;
        }
        if (st > 0) {  // step 0 fills every cache cold; count from step 1, as gpu_bench does
          lru.hits += result.hits;
          lru.misses += result.misses;
        }
        Count scratch;
        Serve(trace[st], capacity, f, st > 0 ? &fifo : &scratch);
        Serve(trace[st], capacity, u, st > 0 ? &lfu : &scratch);
        Serve(trace[st], capacity, o, st > 0 ? &opt : &scratch);
      }
      const std::string labels = absl::StrFormat(",\"trace\":\"%s\",\"context\":%d,\"layer\":%d,\"overlap\":%.2f,\"capacity\":%d,\"k\":%d",
                                                 kind, context, layer, Overlap(layer), capacity, k);
      for (const auto& [name, c] : std::vector<std::pair<std::string, Count>>{
               {"lru", lru}, {"fifo", fifo}, {"lfu_aged", lfu}, {"opt", opt}}) {
        Emit(labels, name + "_hit_rate", c.rate(), lru.rate() > 0 ? c.rate() / lru.rate() : 0,
             opt.rate() > 0 ? c.rate() / opt.rate() : 0);
      }
    }
  }
  return 0;
}
