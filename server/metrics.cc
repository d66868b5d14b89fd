#include "server/metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sparsekv {

void Metrics::ObserveRpc(const std::string& method, absl::StatusCode code, double seconds) {
  absl::MutexLock lock(&mu_);
  Histogram& h = latency_[method];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) h.buckets[i]++;
  }
  h.count++;
  h.sum += seconds;
  if (code != absl::StatusCode::kOk) errors_[{method, absl::StatusCodeToString(code)}]++;
}

void Metrics::AddClientStats(const v1::ClientDataStats& s) {
  absl::MutexLock lock(&mu_);
  if (!s.client_id().empty() && !s.transport().empty()) {
    if (clients_.size() < 4096 || clients_.count(s.client_id()) > 0) {
      clients_[s.client_id().substr(0, 256)] = {s.transport().substr(0, 64), s.transport_reason().substr(0, 1024),
                                                std::chrono::steady_clock::now()};
    }
  }
  if (s.fetches() == 0 && s.writes() == 0) return;
  DataCounters& d = data_[s.transport().empty() ? "unknown" : s.transport()];
  d.fetches += std::max<int64_t>(0, s.fetches());
  d.fetched_entries += std::max<int64_t>(0, s.fetched_entries());
  d.fetched_bytes += std::max<int64_t>(0, s.fetched_bytes());
  d.writes += std::max<int64_t>(0, s.writes());
  d.written_bytes += std::max<int64_t>(0, s.written_bytes());
}

void Metrics::FillClientTransports(int64_t max_age_ms, v1::StatsResponse* out) {
  absl::MutexLock lock(&mu_);
  const auto now = std::chrono::steady_clock::now();
  for (auto it = clients_.begin(); it != clients_.end();) {
    const int64_t age = std::chrono::duration_cast<std::chrono::milliseconds>(now - it->second.seen).count();
    if (age > max_age_ms) {
      it = clients_.erase(it);
      continue;
    }
    auto* r = out->add_client_transports();
    r->set_client_id(it->first);
    r->set_transport(it->second.transport);
    r->set_reason(it->second.reason);
    r->set_last_report_ms_ago(age);
    ++it;
  }
}

std::string Metrics::RenderPrometheus(const v1::StatsResponse& st) const {
  std::string out;
  auto gauge = [&](const char* name, const char* help, const std::string& labels, double value) {
    absl::StrAppendFormat(&out, "# HELP %s %s\n# TYPE %s gauge\n%s%s %.17g\n", name, help, name, name, labels, value);
  };
  auto counter = [&](const char* name, const char* help, double value) {
    absl::StrAppendFormat(&out, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", name, help, name, name, value);
  };
  const std::string tenant = "{tenant=\"default\"}";
  gauge("sparsekv_pool_bytes", "Bytes of the memory pool.", tenant, st.pool_bytes());
  gauge("sparsekv_pool_used_bytes", "Pool bytes held by regions.", tenant, st.used_bytes());
  gauge("sparsekv_pool_free_bytes", "Pool bytes free for allocation now.", tenant, st.free_bytes());
  gauge("sparsekv_pool_quarantined_bytes", "Freed pool bytes waiting for leases to expire.", tenant, st.quarantined_bytes());
  gauge("sparsekv_regions", "Live regions.", tenant, st.regions());
  gauge("sparsekv_sealed_regions", "Live sealed regions.", tenant, st.sealed_regions());
  gauge("sparsekv_leases", "Unexpired leases.", tenant, st.active_leases());
  for (const auto& t : st.tenants()) {
    const std::string label = absl::StrFormat("{tenant=\"%s\"}", t.name());
    absl::StrAppendFormat(&out, "sparsekv_tenant_used_bytes%s %d\nsparsekv_tenant_regions%s %d\nsparsekv_tenant_quota_bytes%s %d\n",
                          label, t.used_bytes(), label, t.regions(), label, t.quota_bytes());
  }
  gauge("sparsekv_draining", "1 while the daemon refuses new regions.", "", st.draining() ? 1 : 0);
  gauge("sparsekv_uptime_seconds", "Seconds since start-up.", "", st.uptime_ms() / 1000.0);
  counter("sparsekv_evictions_total", "Regions evicted.", st.evictions());
  counter("sparsekv_evicted_bytes_total", "Bytes freed by eviction.", st.evicted_bytes());
  counter("sparsekv_expired_regions_total", "Regions deleted after idling past their TTL.", st.expired_regions());
  counter("sparsekv_abandoned_regions_total", "Unsealed regions deleted after nobody held a lease on them.", st.abandoned_regions());
  counter("sparsekv_region_creates_total", "Regions created.", st.creates());
  counter("sparsekv_region_deletes_total", "Regions deleted on request.", st.deletes());

  absl::MutexLock lock(&mu_);
  struct DataMetric {
    const char* name;
    const char* help;
    int64_t DataCounters::*field;
  };
  static constexpr DataMetric kData[] = {
      {"sparsekv_fetches_total", "Fetch calls (single or batch items) reported by clients.", &DataCounters::fetches},
      {"sparsekv_fetched_entries_total", "Entries fetched, reported by clients.", &DataCounters::fetched_entries},
      {"sparsekv_fetched_bytes_total", "Entry bytes fetched, reported by clients.", &DataCounters::fetched_bytes},
      {"sparsekv_writes_total", "Write calls reported by clients.", &DataCounters::writes},
      {"sparsekv_written_bytes_total", "Entry bytes written, reported by clients.", &DataCounters::written_bytes},
  };
  for (const auto& m : kData) {
    absl::StrAppendFormat(&out, "# HELP %s %s\n# TYPE %s counter\n", m.name, m.help, m.name);
    for (const auto& [transport, d] : data_) {
      absl::StrAppendFormat(&out, "%s{transport=\"%s\"} %d\n", m.name, transport, d.*(m.field));
    }
  }
  out += "# HELP sparsekv_rpc_duration_seconds Control-plane RPC latency.\n"
         "# TYPE sparsekv_rpc_duration_seconds histogram\n";
  for (const auto& [method, h] : latency_) {
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      absl::StrAppendFormat(&out, "sparsekv_rpc_duration_seconds_bucket{method=\"%s\",le=\"%g\"} %d\n", method,
                            kBuckets[i], h.buckets[i]);
    }
    absl::StrAppendFormat(&out, "sparsekv_rpc_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"} %d\n", method, h.count);
    absl::StrAppendFormat(&out, "sparsekv_rpc_duration_seconds_sum{method=\"%s\"} %.9f\n", method, h.sum);
    absl::StrAppendFormat(&out, "sparsekv_rpc_duration_seconds_count{method=\"%s\"} %d\n", method, h.count);
  }
  out += "# HELP sparsekv_rpc_errors_total Control-plane RPCs that failed, by status code.\n"
         "# TYPE sparsekv_rpc_errors_total counter\n";
  for (const auto& [key, n] : errors_) {
    absl::StrAppendFormat(&out, "sparsekv_rpc_errors_total{method=\"%s\",code=\"%s\"} %d\n", key.first, key.second, n);
  }
  return out;
}

}  // namespace sparsekv
