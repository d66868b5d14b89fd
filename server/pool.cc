#include "server/pool.h"

#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "common/size_parse.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

namespace sparsekv {
namespace {

std::string Errno(int err) { return std::strerror(err); }

std::string NewUuid() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ getpid());
  return absl::StrFormat("%016x%016x", rng(), rng());
}

absl::StatusOr<int64_t> ReadSysfsInt(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text)) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  int64_t value;
  if (!absl::SimpleAtoi(text, &value)) return absl::InternalError(absl::StrCat(path, ": '", text, "' is not a number"));
  return value;
}

// Reserves the file's blocks now, so an overcommitted pool fails here with a clear error
// instead of with SIGBUS on some later write.
absl::Status Reserve(int fd, int64_t size, const std::string& what, const Pool::Progress& progress) {
  // In 1 GiB steps, so a large pool reports progress instead of looking hung.
  constexpr int64_t kStep = int64_t{1} << 30;
  for (int64_t done = 0; done < size;) {
    int64_t len = std::min(kStep, size - done);
    int rc = posix_fallocate(fd, done, len);
    if (rc != 0) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cannot reserve %s for the pool on %s (failed after %s): %s", FormatBytes(size), what,
          FormatBytes(done), Errno(rc)));
    }
    done += len;
    if (progress) progress(done, size);
  }
  return absl::OkStatus();
}

int64_t MemAvailableBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string name, unit;
  int64_t kib;
  while (meminfo >> name >> kib >> unit) {
    if (name == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

}  // namespace

int64_t DefaultPoolBytes(int64_t page_bytes) {
  int64_t bytes = std::min<int64_t>(std::max<int64_t>(MemAvailableBytes(), 0) / 4, int64_t{4} << 30);
  bytes = std::max<int64_t>(bytes, int64_t{64} << 20);
  return bytes / page_bytes * page_bytes;
}

absl::StatusOr<PoolBackingSpec> ParseBackingSpec(const std::string& text) {
  PoolBackingSpec spec;
  absl::string_view rest = text;
  if (text == "memfd" || text.empty()) {
    spec.kind = PoolBackingSpec::Kind::kMemfd;
  } else if (text == "memfd-hugetlb") {
    spec.kind = PoolBackingSpec::Kind::kMemfdHugetlb;
  } else if (absl::ConsumePrefix(&rest, "file:")) {
    spec.kind = PoolBackingSpec::Kind::kFile;
    spec.path = std::string(rest);
  } else if (absl::ConsumePrefix(&rest, "hugetlbfs:")) {
    spec.kind = PoolBackingSpec::Kind::kHugetlbfs;
    spec.path = std::string(rest);
  } else if (absl::ConsumePrefix(&rest, "devdax:")) {
    spec.kind = PoolBackingSpec::Kind::kDevdax;
    spec.path = std::string(rest);
  } else if (absl::ConsumePrefix(&rest, "numa:")) {
    spec.kind = PoolBackingSpec::Kind::kNuma;
    if (!absl::SimpleAtoi(rest, &spec.numa_node) || spec.numa_node < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("backing '%s': numa node must be a non-negative number", text));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrFormat(
        "backing '%s' is unknown (use memfd, memfd-hugetlb, file:PATH, hugetlbfs:PATH, devdax:/dev/daxX.Y or numa:N)",
        text));
  }
  if (spec.kind != PoolBackingSpec::Kind::kMemfd && spec.kind != PoolBackingSpec::Kind::kMemfdHugetlb &&
      spec.kind != PoolBackingSpec::Kind::kNuma &&
      spec.path.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("backing '%s' needs a path", text));
  }
  return spec;
}

const char* BackingKindName(PoolBackingSpec::Kind kind) {
  switch (kind) {
    case PoolBackingSpec::Kind::kMemfd: return "memfd";
    case PoolBackingSpec::Kind::kMemfdHugetlb: return "memfd-hugetlb";
    case PoolBackingSpec::Kind::kFile: return "file";
    case PoolBackingSpec::Kind::kHugetlbfs: return "hugetlbfs";
    case PoolBackingSpec::Kind::kDevdax: return "devdax";
    case PoolBackingSpec::Kind::kNuma: return "numa";
  }
  return "?";
}

