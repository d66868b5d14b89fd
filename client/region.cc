// The Region handle: writes, appends, commits, seal, refresh, verify and fetch.
#include "client/client_state.h"

namespace sparsekv {

Region::Region(std::shared_ptr<State> state) : state_(std::move(state)) {}

Region::~Region() {
  Client::Impl* impl = state_->client.get();
  {
    absl::MutexLock lock(&impl->mu);
    impl->open.erase(state_.get());
  }
  v1::ReleaseLeasesRequest request;
  request.add_lease_ids(state_->lease_id.load());
  v1::ReleaseLeasesResponse ignored;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  if (!impl->token.empty()) ctx.AddMetadata("authorization", "Bearer " + impl->token);
  impl->stub->ReleaseLeases(&ctx, request, &ignored);  // best effort: unreleased leases expire
}

const std::string& Region::key() const { return state_->key; }
int32_t Region::layers() const { return state_->geometry.layers; }
int32_t Region::entry_bytes() const { return state_->geometry.entry_bytes; }
int32_t Region::entry_stride_bytes() const { return state_->geometry.entry_stride_bytes; }
int32_t Region::tokens_per_page() const { return state_->geometry.tokens_per_page; }
int64_t Region::capacity_tokens() const { return state_->table.load()->capacity_tokens; }
int64_t Region::committed_tokens() const { return state_->committed.load(); }
bool Region::sealed() const { return state_->sealed.load(); }
absl::Status Region::LeaseStatus() const { return state_->CheckLease(); }
std::string Region::transport_name() const { return state_->CurrentTransport()->name(); }

absl::Status Region::Write(int32_t layer, int64_t first_token, absl::Span<const std::byte> entries) {
  return state_->WriteTokens(layer, first_token, entries);
}

absl::Status Region::Append(absl::Span<const std::byte> entries, int64_t tokens) {
  State& s = *state_;
  if (auto st = s.CheckWritable("append"); !st.ok()) return st;
  if (tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("append to region '%s' of %d tokens", s.key, tokens));
  }
  int64_t per_layer_bytes = 0, all_bytes = 0;
  if (auto st = CheckedBytes(tokens, s.geometry.entry_bytes, absl::StrFormat("append to region '%s'", s.key),
                             &per_layer_bytes);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckedBytes(per_layer_bytes, s.geometry.layers, absl::StrFormat("append to region '%s'", s.key),
                             &all_bytes);
      !st.ok()) {
    return st;
  }
  const size_t per_layer = static_cast<size_t>(per_layer_bytes);
  if (entries.size() != static_cast<size_t>(all_bytes)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "append of %d tokens to region '%s' needs %d bytes (%d layers x %d tokens x %d bytes), got %d",
        tokens, s.key, per_layer * s.geometry.layers, s.geometry.layers, tokens, s.geometry.entry_bytes,
        entries.size()));
  }
  absl::MutexLock lock(&s.write_mu);
  if (s.sealed.load()) {
    return absl::FailedPreconditionError(absl::StrFormat("region '%s' is sealed; it accepts no appends", s.key));
  }
  const int64_t first = s.committed.load();
  int64_t end = 0;
  if (!CheckedAdd(first, tokens, &end)) {
    return absl::OutOfRangeError(absl::StrFormat("append of %d tokens to region '%s' at %d overflows", tokens, s.key, first));
  }
  if (end > s.table.load()->capacity_tokens) {
    // Grow by whole pages: pages are what memory costs anyway.
    int64_t grown = s.geometry.PagesPerLayer(end) * s.geometry.tokens_per_page;
    if (auto st = s.ReserveLocked(grown); !st.ok()) return st;
  }
  for (int32_t layer = 0; layer < s.geometry.layers; ++layer) {
    if (auto st = s.WriteTokens(layer, first, entries.subspan(layer * per_layer, per_layer)); !st.ok()) return st;
  }
  return s.CommitLocked(end, /*seal=*/false);
}

absl::Status Region::Reserve(int64_t capacity_tokens) {
  if (auto st = state_->CheckWritable("reserve"); !st.ok()) return st;
  absl::MutexLock lock(&state_->write_mu);
  if (capacity_tokens <= state_->table.load()->capacity_tokens) return absl::OkStatus();
  return state_->ReserveLocked(capacity_tokens);
}

