#include "client/transports/verbs_transport.h"

#include <netdb.h>
#include <poll.h>
#include <rdma/rdma_cma.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/transports/verbs_wr.h"

namespace sparsekv {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kSendQueueDepth = 256;
constexpr int kSignalEvery = 32;
constexpr size_t kStagingBytes = size_t{4} << 20;
constexpr uint32_t kGapSinkBytes = 256;

absl::Status WcError(const ibv_wc& wc, const std::string& what) {
  std::string message = absl::StrCat(what, ": ", ibv_wc_status_str(wc.status), " (vendor error ", wc.vendor_err, ")");
  switch (wc.status) {
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_LOC_PROT_ERR:
      return absl::PermissionDeniedError(message);
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
    case IBV_WC_WR_FLUSH_ERR:
    case IBV_WC_REM_ABORT_ERR:
      return absl::UnavailableError(message);
    case IBV_WC_REM_INV_REQ_ERR:
    case IBV_WC_LOC_LEN_ERR:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

// Waits for the next rdmacm event of `channel` until the deadline; it must be `expected`.
absl::Status ExpectEvent(rdma_event_channel* channel, rdma_cm_event_type expected, Clock::time_point deadline,
                         const std::string& what) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  pollfd p{channel->fd, POLLIN, 0};
  if (left <= 0 || poll(&p, 1, static_cast<int>(left)) <= 0) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": no answer in time"));
  }
  rdma_cm_event* event = nullptr;
  if (rdma_get_cm_event(channel, &event) != 0) return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
  const rdma_cm_event_type got = event->event;
  const int status = event->status;
  rdma_ack_cm_event(event);
  if (got != expected) {
    return absl::UnavailableError(absl::StrFormat("%s: %s (status %d)", what, rdma_event_str(got), status));
  }
  return absl::OkStatus();
}

}  // namespace

struct VerbsTransport::Connection {
  rdma_event_channel* channel = nullptr;
  rdma_cm_id* id = nullptr;
  ibv_cq* cq = nullptr;
  bool qp_created = false;
  uint32_t max_sge = 1;
  uint32_t max_inline = 0;
  std::vector<std::byte> staging;
  ibv_mr* staging_mr = nullptr;
  std::vector<std::byte> sink;
  ibv_mr* sink_mr = nullptr;

  ~Connection() {
    if (id != nullptr) {
      rdma_disconnect(id);
      if (qp_created) rdma_destroy_qp(id);
    }
    if (cq != nullptr) ibv_destroy_cq(cq);
    if (staging_mr != nullptr) ibv_dereg_mr(staging_mr);
    if (sink_mr != nullptr) ibv_dereg_mr(sink_mr);
    if (id != nullptr) rdma_destroy_id(id);
    if (channel != nullptr) rdma_destroy_event_channel(channel);
  }
};

absl::StatusOr<std::shared_ptr<VerbsTransport>> VerbsTransport::Connect(const VerbsPeer& daemon,
                                                                       const std::string& control_host,
                                                                       int64_t timeout_ms) {
  if (RdmaDevices().empty()) return absl::FailedPreconditionError("no RDMA device on this host");
  std::shared_ptr<VerbsTransport> t(new VerbsTransport());
  t->daemon_ = daemon;
  t->host_ = daemon.host.empty() || daemon.host == "0.0.0.0" ? control_host : daemon.host;
  t->timeout_ms_ = timeout_ms;
  auto c = t->AcquireConnection();  // reach the daemon now, not mid-decode
  if (!c.ok()) return c.status();
  t->ReleaseConnection(*std::move(c));
  return t;
}

VerbsTransport::~VerbsTransport() {
  absl::MutexLock lock(&mu_);
  idle_.Clear();
  registered_.ForEach([](ibv_mr* mr) { ibv_dereg_mr(mr); });
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
}

