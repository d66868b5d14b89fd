#include "server/transports/fabric_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>

#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fabric_util.h"
#include "common/log.h"

namespace sparsekv {
namespace {

constexpr const char* kLog = "fabric";

// Lower is better: hardware RMA first, then tcp; host-local providers (shm, sm2) cannot serve
// remote clients and are skipped.
int ProviderRank(const std::string& provider) {
  if (provider.find("shm") != std::string::npos || provider.find("sm2") != std::string::npos) return -1;
  if (!IsSoftwareRmaProvider(provider)) return 0;
  if (provider.find("tcp") != std::string::npos) return 1;
  return 2;
}

std::string AddressText(const fi_info* info, const void* addr, size_t len) {
  if (info->addr_format == FI_SOCKADDR_IN && len >= sizeof(sockaddr_in)) {
    const auto* in = static_cast<const sockaddr_in*>(addr);
    char text[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    return absl::StrFormat("%s:%d", text, ntohs(in->sin_port));
  }
  char text[256] = {};
  size_t text_len = sizeof(text);
  fi_av_straddr(nullptr, addr, text, &text_len);  // av may be null for formatting
  return text;
}

}  // namespace

namespace {
uint64_t RandomKey(size_t key_size) {
  std::random_device rd;
  uint64_t key = (uint64_t{rd()} << 32) ^ rd();
  if (key_size < 8) key &= (uint64_t{1} << (8 * key_size)) - 1;
  return key;
}
}  // namespace

absl::StatusOr<std::unique_ptr<FabricServer>> FabricServer::Start(Pool* pool, const std::string& provider,
                                                                  const std::string& host, int64_t shared_bytes) {
  std::unique_ptr<FabricServer> s(new FabricServer());
  s->pool_ = pool;
  if (shared_bytes <= 0) shared_bytes = pool->size_bytes();
  fi_info* hints = fi_allocinfo();
  hints->caps = FI_RMA | FI_REMOTE_READ | FI_REMOTE_WRITE;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->addr_format = FI_SOCKADDR_IN;
  if (provider != "auto") hints->fabric_attr->prov_name = strdup(provider.c_str());
  fi_info* found = nullptr;
  int rc = fi_getinfo(kFabricApiVersion, host.c_str(), "0", FI_SOURCE, hints, &found);
  fi_freeinfo(hints);
  if (rc != 0 || found == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "libfabric has no provider '%s' with RMA on %s: %s (set [transports] fabric_provider, or \"off\")", provider,
        host, fi_strerror(-rc)));
  }
  fi_info* best = nullptr;
  int best_rank = 1 << 20;
  for (fi_info* i = found; i != nullptr; i = i->next) {
    int rank = ProviderRank(i->fabric_attr->prov_name);
    if (rank >= 0 && rank < best_rank) {
      best = i;
      best_rank = rank;
    }
  }
  if (best == nullptr) {
    fi_freeinfo(found);
    return absl::FailedPreconditionError(absl::StrFormat("libfabric offers only host-local providers on %s", host));
  }
  s->info_ = fi_dupinfo(best);
  fi_freeinfo(found);
  fi_info* info = s->info_;
  const std::string prov = info->fabric_attr->prov_name;
  auto fail = [&](int code, const char* what) {
    return FabricError(code, absl::StrFormat("fabric provider %s: %s", prov, what));
  };
  if ((rc = fi_fabric(info->fabric_attr, &s->fabric_, nullptr)) != 0) return fail(rc, "fi_fabric");
  if ((rc = fi_domain(s->fabric_, info, &s->domain_, nullptr)) != 0) return fail(rc, "fi_domain");
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  if ((rc = fi_av_open(s->domain_, &av_attr, &s->av_, nullptr)) != 0) return fail(rc, "fi_av_open");
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_CONTEXT;
  cq_attr.wait_obj = FI_WAIT_UNSPEC;
  cq_attr.size = 64;
  if ((rc = fi_cq_open(s->domain_, &cq_attr, &s->cq_, nullptr)) != 0) {
    cq_attr.wait_obj = FI_WAIT_NONE;  // providers without wait objects: polled
    if ((rc = fi_cq_open(s->domain_, &cq_attr, &s->cq_, nullptr)) != 0) return fail(rc, "fi_cq_open");
  }
  if ((rc = fi_endpoint(s->domain_, info, &s->ep_, nullptr)) != 0) return fail(rc, "fi_endpoint");
  if ((rc = fi_ep_bind(s->ep_, &s->av_->fid, 0)) != 0) return fail(rc, "binding the address vector");
  if ((rc = fi_ep_bind(s->ep_, &s->cq_->fid, FI_TRANSMIT | FI_RECV)) != 0) return fail(rc, "binding the completion queue");
  if ((rc = fi_enable(s->ep_)) != 0) return fail(rc, "fi_enable");
  // The pool, registered once. A requested key is random so it cannot be guessed from the
  // daemon's history; providers that choose keys themselves (FI_MR_PROV_KEY) ignore it.
  const uint64_t mr_mode = static_cast<uint64_t>(info->domain_attr->mr_mode);
  const uint64_t requested_key = RandomKey(info->domain_attr->mr_key_size);
  if ((rc = fi_mr_reg(s->domain_, pool->base(), static_cast<size_t>(shared_bytes),
                      FI_REMOTE_READ, 0, requested_key, 0, &s->mr_, nullptr)) != 0) {
    return fail(rc, "registering the pool");
  }
  if (mr_mode & FI_MR_ENDPOINT) {
    if ((rc = fi_mr_bind(s->mr_, &s->ep_->fid, 0)) != 0) return fail(rc, "binding the pool registration");
    if ((rc = fi_mr_enable(s->mr_)) != 0) return fail(rc, "enabling the pool registration");
  }
  char name[256];
  size_t name_len = sizeof(name);
  if ((rc = fi_getname(&s->ep_->fid, name, &name_len)) != 0) return fail(rc, "fi_getname");
  v1::FabricDescriptor& d = s->descriptor_;
  d.set_provider(prov);
  d.set_addr_format(info->addr_format);
  d.set_address(std::string(name, name_len));
  d.set_key(fi_mr_key(s->mr_));
  d.set_base((mr_mode & FI_MR_VIRT_ADDR) ? reinterpret_cast<uint64_t>(pool->base()) : 0);
  d.set_mr_mode(mr_mode);
  d.set_software_rma(IsSoftwareRmaProvider(prov));
  d.set_endpoint_type(FI_EP_RDM);
  s->address_text_ = AddressText(info, name, name_len);
  s->progress_ = std::thread([p = s.get()] { p->ProgressLoop(); });
  return s;
}