namespace {

int64_t FreeHugePages2M() {
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  int64_t free_pages = 0, page_kib = 0;
  while (std::getline(meminfo, line)) {
    std::sscanf(line.c_str(), "HugePages_Free: %ld", &free_pages);
    std::sscanf(line.c_str(), "Hugepagesize: %ld kB", &page_kib);
  }
  return page_kib == 2048 ? free_pages : 0;
}

// Shared memory has no quota of its own: reserving more than the machine has would wake the
// OOM killer instead of failing. Refuse up front, naming both sizes.
absl::Status CheckFitsInMemory(int64_t size_bytes, const PoolBackingSpec& spec) {
  int64_t available = -1;
  std::string where = "this machine";
  if (spec.kind == PoolBackingSpec::Kind::kNuma) {
    long long free_bytes = 0;
    numa_node_size64(spec.numa_node, &free_bytes);
    available = free_bytes;
    where = absl::StrCat("NUMA node ", spec.numa_node);
  } else {
    available = MemAvailableBytes();
  }
  if (available >= 0 && size_bytes > available) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "a pool of %s does not fit in the %s of memory available on %s; choose a smaller pool size",
        FormatBytes(size_bytes), FormatBytes(available), where));
  }
  return absl::OkStatus();
}

absl::Status CheckFitsInFilesystem(int fd, int64_t size_bytes, const std::string& path) {
  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) return absl::OkStatus();
  struct stat st;
  int64_t already = fstat(fd, &st) == 0 ? static_cast<int64_t>(st.st_blocks) * 512 : 0;
  int64_t room = static_cast<int64_t>(fs.f_bavail) * fs.f_bsize + already;
  if (size_bytes > room) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "a pool of %s does not fit on the filesystem of %s (%s free)", FormatBytes(size_bytes), path,
        FormatBytes(room)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Pool>> Pool::Create(const PoolBackingSpec& spec, int64_t size_bytes,
                                                  bool prefault, const Progress& progress, int inherited_fd) {
  std::unique_ptr<Pool> pool(new Pool());
  pool->spec_ = spec;
  pool->uuid_ = NewUuid();
  int fd = -1;
  int mmap_flags = MAP_SHARED;
  if (inherited_fd >= 0 && pool->memory_backed()) {
    struct stat st;
    if (fstat(inherited_fd, &st) != 0 || st.st_size != size_bytes) {
      close(inherited_fd);
      return absl::FailedPreconditionError(absl::StrFormat(
          "the inherited pool descriptor has %d bytes, the configured pool %d; not reusing it",
          static_cast<int64_t>(st.st_size), size_bytes));
    }
    void* addr = mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, inherited_fd, 0);
    if (addr == MAP_FAILED) {
      close(inherited_fd);
      return absl::FailedPreconditionError(absl::StrFormat("cannot map the inherited pool: %s", Errno(errno)));
    }
    pool->fd_ = inherited_fd;
    pool->base_ = static_cast<std::byte*>(addr);
    pool->size_bytes_ = size_bytes;
    pool->survived_ = true;
    return pool;
  }
  switch (spec.kind) {
    case PoolBackingSpec::Kind::kMemfd:
    case PoolBackingSpec::Kind::kNuma: {
      if (spec.kind == PoolBackingSpec::Kind::kNuma) {
        if (numa_available() < 0) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "backing numa:%d: this kernel or machine has no NUMA support", spec.numa_node));
        }
        if (spec.numa_node > numa_max_node() ||
            numa_bitmask_isbitset(numa_get_mems_allowed(), spec.numa_node) == 0) {
          return absl::NotFoundError(absl::StrFormat(
              "backing numa:%d: no such NUMA node with memory (nodes 0..%d exist)", spec.numa_node,
              numa_max_node()));
        }
      }
      if (auto s = CheckFitsInMemory(size_bytes, spec); !s.ok()) return s;
      fd = memfd_create("sparsekv-pool", MFD_CLOEXEC);
      if (fd < 0) return absl::InternalError(absl::StrCat("memfd_create: ", Errno(errno)));
      if (ftruncate(fd, size_bytes) != 0) {
        int err = errno;
        close(fd);
        return absl::ResourceExhaustedError(absl::StrFormat("cannot size the memfd pool to %s: %s",
                                                            FormatBytes(size_bytes), Errno(err)));
      }
      break;
    }
    case PoolBackingSpec::Kind::kMemfdHugetlb: {
      constexpr int64_t kHuge = 2 << 20;
      size_bytes = (size_bytes + kHuge - 1) / kHuge * kHuge;
      int64_t free_huge = FreeHugePages2M();
      if (free_huge * kHuge < size_bytes) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "backing memfd-hugetlb: a %s pool needs %d free 2 MiB huge pages, %d are free; "
            "reserve them with `sysctl vm.nr_hugepages=%d` (or use the memfd backing)",
            FormatBytes(size_bytes), size_bytes / kHuge, free_huge, size_bytes / kHuge));
      }
      fd = memfd_create("sparsekv-pool", MFD_CLOEXEC | MFD_HUGETLB);
      if (fd < 0) return absl::FailedPreconditionError(absl::StrCat("memfd_create(MFD_HUGETLB): ", Errno(errno)));
      if (ftruncate(fd, size_bytes) != 0) {
        int err = errno;
        close(fd);
        return absl::ResourceExhaustedError(absl::StrFormat("cannot size the huge-page pool to %s: %s",
                                                            FormatBytes(size_bytes), Errno(err)));
      }
      mmap_flags |= MAP_POPULATE;  // hugetlb pages are reserved at mmap; populate touches them
      break;
    }
    case PoolBackingSpec::Kind::kFile:
    case PoolBackingSpec::Kind::kHugetlbfs: {
      struct stat before;
      bool existed = stat(spec.path.c_str(), &before) == 0;
      fd = open(spec.path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0660);
      if (fd >= 0 && existed) {
        int64_t want = size_bytes;
        if (spec.kind == PoolBackingSpec::Kind::kHugetlbfs) {
          struct statfs hfs;
          if (fstatfs(fd, &hfs) == 0) want = (size_bytes + hfs.f_bsize - 1) / hfs.f_bsize * hfs.f_bsize;
        }
        pool->survived_ = before.st_size == want;
      }
      if (fd < 0) {
        return absl::FailedPreconditionError(
            absl::StrFormat("cannot open pool file %s: %s", spec.path, Errno(errno)));
      }
      struct statfs fs;
      if (fstatfs(fd, &fs) == 0 && spec.kind == PoolBackingSpec::Kind::kHugetlbfs) {
        if (static_cast<uint64_t>(fs.f_type) != HUGETLBFS_MAGIC) {
          close(fd);
          return absl::FailedPreconditionError(
              absl::StrFormat("pool file %s is not on a hugetlbfs mount", spec.path));
        }
        int64_t huge = fs.f_bsize;
        size_bytes = (size_bytes + huge - 1) / huge * huge;
      }
      if (auto s = CheckFitsInFilesystem(fd, size_bytes, spec.path); !s.ok()) {
        close(fd);
        return s;
      }
      if (ftruncate(fd, size_bytes) != 0) {
        int err = errno;
        close(fd);
        return absl::ResourceExhaustedError(absl::StrFormat("cannot size pool file %s to %s: %s",
                                                            spec.path, FormatBytes(size_bytes), Errno(err)));
      }
      break;
    }
    case PoolBackingSpec::Kind::kDevdax: {
      fd = open(spec.path.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) {
        return absl::FailedPreconditionError(
            absl::StrFormat("cannot open device-dax %s: %s", spec.path, Errno(errno)));
      }
      struct stat st;
      if (fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode)) {
        close(fd);
        return absl::FailedPreconditionError(
            absl::StrFormat("%s is not a device-dax character device", spec.path));
      }
      std::string name = spec.path.substr(spec.path.rfind('/') + 1);
      auto device_size = ReadSysfsInt(absl::StrCat("/sys/bus/dax/devices/", name, "/size"));
      auto align = ReadSysfsInt(absl::StrCat("/sys/bus/dax/devices/", name, "/align"));
      if (!device_size.ok()) {
        close(fd);
        return absl::FailedPreconditionError(absl::StrCat("device-dax ", spec.path, ": ", device_size.status().message()));
      }
      int64_t alignment = align.ok() ? *align : (2 << 20);
      if (size_bytes == 0 || size_bytes > *device_size) size_bytes = *device_size;
      size_bytes = size_bytes / alignment * alignment;
      pool->survived_ = true;  // device memory outlives the daemon
      break;
    }
  }
  struct stat reserved;
  const bool already_reserved = pool->survived_ && fstat(fd, &reserved) == 0 &&
                                static_cast<int64_t>(reserved.st_blocks) * 512 >= size_bytes;
  if (prefault && !already_reserved && spec.kind != PoolBackingSpec::Kind::kDevdax &&
      spec.kind != PoolBackingSpec::Kind::kNuma && spec.kind != PoolBackingSpec::Kind::kMemfdHugetlb) {
    if (auto s = Reserve(fd, size_bytes, BackingKindName(spec.kind), progress); !s.ok()) {
      close(fd);
      return s;
    }
  }
  void* addr = mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, mmap_flags, fd, 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    close(fd);
    return absl::ResourceExhaustedError(absl::StrFormat("cannot map %s of %s pool: %s",
                                                        FormatBytes(size_bytes), BackingKindName(spec.kind), Errno(err)));
  }
  pool->fd_ = fd;
  pool->base_ = static_cast<std::byte*>(addr);
  pool->size_bytes_ = size_bytes;
  if (spec.kind == PoolBackingSpec::Kind::kNuma) {
    // Bind the shared policy of the memfd's pages to the node before anything is touched.
    unsigned long mask[16] = {};
    mask[spec.numa_node / (8 * sizeof(unsigned long))] |= 1UL << (spec.numa_node % (8 * sizeof(unsigned long)));
    if (mbind(addr, size_bytes, MPOL_BIND, mask, sizeof(mask) * 8, MPOL_MF_STRICT) != 0) {
      return absl::FailedPreconditionError(
          absl::StrFormat("cannot bind the pool to NUMA node %d: %s", spec.numa_node, Errno(errno)));
    }
    if (prefault) {
      if (auto s = Reserve(fd, size_bytes, absl::StrCat("NUMA node ", spec.numa_node), progress); !s.ok()) return s;
    }
  }
  if (prefault && spec.kind == PoolBackingSpec::Kind::kDevdax) {
    // Device memory cannot be reserved with fallocate; touch it once so a bad device fails now.
    if (madvise(addr, size_bytes, MADV_POPULATE_WRITE) != 0) {
      for (int64_t off = 0; off < size_bytes; off += 2 << 20) reinterpret_cast<volatile char*>(addr)[off] = 0;
    }
  }
  // Other backings were reserved with fallocate above. The daemon itself never touches pool
  // memory, so populating its own page tables would only cost start-up time: clients map the
  // pool and fault their own pages in.
  return pool;
}

