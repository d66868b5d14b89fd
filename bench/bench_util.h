// What every sparsekv benchmark repeats: statistics over samples and the JSON line each
// measurement is printed as (the fields a bench labels it with, then metric, value, unit and,
// where a limit or peer was measured in the same run, ratio and ratio_to).
#ifndef SPARSEKV_BENCH_BENCH_UTIL_H_
#define SPARSEKV_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"

namespace sparsekv::bench {

// The sample at fraction p of the sorted samples (nearest rank); 0 for none.
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

// The upper median (the sample at index n / 2 of the sorted samples); 0 for none.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Prints `head` (an open JSON object holding the bench's labels, e.g. {"bench":"gpu",...) with
// the measurement appended, closes it and flushes: one line per measurement.
inline void EmitMeasurement(std::string head, const std::string& metric, double value, const std::string& unit,
                            double ratio = -1, const std::string& ratio_to = "", int value_digits = 6,
                            int ratio_decimals = 4) {
  absl::StrAppendFormat(&head, ",\"metric\":\"%s\",\"value\":%.*g,\"unit\":\"%s\"", metric, value_digits, value, unit);
  if (ratio >= 0) absl::StrAppendFormat(&head, ",\"ratio\":%.*f,\"ratio_to\":\"%s\"", ratio_decimals, ratio, ratio_to);
  std::printf("%s}\n", head.c_str());
  std::fflush(stdout);
}

}  // namespace sparsekv::bench

#endif  // SPARSEKV_BENCH_BENCH_UTIL_H_