// Software providers make progress only when the target's queues are polled.
void FabricServer::ProgressLoop() {
  fi_cq_entry entries[16];
  while (!stop_.load(std::memory_order_relaxed)) {
    ssize_t n = fi_cq_sread(cq_, entries, 16, nullptr, 50);
    if (n == -FI_ENOSYS || n == -FI_EINVAL) {
      n = fi_cq_read(cq_, entries, 16);  // no wait object: poll
    }
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      fi_cq_readerr(cq_, &err, 0);
      SKV_LOG_WARN(kLog, "completion error on the daemon endpoint: %s", fi_strerror(err.err));
    }
  }
}

absl::StatusOr<v1::FabricDescriptor> FabricServer::AddArena(int64_t offset, int64_t bytes) {
  fid_mr* mr = nullptr;
  int rc = fi_mr_reg(domain_, pool_->base() + offset, static_cast<size_t>(bytes), FI_REMOTE_READ, 0,
                     RandomKey(info_->domain_attr->mr_key_size), 0, &mr, nullptr);
  if (rc != 0) return FabricError(rc, "registering a tenant arena");
  arena_mrs_.push_back(mr);
  if (descriptor_.mr_mode() & FI_MR_ENDPOINT) {
    if ((rc = fi_mr_bind(mr, &ep_->fid, 0)) != 0) return FabricError(rc, "binding an arena registration");
    if ((rc = fi_mr_enable(mr)) != 0) return FabricError(rc, "enabling an arena registration");
  }
  v1::FabricDescriptor d = descriptor_;
  d.set_key(fi_mr_key(mr));
  // Without FI_MR_VIRT_ADDR a remote address is an offset into the registration: the client
  // adds `base` to pool offsets, so base = -offset (mod 2^64) lands on the arena's byte 0.
  if (!(descriptor_.mr_mode() & FI_MR_VIRT_ADDR)) d.set_base(static_cast<uint64_t>(-offset));
  return d;
}

std::string FabricServer::Describe() const {
  return absl::StrFormat("provider %s at %s (%s RMA, mr_mode 0x%x)", descriptor_.provider(), address_text_,
                         descriptor_.software_rma() ? "software" : "hardware", descriptor_.mr_mode());
}

FabricServer::~FabricServer() {
  stop_ = true;
  if (progress_.joinable()) progress_.join();
  for (fid_mr* mr : arena_mrs_) CloseFid(&mr->fid);
  CloseFid(mr_ ? &mr_->fid : nullptr);
  CloseFid(ep_ ? &ep_->fid : nullptr);
  CloseFid(cq_ ? &cq_->fid : nullptr);
  CloseFid(av_ ? &av_->fid : nullptr);
  CloseFid(domain_ ? &domain_->fid : nullptr);
  CloseFid(fabric_ ? &fabric_->fid : nullptr);
  if (info_ != nullptr) fi_freeinfo(info_);
}

}  // namespace sparsekv