absl::StatusOr<std::vector<Pool::Arena>> Pool::SplitIntoArenas(
    const std::vector<std::pair<std::string, int64_t>>& sizes) {
  if (spec_.kind != PoolBackingSpec::Kind::kMemfd) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "tenant arenas need the memfd backing (this pool is %s)", Describe()));
  }
  int64_t total = 0;
  for (const auto& [name, bytes] : sizes) total += bytes;
  if (total > size_bytes_) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the tenant arenas (quotas) add up to %s, more than the %s pool", FormatBytes(total), FormatBytes(size_bytes_)));
  }
  int64_t offset = size_bytes_ - total;
  for (const auto& [name, bytes] : sizes) {
    Arena a{name, offset, bytes, memfd_create(absl::StrCat("sparsekv-arena-", name).c_str(), MFD_CLOEXEC)};
    if (a.fd < 0) return absl::InternalError(absl::StrCat("memfd_create: ", Errno(errno)));
    arenas_.push_back(a);  // owned from here on
    if (ftruncate(a.fd, bytes) != 0) {
      return absl::ResourceExhaustedError(absl::StrFormat("arena %s: cannot size it to %s: %s", name, FormatBytes(bytes), Errno(errno)));
    }
    if (auto s = Reserve(a.fd, bytes, absl::StrCat("arena ", name), nullptr); !s.ok()) return s;
    void* at = mmap(base_ + offset, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, a.fd, 0);
    if (at == MAP_FAILED) return absl::InternalError(absl::StrFormat("arena %s: mmap: %s", name, Errno(errno)));
    // The pool memfd's pages under the arena are no longer reachable from the daemon: free them.
    fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
    offset += bytes;
  }
  return arenas_;
}

Pool::~Pool() {
  if (base_ != nullptr) munmap(base_, size_bytes_);
  if (fd_ >= 0) close(fd_);
  for (const Arena& a : arenas_) close(a.fd);
}

std::string Pool::client_path() const {
  switch (spec_.kind) {
    case PoolBackingSpec::Kind::kFile:
    case PoolBackingSpec::Kind::kHugetlbfs:
    case PoolBackingSpec::Kind::kDevdax:
      return spec_.path;
    default:
      return "";
  }
}

std::string Pool::Describe() const {
  switch (spec_.kind) {
    case PoolBackingSpec::Kind::kMemfd: return "memfd";
    case PoolBackingSpec::Kind::kMemfdHugetlb: return "memfd-hugetlb";
    case PoolBackingSpec::Kind::kNuma: return absl::StrCat("numa:", spec_.numa_node);
    default: return absl::StrCat(BackingKindName(spec_.kind), ":", spec_.path);
  }
}

}  // namespace sparsekv
