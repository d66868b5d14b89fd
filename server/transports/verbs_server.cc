#include "server/transports/verbs_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/log.h"

namespace sparsekv {
namespace {
constexpr const char* kLog = "verbs";
}  // namespace

absl::StatusOr<std::unique_ptr<VerbsServer>> VerbsServer::Start(Pool* pool, const std::string& host,
                                                                int64_t shared_bytes) {
  if (shared_bytes <= 0) shared_bytes = pool->size_bytes();
  int devices = 0;
  ibv_device** list = ibv_get_device_list(&devices);
  if (list == nullptr || devices == 0) {
    if (list != nullptr) ibv_free_device_list(list);
    return absl::FailedPreconditionError("no RDMA device (ibv_get_device_list found none)");
  }
  std::unique_ptr<VerbsServer> s(new VerbsServer());
  s->pool_ = pool;
  s->channel_ = rdma_create_event_channel();
  if (s->channel_ == nullptr || rdma_create_id(s->channel_, &s->listener_, nullptr, RDMA_PS_TCP) != 0) {
    ibv_free_device_list(list);
    return absl::UnavailableError(absl::StrFormat("rdmacm: %s", std::strerror(errno)));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    ibv_free_device_list(list);
    return absl::InvalidArgumentError(absl::StrFormat("verbs: '%s' is not an IPv4 address", host));
  }
  if (rdma_bind_addr(s->listener_, reinterpret_cast<sockaddr*>(&addr)) != 0 || rdma_listen(s->listener_, 128) != 0) {
    ibv_free_device_list(list);
    return absl::UnavailableError(absl::StrFormat("verbs: cannot listen on %s: %s", host, std::strerror(errno)));
  }
  // The device behind the address, or the first one for a wildcard address.
  s->context_ = s->listener_->verbs != nullptr ? s->listener_->verbs : ibv_open_device(list[0]);
  ibv_free_device_list(list);
  if (s->context_ == nullptr) return absl::UnavailableError("verbs: cannot open the RDMA device");
  s->pd_ = ibv_alloc_pd(s->context_);
  if (s->pd_ == nullptr) return absl::UnavailableError("verbs: ibv_alloc_pd failed");
  s->mr_ = ibv_reg_mr(s->pd_, pool->base(), static_cast<size_t>(shared_bytes),
                      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
  if (s->mr_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "verbs: cannot register the %d-byte pool: %s (raise LimitMEMLOCK)", pool->size_bytes(), std::strerror(errno)));
  }
  s->descriptor_.set_host(host);
  s->descriptor_.set_port(ntohs(rdma_get_src_port(s->listener_)));
  s->descriptor_.set_base(reinterpret_cast<uint64_t>(pool->base()));
  s->descriptor_.set_rkey(s->mr_->rkey);
  s->descriptor_.set_device(ibv_get_device_name(s->context_->device));
  if (pipe2(s->wake_pipe_, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  s->events_ = std::thread([p = s.get()] { p->EventLoop(); });
  return s;
}

absl::StatusOr<v1::VerbsDescriptor> VerbsServer::AddArena(int64_t offset, int64_t bytes) {
  ibv_mr* mr = ibv_reg_mr(pd_, pool_->base() + offset, static_cast<size_t>(bytes),
                          IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
  if (mr == nullptr) return absl::ResourceExhaustedError(absl::StrFormat("verbs: cannot register an arena: %s", std::strerror(errno)));
  arena_mrs_.push_back(mr);
  v1::VerbsDescriptor d = descriptor_;
  d.set_rkey(mr->rkey);
  return d;
}

void VerbsServer::EventLoop() {
  pollfd fds[2] = {{channel_->fd, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents != 0) return;
    if (!(fds[0].revents & POLLIN)) continue;
    rdma_cm_event* event = nullptr;
    if (rdma_get_cm_event(channel_, &event) != 0) continue;
    rdma_cm_id* id = event->id;
    const rdma_cm_event_type type = event->event;
    rdma_conn_param wanted{};
    if (event->event == RDMA_CM_EVENT_CONNECT_REQUEST) wanted = event->param.conn;
    rdma_ack_cm_event(event);
    if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
      // The client only issues one-sided operations: a minimal queue pair on our side.
      ibv_qp_init_attr qp{};
      qp.qp_type = IBV_QPT_RC;
      qp.cap.max_send_wr = 1;
      qp.cap.max_recv_wr = 1;
      qp.cap.max_send_sge = 1;
      qp.cap.max_recv_sge = 1;
      ibv_device_attr device{};
      ibv_query_device(id->verbs, &device);
      if (id->verbs != context_ || rdma_create_qp(id, pd_, &qp) != 0) {
        SKV_LOG_WARN(kLog, "refusing a connection: %s", id->verbs != context_ ? "it arrived on another RDMA device" : std::strerror(errno));
        rdma_reject(id, nullptr, 0);
        rdma_destroy_id(id);
        continue;
      }
      rdma_conn_param param{};
      param.responder_resources = static_cast<uint8_t>(std::min<int>(wanted.initiator_depth, device.max_qp_rd_atom));
      param.initiator_depth = static_cast<uint8_t>(std::min<int>(wanted.responder_resources, device.max_qp_init_rd_atom));
      if (rdma_accept(id, &param) != 0) {
        rdma_destroy_qp(id);
        rdma_destroy_id(id);
        continue;
      }
      connections_.push_back(id);
    } else if (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_REJECTED ||
               type == RDMA_CM_EVENT_CONNECT_ERROR || type == RDMA_CM_EVENT_UNREACHABLE) {
      auto it = std::find(connections_.begin(), connections_.end(), id);
      if (it != connections_.end()) {
        connections_.erase(it);
        rdma_destroy_qp(id);
        rdma_destroy_id(id);
      }
    }
  }
}

VerbsServer::~VerbsServer() {
  if (wake_pipe_[1] >= 0) {
    char c = 0;
    (void)!write(wake_pipe_[1], &c, 1);
  }
  if (events_.joinable()) events_.join();
  for (rdma_cm_id* id : connections_) {
    rdma_disconnect(id);
    rdma_destroy_qp(id);
    rdma_destroy_id(id);
  }
  for (ibv_mr* mr : arena_mrs_) ibv_dereg_mr(mr);
  if (mr_ != nullptr) ibv_dereg_mr(mr_);
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  if (context_ != nullptr && (listener_ == nullptr || context_ != listener_->verbs)) ibv_close_device(context_);
  if (listener_ != nullptr) rdma_destroy_id(listener_);
  if (channel_ != nullptr) rdma_destroy_event_channel(channel_);
  for (int fd : wake_pipe_) if (fd >= 0) close(fd);
}

}  // namespace sparsekv
