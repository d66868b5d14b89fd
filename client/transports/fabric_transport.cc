#include "client/transports/fabric_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fabric_util.h"

namespace sparsekv {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kStagingBytes = size_t{4} << 20;
constexpr size_t kMaxOpsPerRound = 1 << 16;

}  // namespace

struct FabricTransport::Lane {
  fid_ep* ep = nullptr;
  fid_cq* cq = nullptr;
  fid_av* av = nullptr;
  fi_addr_t peer = FI_ADDR_UNSPEC;
  bool cq_can_wait = false;
  std::vector<std::byte> staging;
  fid_mr* staging_mr = nullptr;
  void* staging_desc = nullptr;

  ~Lane() {
    CloseFid(ep ? &ep->fid : nullptr);  // first: aborts anything still in flight
    CloseFid(staging_mr ? &staging_mr->fid : nullptr);
    CloseFid(cq ? &cq->fid : nullptr);
    CloseFid(av ? &av->fid : nullptr);
  }
};

absl::StatusOr<std::shared_ptr<FabricTransport>> FabricTransport::Open(const FabricPeer& daemon,
                                                                       const std::string& control_host,
                                                                       int64_t timeout_ms, bool force_staging) {
  std::shared_ptr<FabricTransport> t(new FabricTransport());
  t->provider_ = daemon.provider;
  t->address_ = daemon.address;
  t->key_ = daemon.key;
  t->base_ = daemon.base;
  t->software_rma_ = daemon.software_rma;
  t->timeout_ms_ = timeout_ms;
  t->force_staging_ = force_staging;
  if (daemon.addr_format == FI_SOCKADDR_IN && t->address_.size() >= sizeof(sockaddr_in)) {
    sockaddr_in in;
    std::memcpy(&in, t->address_.data(), sizeof(in));
    if (in.sin_addr.s_addr == htonl(INADDR_ANY)) {  // "the host you reached the control plane on"
      addrinfo hints{};
      hints.ai_family = AF_INET;
      addrinfo* found = nullptr;
      if (getaddrinfo(control_host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) {
        return absl::UnavailableError(absl::StrFormat("cannot resolve %s for the fabric endpoint", control_host));
      }
      in.sin_addr = reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr;
      freeaddrinfo(found);
      std::memcpy(t->address_.data(), &in, sizeof(in));
    }
  }
  fi_info* hints = fi_allocinfo();
  hints->caps = FI_RMA | FI_READ | FI_WRITE;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->addr_format = daemon.addr_format;
  hints->fabric_attr->prov_name = strdup(daemon.provider.c_str());
  hints->dest_addr = malloc(t->address_.size());
  std::memcpy(hints->dest_addr, t->address_.data(), t->address_.size());
  hints->dest_addrlen = t->address_.size();
  int rc = fi_getinfo(kFabricApiVersion, nullptr, nullptr, 0, hints, &t->info_);
  fi_freeinfo(hints);
  if (rc != 0 || t->info_ == nullptr) {
    return absl::UnavailableError(absl::StrFormat(
        "the daemon offers libfabric provider %s, which this host cannot open: %s", daemon.provider,
        fi_strerror(-rc)));
  }
  const std::string what = absl::StrCat("fabric provider ", t->provider_);
  if ((rc = fi_fabric(t->info_->fabric_attr, &t->fabric_, nullptr)) != 0) return FabricError(rc, what + ": fi_fabric");
  if ((rc = fi_domain(t->fabric_, t->info_, &t->domain_, nullptr)) != 0) return FabricError(rc, what + ": fi_domain");
  t->need_local_mr_ = (t->info_->domain_attr->mr_mode & FI_MR_LOCAL) != 0;
  t->max_inflight_ = std::clamp<size_t>(t->info_->tx_attr->size, 1, 1024);
  t->max_msg_ = std::min<size_t>(t->info_->ep_attr->max_msg_size, size_t{1} << 30);
  // Check now that the daemon answers, so a broken path is found at open, not mid-decode.
  auto lane = t->AcquireLane();
  if (!lane.ok()) return lane.status();
  t->ReleaseLane(*std::move(lane));
  return t;
}

FabricTransport::~FabricTransport() {
  absl::MutexLock lock(&mu_);
  idle_.Clear();
  registered_.ForEach([](fid_mr* mr) { CloseFid(&mr->fid); });
  registered_.Clear();
  CloseFid(domain_ ? &domain_->fid : nullptr);
  CloseFid(fabric_ ? &fabric_->fid : nullptr);
  if (info_ != nullptr) fi_freeinfo(info_);
}

absl::StatusOr<std::unique_ptr<FabricTransport::Lane>> FabricTransport::AcquireLane() {
  {
    absl::MutexLock lock(&mu_);
    if (auto lane = idle_.Take()) return lane;
  }
  auto lane = std::make_unique<Lane>();
  const std::string what = absl::StrCat("fabric provider ", provider_);
  int rc;
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  if ((rc = fi_av_open(domain_, &av_attr, &lane->av, nullptr)) != 0) return FabricError(rc, what + ": fi_av_open");
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_CONTEXT;
  cq_attr.size = max_inflight_ * 2;
  cq_attr.wait_obj = FI_WAIT_UNSPEC;
  lane->cq_can_wait = true;
  if (fi_cq_open(domain_, &cq_attr, &lane->cq, nullptr) != 0) {
    cq_attr.wait_obj = FI_WAIT_NONE;
    lane->cq_can_wait = false;
    if ((rc = fi_cq_open(domain_, &cq_attr, &lane->cq, nullptr)) != 0) return FabricError(rc, what + ": fi_cq_open");
  }
  if ((rc = fi_endpoint(domain_, info_, &lane->ep, nullptr)) != 0) return FabricError(rc, what + ": fi_endpoint");
  if ((rc = fi_ep_bind(lane->ep, &lane->av->fid, 0)) != 0) return FabricError(rc, what + ": binding the address vector");
  if ((rc = fi_ep_bind(lane->ep, &lane->cq->fid, FI_TRANSMIT | FI_RECV)) != 0) {
    return FabricError(rc, what + ": binding the completion queue");
  }
  if ((rc = fi_enable(lane->ep)) != 0) return FabricError(rc, what + ": fi_enable");
  if (fi_av_insert(lane->av, address_.data(), 1, &lane->peer, 0, nullptr) != 1) {
    return absl::UnavailableError(absl::StrCat(what, ": the daemon's address cannot be inserted in the address vector"));
  }
  if (need_local_mr_ || force_staging_) {
    lane->staging.resize(kStagingBytes);
    if ((rc = fi_mr_reg(domain_, lane->staging.data(), lane->staging.size(), FI_READ | FI_WRITE, 0, next_key_++, 0,
                        &lane->staging_mr, nullptr)) != 0) {
      return FabricError(rc, what + ": registering the staging area");
    }
    lane->staging_desc = fi_mr_desc(lane->staging_mr);
  }
  return lane;
}

void FabricTransport::ReleaseLane(std::unique_ptr<Lane> lane) {
  absl::MutexLock lock(&mu_);
  idle_.Give(std::move(lane));
}

absl::Status FabricTransport::RegisterBuffer(void* addr, size_t bytes) {
  if (addr == nullptr || bytes == 0) return absl::InvalidArgumentError("RegisterBuffer: empty buffer");
  fid_mr* mr = nullptr;
  int rc = fi_mr_reg(domain_, addr, bytes, FI_READ | FI_WRITE, 0, next_key_++, 0, &mr, nullptr);
  if (rc != 0) return FabricError(rc, absl::StrFormat("registering %d bytes at %p with %s", bytes, addr, provider_));
  absl::MutexLock lock(&mu_);
  if (fid_mr* old = registered_.Put(addr, bytes, mr)) CloseFid(&old->fid);
  return absl::OkStatus();
}

absl::Status FabricTransport::UnregisterBuffer(void* addr) {
  absl::MutexLock lock(&mu_);
  fid_mr* mr = registered_.Take(addr);
  if (mr == nullptr) return absl::NotFoundError(absl::StrFormat("no buffer registered at %p", addr));
  CloseFid(&mr->fid);
  return absl::OkStatus();
}

void* FabricTransport::DescFor(const std::byte* p, size_t len) {
  absl::MutexLock lock(&mu_);
  fid_mr* mr = registered_.Covering(p, len);
  return mr == nullptr ? nullptr : fi_mr_desc(mr);
}

absl::Status FabricTransport::Read(absl::Span<const GatherWork> work) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  const std::string what = absl::StrFormat("fabric fi_read (%s)", provider_);
  auto acquired = AcquireLane();
  if (!acquired.ok()) return acquired.status();
  std::unique_ptr<Lane> lane = *std::move(acquired);
  const bool must_register = need_local_mr_ || force_staging_;

  struct Op {
    std::byte* local;
    size_t len;
    uint64_t remote;
    void* desc;
    std::byte* user;  // staged: the caller's bytes, copied through `local` in the staging area
  };
  std::vector<Op> ops;
  // One context per operation: a completion counts only if it names an operation of this round
  // that has not completed yet. Counting bare CQ entries let a stray or duplicate entry end a
  // round while reads were still in flight, which then landed in buffers the caller had freed.
  std::vector<fi_context2> contexts;
  std::vector<uint8_t> completed;
  size_t staged = 0;
  // Posts every op (at most max_inflight_ outstanding) and reaps them all.
  auto run = [&]() -> absl::Status {
    size_t posted = 0, done = 0;
    contexts.assign(ops.size(), fi_context2{});
    completed.assign(ops.size(), 0);
    fi_cq_entry entries[64];
    while (done < ops.size()) {
      while (posted < ops.size() && posted - done < max_inflight_) {
        const Op& op = ops[posted];
        void* context = &contexts[posted];
        ssize_t rc = fi_read(lane->ep, op.local, op.len, op.desc, lane->peer, op.remote, key_, context);
        if (rc == -FI_EAGAIN) break;
        if (rc != 0) return FabricError(static_cast<int>(rc), what);
        ++posted;
      }
      ssize_t n = fi_cq_read(lane->cq, entries, 64);
      if (n == -FI_EAGAIN && posted == ops.size() && lane->cq_can_wait) {
        n = fi_cq_sread(lane->cq, entries, 64, nullptr, 5);  // nothing left to post: sleep until one completes
      }
      if (n > 0) {
        for (ssize_t i = 0; i < n; ++i) {
          const auto c = reinterpret_cast<uintptr_t>(entries[i].op_context);
          const auto first = reinterpret_cast<uintptr_t>(contexts.data());
          if (c < first || c >= first + posted * sizeof(fi_context2) || (c - first) % sizeof(fi_context2) != 0) {
            continue;  // not one of ours in flight
          }
          const size_t at = (c - first) / sizeof(fi_context2);
          if (completed[at]) continue;
          completed[at] = 1;
          ++done;
        }
      } else if (n == -FI_EAVAIL) {
        fi_cq_err_entry err{};
        fi_cq_readerr(lane->cq, &err, 0);
        char buf[256] = {};
        const char* detail = fi_cq_strerror(lane->cq, err.prov_errno, err.err_data, buf, sizeof(buf));
        return FabricError(err.err, absl::StrCat(what, " of the daemon's pool failed (provider: ",
                                                 detail ? detail : "no detail", ")"));
      } else if (n != -FI_EAGAIN) {
        return FabricError(static_cast<int>(n), absl::StrCat(what, ": fi_cq_read"));
      }
      if (Clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrFormat("%s: %d of %d operations still outstanding after %d ms",
                                                           what, posted - done, ops.size(), timeout_ms_));
      }
    }
    for (const Op& op : ops) if (op.user != nullptr) std::memcpy(op.user, op.local, op.len);
    ops.clear();
    staged = 0;
    return absl::OkStatus();
  };
  absl::Status status;
  for (size_t i = 0; i < work.size() && status.ok(); ++i) {
    const GatherWork& w = work[i];
    const size_t eb = static_cast<size_t>(w.entry_bytes);
    for (size_t e = 0; e < w.offsets.size() && status.ok();) {
      // A run of entries adjacent both in the pool and in the caller's buffer is one operation.
      size_t run_len = 1;
      while (e + run_len < w.offsets.size() && w.offsets[e + run_len] == w.offsets[e] + static_cast<int64_t>(run_len * eb) &&
             (run_len + 1) * eb <= std::min(max_msg_, kStagingBytes)) {
        ++run_len;
      }
      Op op{w.dst + e * eb, run_len * eb, base_ + static_cast<uint64_t>(w.offsets[e]), nullptr, nullptr};
      if (must_register) {
        op.desc = DescFor(op.local, op.len);
        if (op.desc == nullptr) {  // unregistered: through the staging area
          if (staged + op.len > lane->staging.size()) status = run();
          op.user = op.local;
          op.local = lane->staging.data() + staged;
          op.desc = lane->staging_desc;
          staged += op.len;
        }
      }
      ops.push_back(op);
      if (ops.size() >= kMaxOpsPerRound && status.ok()) status = run();
      e += run_len;
    }
  }
  if (status.ok() && !ops.empty()) status = run();
  if (!status.ok()) return status;  // the lane is destroyed here: nothing in flight survives the call
  ReleaseLane(std::move(lane));
  return absl::OkStatus();
}

}  // namespace sparsekv
