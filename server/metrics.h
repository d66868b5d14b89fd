// Metrics collects what the daemon does, for the Prometheus text endpoint and `sparsekvctl
// metrics`: control-RPC latency histograms and errors by method and status code, and the data
// moved by clients (reported with their lease renewals, since shm/CXL fetches never reach the
// daemon). Pool and region gauges come from RegionTable::Stats at render time.
//
// Thread-safe; touched once per control RPC, never per fetched entry.
#ifndef SPARSEKV_SERVER_METRICS_H_
#define SPARSEKV_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <chrono>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "sparsekv/v1/control.pb.h"

namespace sparsekv {

class Metrics {
 public:
  // Upper bounds of the RPC latency buckets, in seconds.
  static constexpr std::array<double, 12> kBuckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                     0.005, 0.01, 0.025, 0.05, 0.1, 1.0};

  void ObserveRpc(const std::string& method, absl::StatusCode code, double seconds);
  void AddClientStats(const v1::ClientDataStats& stats);
  // The transports clients reported in the last `max_age_ms`, with their reasons.
  void FillClientTransports(int64_t max_age_ms, v1::StatsResponse* out);

  // The whole exposition, gauges from `stats` plus everything observed so far.
  std::string RenderPrometheus(const v1::StatsResponse& stats) const;

 private:
  struct Histogram {
    std::array<int64_t, kBuckets.size()> buckets{};
    int64_t count = 0;
    double sum = 0;
  };
  struct DataCounters {
    int64_t fetches = 0, fetched_entries = 0, fetched_bytes = 0, writes = 0, written_bytes = 0;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Histogram> latency_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, int64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, DataCounters> data_ ABSL_GUARDED_BY(mu_);  // by transport
  struct ClientReport {
    std::string transport, reason;
    std::chrono::steady_clock::time_point seen;
  };
  std::map<std::string, ClientReport> clients_ ABSL_GUARDED_BY(mu_);  // by client id
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_METRICS_H_
