// Lease renewal: one background thread renews every open handle's lease before it can lapse
// and refreshes the handles a restarted daemon no longer knows.
#include "client/client_state.h"

namespace sparsekv {

void Client::Impl::RenewOnce() {
  std::vector<std::shared_ptr<Region::State>> live;
  {
    absl::MutexLock lock(&mu);
    for (auto it = open.begin(); it != open.end();) {
      if (auto s = it->second.lock()) {
        if (!s->revoked.load()) live.push_back(std::move(s));  // a revoked handle stays revoked
        ++it;
      } else {
        open.erase(it++);
      }
    }
  }
  if (live.empty()) return;
  v1::RenewLeasesRequest request;
  for (const auto& s : live) request.add_lease_ids(s->lease_id.load());
  auto* stats = request.mutable_stats();
  const auto reporting = live.front()->CurrentTransport();
  stats->set_transport(reporting->name());
  stats->set_transport_reason(reporting->reason());
  stats->set_client_id(client_id);
  stats->set_fetches(data.fetches.exchange(0));
  stats->set_fetched_entries(data.fetched_entries.exchange(0));
  stats->set_fetched_bytes(data.fetched_bytes.exchange(0));
  stats->set_writes(data.writes.exchange(0));
  stats->set_written_bytes(data.written_bytes.exchange(0));
  v1::RenewLeasesResponse reply;
  int64_t sent = NowNs();
  auto status = Call(&v1::Control::Stub::RenewLeases, "RenewLeases", request, &reply);
  if (!status.ok()) {  // not reported: count it again next time
    CountFetch(stats->fetches(), stats->fetched_entries(), stats->fetched_bytes());
    data.writes.fetch_add(stats->writes());
    data.written_bytes.fetch_add(stats->written_bytes());
  }
  if (!status.ok() || reply.leases_size() != static_cast<int>(live.size())) {
    std::string why = status.ok() ? "malformed renewal reply" : std::string(status.message());
    for (const auto& s : live) {
      absl::MutexLock lock(&s->mu);
      s->renew_error = why;
    }
    return;
  }
  for (size_t i = 0; i < live.size(); ++i) {
    Region::State& s = *live[i];
    const auto& state = reply.leases(static_cast<int>(i));
    if (state.lease_id() != s.lease_id.load()) continue;  // refreshed meanwhile
    if (state.valid()) {
      s.lease_deadline_ns.store(sent + LeaseTrustNs(state.lease_ms()), std::memory_order_release);
      // Committed length only grows; a concurrent local commit may be ahead of this reply.
      int64_t seen = s.committed.load();
      while (state.committed_tokens() > seen &&
             !s.committed.compare_exchange_weak(seen, state.committed_tokens())) {
      }
      if (state.sealed()) s.sealed.store(true);
      absl::MutexLock lock(&s.mu);
      s.renew_error.clear();
    } else {
      // The lease is gone, but the region may not be: after a daemon restart, or a lease that
      // lapsed in a network hiccup, reopening the same region (same id) continues safely.
      bool reopened = false;
      {
        absl::MutexLock lock(&s.write_mu);
        reopened = s.Refresh().ok();
      }
      if (!reopened) {
        {
          absl::MutexLock lock(&s.mu);
          s.revoked_reason = state.reason();
        }
        s.revoked.store(true, std::memory_order_release);
      }
    }
  }
}

void Client::Impl::RenewLoop() {
  absl::MutexLock lock(&mu);
  auto last = Clock::now();
  while (!stopping) {
    // Renew four times per lease period, so a lost or slow renewal still leaves time for
    // another. Wake often enough to notice a shorter lease granted since.
    mu.AwaitWithTimeout(absl::Condition(&stopping), absl::Milliseconds(25));
    if (stopping) break;
    if (Clock::now() - last < std::chrono::milliseconds(lease_ms.load() / 4)) continue;
    last = Clock::now();
    mu.Unlock();
    RenewOnce();
    mu.Lock();
  }
}

Client::Client(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

}  // namespace sparsekv
