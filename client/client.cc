// The client library: Connect and the control-plane calls (create, open, delete, list, stats,
// nodes, buffers). Region handles live in region.cc, the fetch path in fetch_batch.cc.
#include "client/client_state.h"

namespace sparsekv {

Client::~Client() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  if (impl_->renewer.joinable()) impl_->renewer.join();
}

const ClientOptions& Client::options() const { return impl_->options; }

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.fetch_threads < 1 || options.fetch_threads > 256) {
    return absl::InvalidArgumentError(absl::StrFormat("fetch_threads must be in [1, 256], got %d", options.fetch_threads));
  }
  if (options.rpc_timeout_ms <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("rpc_timeout_ms must be positive, got %d", options.rpc_timeout_ms));
  }
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  if (!options.cluster.empty()) {
    auto cluster = ClusterClient::Make(options);
    if (!cluster.ok()) return cluster.status();
    impl->cluster = *std::move(cluster);
    return std::unique_ptr<Client>(new Client(std::move(impl)));
  }
  {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    std::random_device rd;
    impl->client_id = absl::StrFormat("%s:%d:%08x", host, getpid(), rd());
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // A call that dies with its connection (daemon restarting) is retried on the new one.
  args.SetServiceConfigJSON(R"({"methodConfig":[{"name":[{"service":"sparsekv.v1.Control"}],
      "retryPolicy":{"maxAttempts":3,"initialBackoff":"0.05s","maxBackoff":"0.5s",
                     "backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]})");
  const ControlPlaneSecurity security =
      WithEnvironment({options.token, options.tls_ca_file, options.tls_cert_file, options.tls_key_file});
  auto credentials = ChannelCredentialsFor(security);
  if (!credentials.ok()) return credentials.status();
  impl->token = security.token;
  impl->channel = grpc::CreateCustomChannel(options.server, *credentials, args);
  const int64_t connect_ms = options.connect_timeout_ms > 0 ? options.connect_timeout_ms : options.rpc_timeout_ms;
  if (!impl->channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::milliseconds(connect_ms))) {
    return absl::UnavailableError(absl::StrFormat(
        "cannot reach sparsekvd at %s within %d ms%s", options.server, connect_ms,
        security.ca_file.empty() ? " (plaintext; a TLS-only daemon refuses it)"
                                 : " (TLS: the handshake fails if the daemon's certificate is not signed by the CA given, "
                                   "or it requires a client certificate this client does not present)"));
  }
  impl->stub = v1::Control::NewStub(impl->channel);
  if (options.fetch_threads > 1) impl->fetch_workers = std::make_unique<WorkerPool>(options.fetch_threads - 1);
  if (options.renew_leases) {
    impl->renewer = std::thread([raw = impl.get()] { raw->RenewLoop(); });
  }
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

namespace {

absl::StatusOr<std::shared_ptr<Region::State>> MakeState(const std::shared_ptr<Client::Impl>& impl,
                                                         const v1::OpenRegionResponse& reply,
                                                         int64_t sent_ns) {
  auto state = std::make_shared<Region::State>();
  state->client = impl;
  state->key = reply.info().key();
  state->region_id = reply.info().region_id();
  const auto& g = reply.info().geometry();
  state->geometry.layers = g.layers();
  state->geometry.entry_bytes = g.entry_bytes();
  state->geometry.entry_stride_bytes = g.entry_stride_bytes();
  state->geometry.tokens_per_page = g.tokens_per_page();
  state->geometry.page_bytes = g.page_bytes();
  int64_t page_span = 0;
  if (g.layers() <= 0 || g.entry_bytes() <= 0 || g.tokens_per_page() <= 0 || g.page_bytes() <= 0 ||
      g.entry_stride_bytes() < g.entry_bytes() || reply.layers_size() != g.layers() ||
      !CheckedMul(int64_t{g.tokens_per_page()}, int64_t{g.entry_stride_bytes()}, &page_span) ||
      page_span > g.page_bytes()) {
    return absl::DataLossError(absl::StrFormat("the daemon described region '%s' inconsistently", state->key));
  }
  if (const auto& shm = reply.transport().shm(); shm.pool_bytes() > 0) {
    state->page_lo = shm.arena_offset() / g.page_bytes();
    state->page_hi = (shm.arena_offset() + shm.pool_bytes()) / g.page_bytes();
  }
  auto transport = impl->TransportFor(reply.transport());
  if (!transport.ok()) return transport.status();
  state->transport.store(*std::move(transport), std::memory_order_release);
  if (auto st = state->Adopt(reply, sent_ns); !st.ok()) return st;
  return state;
}

// Turns an open or create reply into a handle the renewer knows about. If this client cannot
// use it (no transport reaches the pool), gives back what the reply granted: the lease, and the
// region itself when this call created it, so nothing is left behind that nobody can write.
absl::StatusOr<std::shared_ptr<Region::State>> AdoptReply(const std::shared_ptr<Client::Impl>& impl,
                                                          const v1::OpenRegionResponse& reply,
                                                          int64_t sent_ns, bool created) {
  auto state = MakeState(impl, reply, sent_ns);
  if (!state.ok()) {
    v1::ReleaseLeasesRequest release;
    release.add_lease_ids(reply.lease().lease_id());
    v1::ReleaseLeasesResponse released;
    auto ctx = impl->Context();
    impl->stub->ReleaseLeases(ctx.get(), release, &released);
    if (created) {
      v1::DeleteRegionRequest del;
      del.set_key(reply.info().key());
      v1::DeleteRegionResponse deleted;
      auto ctx2 = impl->Context();
      impl->stub->DeleteRegion(ctx2.get(), del, &deleted);
    }
    return state.status();
  }
  // Setting up the first transport to a daemon (loading the RMA plugin, a provider's start-up)
  // can take longer than the lease can be trusted: take a fresh one before handing it out.
  if (!(*state)->CheckLease().ok()) {
    absl::MutexLock lock(&(*state)->write_mu);
    if (auto st = (*state)->Refresh(); !st.ok()) return st;
  }
  absl::MutexLock lock(&impl->mu);
  impl->open[state->get()] = *state;
  return state;
}

}  // namespace

namespace {

v1::CreateRegionRequest CreateRequest(const RegionSpec& spec) {
  v1::CreateRegionRequest request;
  request.set_key(spec.key);
  request.set_layers(spec.layers);
  request.set_entry_bytes(spec.entry_bytes);
  request.set_capacity_tokens(spec.capacity_tokens);
  request.set_ttl_ms(spec.ttl_ms);
  request.set_replicas(spec.replicas);
  return request;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Region>> Client::Create(const RegionSpec& spec) {
  if (spec.replicas < 1 || spec.replicas > 16) {
    return absl::InvalidArgumentError(absl::StrFormat("region '%s': replicas %d, want 1 to 16", spec.key, spec.replicas));
  }
  if (impl_->cluster) return impl_->cluster->Create(spec);
  return CreateFrom(CreateRequest(spec));
}

absl::StatusOr<std::shared_ptr<Region>> NodeCalls::CreateReplica(Client& client, const RegionSpec& spec,
                                                                        const std::string& source_node) {
  v1::CreateRegionRequest request = CreateRequest(spec);
  request.set_replica_of(source_node);
  return client.CreateFrom(request);
}

absl::StatusOr<v1::ReplicateRegionResponse> NodeCalls::Replicate(Client& client, const std::string& key,
                                                                        int32_t replicas, bool exclude_self) {
  v1::ReplicateRegionRequest request;
  request.set_key(key);
  request.set_replicas(replicas);
  request.set_exclude_self(exclude_self);
  v1::ReplicateRegionResponse reply;
  auto ctx = client.impl_->Context();
  // Copying a large region takes longer than a control call.
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  auto status = FromGrpcStatus(client.impl_->stub->ReplicateRegion(ctx.get(), request, &reply),
                               client.impl_->What("ReplicateRegion"));
  if (!status.ok()) return status;
  return reply;
}

absl::StatusOr<std::string> NodeCalls::Namespace(Client& client) {
  v1::ListRegionsRequest request;
  request.set_key_prefix(std::string(1, '\x01'));  // matches no key: only the namespace comes back
  request.set_limit(1);
  v1::ListRegionsResponse reply;
  auto status = client.impl_->Call(&v1::Control::Stub::ListRegions, "ListRegions", request, &reply);
  if (!status.ok()) return status;
  return reply.key_prefix();
}

absl::StatusOr<std::shared_ptr<Region>> Client::CreateFrom(const v1::CreateRegionRequest& request) {
  v1::OpenRegionResponse reply;
  int64_t sent = NowNs();
  auto status = impl_->Call(&v1::Control::Stub::CreateRegion, "CreateRegion", request, &reply);
  if (!status.ok()) return status;
  auto state = AdoptReply(impl_, reply, sent, /*created=*/true);
  if (!state.ok()) return state.status();
  return std::shared_ptr<Region>(new Region(*std::move(state)));
}

absl::StatusOr<std::shared_ptr<Region>> Client::Open(const std::string& key) { return OpenRegion(key, false); }

absl::StatusOr<std::shared_ptr<Region>> Client::OpenForWrite(const std::string& key) { return OpenRegion(key, true); }

absl::StatusOr<std::shared_ptr<Region>> Client::OpenRegion(const std::string& key, bool for_write) {
  if (impl_->cluster) return impl_->cluster->Open(key, for_write);
  v1::OpenRegionRequest request;
  request.set_key(key);
  request.set_for_write(for_write);
  v1::OpenRegionResponse reply;
  int64_t sent = NowNs();
  auto status = impl_->Call(&v1::Control::Stub::OpenRegion, "OpenRegion", request, &reply);
  if (!status.ok()) return status;
  auto state = AdoptReply(impl_, reply, sent, /*created=*/false);
  if (!state.ok()) return state.status();
  return std::shared_ptr<Region>(new Region(*std::move(state)));
}

absl::Status Client::Delete(const std::string& key) {
  if (impl_->cluster) return impl_->cluster->Delete(key);
  v1::DeleteRegionRequest request;
  request.set_key(key);
  v1::DeleteRegionResponse reply;
  return impl_->Call(&v1::Control::Stub::DeleteRegion, "DeleteRegion", request, &reply);
}

absl::StatusOr<std::vector<RegionInfo>> Client::List(const std::string& key_prefix) {
  if (impl_->cluster) return impl_->cluster->List(key_prefix);
  v1::ListRegionsRequest request;
  request.set_key_prefix(key_prefix);
  request.set_limit(10000);
  v1::ListRegionsResponse reply;
  auto status = impl_->Call(&v1::Control::Stub::ListRegions, "ListRegions", request, &reply);
  if (!status.ok()) return status;
  std::vector<RegionInfo> out;
  for (const auto& r : reply.regions()) {
    RegionInfo info;
    info.key = r.key();
    info.region_id = r.region_id();
    info.layers = r.geometry().layers();
    info.entry_bytes = r.geometry().entry_bytes();
    info.entry_stride_bytes = r.geometry().entry_stride_bytes();
    info.capacity_tokens = r.capacity_tokens();
    info.committed_tokens = r.committed_tokens();
    info.sealed = r.sealed();
    info.bytes = r.bytes();
    info.active_leases = r.active_leases();
    info.created_unix_ms = r.created_unix_ms();
    info.has_checksum = r.has_checksum();
    info.checksum = r.checksum();
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<PoolStats> Client::Stats() {
  if (impl_->cluster) return impl_->cluster->Stats();
  v1::StatsResponse reply;
  auto status = impl_->Call(&v1::Control::Stub::Stats, "Stats", v1::StatsRequest(), &reply);
  if (!status.ok()) return status;
  PoolStats out;
  out.pool_bytes = reply.pool_bytes();
  out.used_bytes = reply.used_bytes();
  out.free_bytes = reply.free_bytes();
  out.quarantined_bytes = reply.quarantined_bytes();
  out.regions = reply.regions();
  out.active_leases = reply.active_leases();
  out.evictions = reply.evictions();
  out.abandoned_regions = reply.abandoned_regions();
  out.backing = reply.backing_detail();
  return out;
}

absl::StatusOr<std::vector<NodeInfo>> Client::Nodes() {
  if (!impl_->cluster) return absl::FailedPreconditionError("Nodes: this client talks to one daemon, not a cluster");
  return impl_->cluster->Nodes();
}

absl::Status Client::Replicate(const std::string& key, int32_t replicas) {
  if (!impl_->cluster) return absl::FailedPreconditionError("Replicate: this client talks to one daemon, not a cluster");
  return impl_->cluster->Replicate(key, replicas);
}

absl::Status Client::RegisterBuffer(void* addr, size_t bytes) {
  if (addr == nullptr || bytes == 0) return absl::InvalidArgumentError("RegisterBuffer: empty buffer");
  if (impl_->cluster) return impl_->cluster->RegisterBuffer(addr, bytes);
  std::vector<std::shared_ptr<Transport>> live;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->registered_buffers[addr] = bytes;
    for (const auto& [key, t] : impl_->transports) live.push_back(t);
  }
  for (const auto& t : live) {
    if (auto st = t->RegisterBuffer(addr, bytes); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status Client::UnregisterBuffer(void* addr) {
  if (impl_->cluster) return impl_->cluster->UnregisterBuffer(addr);
  std::vector<std::shared_ptr<Transport>> live;
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->registered_buffers.erase(addr) == 0) {
      return absl::NotFoundError(absl::StrFormat("no buffer registered at %p", addr));
    }
    for (const auto& [key, t] : impl_->transports) live.push_back(t);
  }
  for (const auto& t : live) (void)t->UnregisterBuffer(addr);
  return absl::OkStatus();
}

std::vector<std::string> Client::TransportChoices() const {
  std::vector<std::string> out;
  if (impl_->cluster) {
    for (const auto& [id, client] : impl_->cluster->Connected()) {
      for (auto& line : client->TransportChoices()) out.push_back(absl::StrCat(id, " ", line));
    }
    return out;
  }
  absl::MutexLock lock(&impl_->mu);
  for (const auto& [key, t] : impl_->transports) out.push_back(absl::StrCat(t->name(), ": ", t->reason()));
  return out;
}

}  // namespace sparsekv
