#include "client/transports/shm_transport.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/fd_passing.h"
#include "common/host_id.h"

namespace sparsekv {

void GatherEntries(const std::byte* base, absl::Span<const int64_t> offsets, int32_t entry_bytes,
                   std::byte* dst, GatherPrefetch prefetch) {
  const size_t n = offsets.size();
  const size_t bytes = static_cast<size_t>(entry_bytes);
  const int64_t* off = offsets.data();
  const size_t far = static_cast<size_t>(prefetch.far_entries);
  const size_t near = static_cast<size_t>(prefetch.near_entries);
  auto first_line = [&](size_t i) {
    __builtin_prefetch(reinterpret_cast<const char*>(base + off[i]), 0, 2);
  };
  auto other_lines = [&](size_t i) {
    const char* p = reinterpret_cast<const char*>(base + off[i]);
    for (size_t line = 64; line < bytes; line += 64) __builtin_prefetch(p + line, 0, 2);
    __builtin_prefetch(p + bytes - 1, 0, 2);  // an unaligned entry's last line
  };
  if (far > 0) {
    for (size_t i = 0; i < far && i < n; ++i) first_line(i);
  }
  if (near > 0) {
    for (size_t i = 0; i < near && i < n; ++i) other_lines(i);
  }
  for (size_t i = 0; i < n; ++i) {
    if (far > 0 && i + far < n) first_line(i + far);
    if (near > 0 && i + near < n) other_lines(i + near);
    std::memcpy(dst + i * bytes, base + off[i], bytes);
  }
}

absl::StatusOr<std::unique_ptr<ShmTransport>> ShmTransport::Map(const ShmPoolAddress& address) {
  int fd = -1;
  if (!address.fd_socket_path.empty()) {
    auto received = ReceivePoolFd(address.fd_socket_path);
    if (!received.ok()) return received.status();
    if (received->pool_uuid != address.pool_uuid) {
      close(received->fd);
      return absl::FailedPreconditionError(absl::StrFormat(
          "pool socket %s serves pool %s, not pool %s: another daemon owns that socket",
          address.fd_socket_path, received->pool_uuid, address.pool_uuid));
    }
    fd = received->fd;
  } else if (!address.path.empty()) {
    if (address.host_id != LocalHostId()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "pool file %s is on host %s, not this host (%s)", address.path, address.host_id, LocalHostId()));
    }
    fd = open(address.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return absl::PermissionDeniedError(
          absl::StrFormat("cannot open pool %s: %s", address.path, std::strerror(errno)));
    }
  } else {
    return absl::FailedPreconditionError("the daemon offered no shm access to its pool");
  }
  void* addr = mmap(nullptr, address.pool_bytes, PROT_READ, MAP_SHARED, fd, 0);
  int err = errno;
  if (addr == MAP_FAILED) {
    close(fd);
    return absl::ResourceExhaustedError(
        absl::StrFormat("cannot map the %d-byte pool: %s", address.pool_bytes, std::strerror(err)));
  }
  std::unique_ptr<ShmTransport> transport(new ShmTransport());
  transport->address_ = address;
  if (address.fd_socket_path.empty()) {
    close(fd);  // a path: reopened read-write on the first write
  } else {
    transport->fd_ = fd;
  }
  transport->mapping_ = static_cast<std::byte*>(addr);
  // Pool offsets stay the daemon's: byte 0 of an arena's mapping is pool offset arena_offset.
  transport->base_ = transport->mapping_ - address.arena_offset;
  transport->size_bytes_ = address.pool_bytes;
  return transport;
}

ShmTransport::~ShmTransport() {
  if (mapping_ != nullptr) munmap(mapping_, size_bytes_);
  absl::MutexLock lock(&write_mu_);
  if (writable_mapping_ != nullptr) munmap(writable_mapping_, size_bytes_);
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::byte*> ShmTransport::WritableBase() {
  if (std::byte* b = writable_base_.load(std::memory_order_acquire); b != nullptr) return b;
  absl::MutexLock lock(&write_mu_);
  if (writable_mapping_ == nullptr) {
    int fd = fd_;
    if (fd < 0) {
      fd = open(address_.path.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) {
        return absl::PermissionDeniedError(absl::StrFormat("cannot open pool %s for writing: %s", address_.path,
                                                           std::strerror(errno)));
      }
    }
    void* addr = mmap(nullptr, size_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int err = errno;
    if (fd != fd_) close(fd);
    if (addr == MAP_FAILED) {
      return absl::PermissionDeniedError(
          absl::StrFormat("cannot map the %d-byte pool writable: %s", size_bytes_, std::strerror(err)));
    }
    writable_mapping_ = static_cast<std::byte*>(addr);
    writable_base_.store(writable_mapping_ - address_.arena_offset, std::memory_order_release);
  }
  return writable_base_.load(std::memory_order_acquire);
}

absl::Status ShmTransport::Gather(absl::Span<const int64_t> pool_offsets, int32_t entry_bytes,
                                  std::byte* dst) {
  GatherEntries(base_, pool_offsets, entry_bytes, dst);
  return absl::OkStatus();
}

absl::Status ShmTransport::Scatter(const std::byte* src, int32_t entry_bytes,
                                   absl::Span<const int64_t> pool_offsets) {
  auto base = WritableBase();
  if (!base.ok()) return base.status();
  const size_t bytes = static_cast<size_t>(entry_bytes);
  for (size_t i = 0; i < pool_offsets.size(); ++i) {
    std::memcpy(*base + pool_offsets[i], src + i * bytes, bytes);
  }
  return absl::OkStatus();
}

}  // namespace sparsekv