absl::StatusOr<std::unique_ptr<VerbsTransport::Connection>> VerbsTransport::AcquireConnection() {
  {
    absl::MutexLock lock(&mu_);
    if (auto c = idle_.Take()) return c;
  }
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  const std::string what = absl::StrFormat("verbs connection to %s:%d", host_, daemon_.port);
  auto c = std::make_unique<Connection>();
  c->channel = rdma_create_event_channel();
  if (c->channel == nullptr || rdma_create_id(c->channel, &c->id, nullptr, RDMA_PS_TCP) != 0) {
    return absl::UnavailableError(absl::StrCat(what, ": rdmacm: ", std::strerror(errno)));
  }
  addrinfo hints{};
  hints.ai_family = AF_INET;
  addrinfo* found = nullptr;
  if (getaddrinfo(host_.c_str(), std::to_string(daemon_.port).c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat(what, ": cannot resolve the host"));
  }
  int rc = rdma_resolve_addr(c->id, nullptr, found->ai_addr, static_cast<int>(timeout_ms_));
  freeaddrinfo(found);
  if (rc != 0) return absl::UnavailableError(absl::StrCat(what, ": rdma_resolve_addr: ", std::strerror(errno)));
  if (auto s = ExpectEvent(c->channel, RDMA_CM_EVENT_ADDR_RESOLVED, deadline, what); !s.ok()) return s;
  if (rdma_resolve_route(c->id, static_cast<int>(timeout_ms_)) != 0) {
    return absl::UnavailableError(absl::StrCat(what, ": rdma_resolve_route: ", std::strerror(errno)));
  }
  if (auto s = ExpectEvent(c->channel, RDMA_CM_EVENT_ROUTE_RESOLVED, deadline, what); !s.ok()) return s;
  ibv_pd* pd;
  std::map<void*, size_t> pending;
  {
    absl::MutexLock lock(&mu_);
    if (pd_ == nullptr) pd_ = ibv_alloc_pd(c->id->verbs);
    pd = pd_;
    pending.swap(pending_);
  }
  if (pd == nullptr) return absl::UnavailableError(absl::StrCat(what, ": ibv_alloc_pd failed"));
  for (const auto& [addr, bytes] : pending) {
    if (auto s = RegisterBuffer(addr, bytes); !s.ok()) return s;
  }
  ibv_device_attr device{};
  ibv_query_device(c->id->verbs, &device);
  c->cq = ibv_create_cq(c->id->verbs, kSendQueueDepth * 2, nullptr, nullptr, 0);
  if (c->cq == nullptr) return absl::ResourceExhaustedError(absl::StrCat(what, ": ibv_create_cq failed"));
  ibv_qp_init_attr qp{};
  qp.send_cq = c->cq;
  qp.recv_cq = c->cq;
  qp.qp_type = IBV_QPT_RC;
  qp.sq_sig_all = 0;  // selective signaling
  qp.cap.max_send_wr = kSendQueueDepth;
  qp.cap.max_recv_wr = 1;
  qp.cap.max_send_sge = static_cast<uint32_t>(std::min(device.max_sge, 16));
  qp.cap.max_recv_sge = 1;
  qp.cap.max_inline_data = 64;
  if (rdma_create_qp(c->id, pd, &qp) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": rdma_create_qp: ", std::strerror(errno)));
  }
  c->qp_created = true;
  c->max_sge = qp.cap.max_send_sge;
  c->max_inline = qp.cap.max_inline_data;
  rdma_conn_param param{};
  param.initiator_depth = static_cast<uint8_t>(std::min(device.max_qp_init_rd_atom, 16));
  param.responder_resources = static_cast<uint8_t>(std::min(device.max_qp_rd_atom, 16));
  param.retry_count = 7;
  param.rnr_retry_count = 7;
  if (rdma_connect(c->id, &param) != 0) return absl::UnavailableError(absl::StrCat(what, ": rdma_connect: ", std::strerror(errno)));
  if (auto s = ExpectEvent(c->channel, RDMA_CM_EVENT_ESTABLISHED, deadline, what); !s.ok()) return s;
  c->staging.resize(kStagingBytes);
  c->staging_mr = ibv_reg_mr(pd, c->staging.data(), c->staging.size(), IBV_ACCESS_LOCAL_WRITE);
  c->sink.resize(kGapSinkBytes);
  c->sink_mr = ibv_reg_mr(pd, c->sink.data(), c->sink.size(), IBV_ACCESS_LOCAL_WRITE);
  if (c->staging_mr == nullptr || c->sink_mr == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": cannot register the staging area: ", std::strerror(errno)));
  }
  return c;
}

void VerbsTransport::ReleaseConnection(std::unique_ptr<Connection> c) {
  absl::MutexLock lock(&mu_);
  idle_.Give(std::move(c));
}

absl::Status VerbsTransport::RegisterBuffer(void* addr, size_t bytes) {
  if (addr == nullptr || bytes == 0) return absl::InvalidArgumentError("RegisterBuffer: empty buffer");
  absl::MutexLock lock(&mu_);
  if (pd_ == nullptr) {
    pending_[addr] = bytes;
    return absl::OkStatus();
  }
  ibv_mr* mr = ibv_reg_mr(pd_, addr, bytes, IBV_ACCESS_LOCAL_WRITE);
  if (mr == nullptr) return absl::ResourceExhaustedError(absl::StrFormat("ibv_reg_mr of %d bytes: %s", bytes, std::strerror(errno)));
  if (ibv_mr* old = registered_.Put(addr, bytes, mr)) ibv_dereg_mr(old);
  return absl::OkStatus();
}