absl::Status Region::Commit(int64_t committed_tokens) {
  if (auto st = state_->CheckWritable("commit"); !st.ok()) return st;
  absl::MutexLock lock(&state_->write_mu);
  return state_->CommitLocked(committed_tokens, /*seal=*/false);
}

absl::Status Region::Seal() {
  State& s = *state_;
  absl::MutexLock lock(&s.write_mu);
  if (s.sealed.load() && s.has_checksum.load()) return absl::OkStatus();  // sealing twice is harmless
  if (auto st = s.CheckWritable("seal"); !st.ok()) return st;
  const int64_t committed = s.committed.load();
  const int64_t written = s.written_end.load();
  if (written > committed) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "seal of region '%s' refused: this handle wrote tokens up to %d but only %d are committed; Commit(%d) "
        "first (or Commit the length you mean to keep), then Seal()",
        s.key, written, committed, written));
  }
  return s.CommitLocked(committed, /*seal=*/true);
}

absl::Status Region::ReleaseWrite() {
  State& s = *state_;
  absl::MutexLock lock(&s.write_mu);
  if (!s.writable.load()) return absl::OkStatus();
  return s.Refresh(/*keep_write=*/false);
}

bool Region::writable() const { return state_->writable.load(); }

absl::Status Region::Refresh() {
  absl::MutexLock lock(&state_->write_mu);
  return state_->Refresh();
}

absl::Status Region::Verify() const {
  State& s = *state_;
  if (!s.has_checksum.load()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "region '%s' has no checksum: only sealed regions can be verified", s.key));
  }
  // Read every committed entry through this handle's transport and hash it as the daemon did.
  const int64_t committed = s.committed.load();
  const int64_t chunk = 8192;
  std::vector<int32_t> indices;
  std::vector<std::byte> buf(static_cast<size_t>(chunk) * s.geometry.entry_bytes);
  XXH3_state_t* hash = XXH3_createState();
  XXH3_64bits_reset(hash);
  absl::Status status;
  for (int32_t layer = 0; layer < s.geometry.layers && status.ok(); ++layer) {
    for (int64_t first = 0; first < committed && status.ok(); first += chunk) {
      int64_t n = std::min(chunk, committed - first);
      indices.resize(n);
      for (int64_t i = 0; i < n; ++i) indices[i] = static_cast<int32_t>(first + i);
      status = Fetch(layer, indices, absl::MakeSpan(buf.data(), static_cast<size_t>(n) * s.geometry.entry_bytes));
      if (status.ok()) XXH3_64bits_update(hash, buf.data(), static_cast<size_t>(n) * s.geometry.entry_bytes);
    }
  }
  uint64_t now = XXH3_64bits_digest(hash);
  XXH3_freeState(hash);
  if (!status.ok()) return status;
  if (now != s.checksum.load()) {
    return absl::DataLossError(absl::StrFormat(
        "region '%s' changed since it was sealed: checksum %016x at seal, %016x read now", s.key,
        s.checksum.load(), now));
  }
  return absl::OkStatus();
}

absl::Status Region::Fetch(int32_t layer, absl::Span<const int32_t> indices, absl::Span<std::byte> dst) const {
  State& s = *state_;
  std::vector<int64_t>& offsets = OffsetScratch(indices.size());
  auto resolved = absl::MakeSpan(offsets.data(), indices.size());
  size_t need = 0;
  if (auto st = s.PrepareFetch(layer, indices, dst, resolved, &need); !st.ok()) return st;
  if (auto st = s.CurrentTransport()->Gather(resolved, s.geometry.entry_bytes, dst.data()); !st.ok()) return st;
  s.client->CountFetch(1, static_cast<int64_t>(indices.size()), static_cast<int64_t>(need));
  return s.CheckLease();  // the lease must still have held when the copy finished
}

RegionView ViewOf(const Region& region) {
  const Region::State& s = *region.state_;
  RegionView view;
  view.geometry = s.geometry;
  view.table = s.table.load(std::memory_order_acquire);
  view.committed_tokens = s.committed.load(std::memory_order_acquire);
  view.transport = s.CurrentTransport();
  return view;
}

}  // namespace sparsekv