absl::Status VerbsTransport::UnregisterBuffer(void* addr) {
  absl::MutexLock lock(&mu_);
  if (pending_.erase(addr) > 0) return absl::OkStatus();
  ibv_mr* mr = registered_.Take(addr);
  if (mr == nullptr) return absl::NotFoundError(absl::StrFormat("no buffer registered at %p", addr));
  ibv_dereg_mr(mr);
  return absl::OkStatus();
}

ibv_mr* VerbsTransport::MrFor(const std::byte* p, size_t len) {
  absl::MutexLock lock(&mu_);
  return registered_.Covering(p, len);
}

absl::Status VerbsTransport::Read(absl::Span<const GatherWork> work) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  const std::string what = absl::StrFormat("verbs RDMA READ from %s:%d", host_, daemon_.port);
  auto acquired = AcquireConnection();
  if (!acquired.ok()) return acquired.status();
  std::unique_ptr<Connection> c = *std::move(acquired);
  // Segments of one round: registered buffers in place, the rest through the staging area.
  struct Staged {
    std::byte* user;
    std::byte* staging;
    size_t len;
  };
  std::vector<VerbsSegment> segments;
  std::vector<uint32_t> lkeys;
  std::vector<Staged> staged;
  size_t staged_bytes = 0;
  auto run = [&]() -> absl::Status {
    // Runs of one lkey are chained together (a chain carries one lkey).
    size_t at = 0;
    int outstanding = 0;
    VerbsChain chain;
    ibv_wc wc[32];
    while (at < segments.size() || outstanding > 0) {
      if (at < segments.size() && outstanding < kSendQueueDepth) {
        size_t same = at;
        while (same < segments.size() && lkeys[same] == lkeys[at]) ++same;
        VerbsChainOptions o;
        o.write = false;
        o.lkey = lkeys[at];
        o.rkey = daemon_.rkey;
        o.max_sge = static_cast<int>(c->max_sge);
        o.max_wr = kSendQueueDepth - outstanding;
        o.signal_every = kSignalEvery;
        o.max_inline = c->max_inline;
        o.gap_sink_addr = reinterpret_cast<uint64_t>(c->sink.data());
        o.gap_sink_bytes = kGapSinkBytes;
        o.gap_sink_lkey = c->sink_mr->lkey;
        size_t n = BuildChain(absl::MakeConstSpan(segments.data() + at, same - at), o, &chain);
        ibv_send_wr* bad = nullptr;
        if (int rc = ibv_post_send(c->id->qp, chain.wrs.data(), &bad); rc != 0) {
          return absl::UnavailableError(absl::StrCat(what, ": ibv_post_send: ", std::strerror(rc)));
        }
        outstanding += static_cast<int>(chain.wrs.size());
        at += n;
      }
      int got = ibv_poll_cq(c->cq, 32, wc);
      if (got < 0) return absl::UnavailableError(absl::StrCat(what, ": ibv_poll_cq failed"));
      for (int i = 0; i < got; ++i) {
        if (wc[i].status != IBV_WC_SUCCESS) return WcError(wc[i], what);
        outstanding -= static_cast<int>(wc[i].wr_id);
      }
      if (got == 0 && Clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrFormat("%s: %d work requests outstanding after %d ms", what,
                                                           outstanding, timeout_ms_));
      }
    }
    for (const Staged& s : staged) std::memcpy(s.user, s.staging, s.len);
    segments.clear();
    lkeys.clear();
    staged.clear();
    staged_bytes = 0;
    return absl::OkStatus();
  };
  absl::Status status;
  for (const GatherWork& w : work) {
    const size_t eb = static_cast<size_t>(w.entry_bytes);
    ibv_mr* mr = MrFor(w.dst, w.offsets.size() * eb);
    for (size_t e = 0; e < w.offsets.size() && status.ok(); ++e) {
      std::byte* local = w.dst + e * eb;
      uint32_t lkey;
      if (mr != nullptr) {
        lkey = mr->lkey;
      } else {
        if (staged_bytes + eb > c->staging.size()) status = run();
        staged.push_back({local, c->staging.data() + staged_bytes, eb});
        local = c->staging.data() + staged_bytes;
        staged_bytes += eb;
        lkey = c->staging_mr->lkey;
      }
      segments.push_back({reinterpret_cast<uint64_t>(local), static_cast<uint32_t>(eb),
                          daemon_.base + static_cast<uint64_t>(w.offsets[e])});
      lkeys.push_back(lkey);
    }
    if (!status.ok()) break;
  }
  if (status.ok() && !segments.empty()) status = run();
  if (!status.ok()) return status;  // the connection is torn down here
  ReleaseConnection(std::move(c));
  return absl::OkStatus();
}

}  // namespace sparsekv
