#include "server/journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sparsekv {
namespace {

constexpr size_t kHeaderBytes = 4 + 8;
constexpr uint32_t kMaxRecordBytes = 256u << 20;

std::string Frame(const v1::JournalRecord& record) {
  std::string payload = record.SerializeAsString();
  std::string out(kHeaderBytes, '\0');
  uint32_t length = static_cast<uint32_t>(payload.size());
  uint64_t hash = XXH3_64bits(payload.data(), payload.size());
  std::memcpy(out.data(), &length, 4);
  std::memcpy(out.data() + 4, &hash, 8);
  return out + payload;
}

absl::Status WriteAll(int fd, const std::string& bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrFormat("writing %s: %s", path, std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegionJournal>> RegionJournal::Open(const std::string& dir) {
  std::unique_ptr<RegionJournal> journal(new RegionJournal());
  journal->dir_ = dir;
  journal->path_ = absl::StrCat(dir, "/regions.journal");
  if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot create state directory %s: %s", dir, std::strerror(errno)));
  }
  journal->fd_ = open(journal->path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (journal->fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("cannot open journal %s: %s", journal->path_, std::strerror(errno)));
  }
  if (auto s = journal->Replay(); !s.ok()) return s;
  return journal;
}

RegionJournal::~RegionJournal() {
  if (fd_ >= 0) close(fd_);
}

absl::Status RegionJournal::Replay() {
  std::string data;
  char buf[1 << 16];
  ssize_t n;
  while ((n = pread(fd_, buf, sizeof(buf), static_cast<off_t>(data.size()))) > 0) data.append(buf, n);
  std::vector<v1::JournalSeal> live;
  absl::flat_hash_map<uint64_t, size_t> index;  // region id -> position in live
  size_t at = 0;
  while (at + kHeaderBytes <= data.size()) {
    uint32_t length;
    uint64_t hash;
    std::memcpy(&length, data.data() + at, 4);
    std::memcpy(&hash, data.data() + at + 4, 8);
    if (length > kMaxRecordBytes || at + kHeaderBytes + length > data.size() ||
        XXH3_64bits(data.data() + at + kHeaderBytes, length) != hash) {
      break;
    }
    v1::JournalRecord record;
    if (!record.ParseFromArray(data.data() + at + kHeaderBytes, static_cast<int>(length))) break;
    if (record.has_pool()) {
      replayed_pool_ = record.pool();
    } else if (record.has_seal()) {
      index[record.seal().region_id()] = live.size();
      live.push_back(record.seal());
    } else if (record.has_del()) {
      if (auto it = index.find(record.del().region_id()); it != index.end()) {
        live[it->second].set_region_id(0);  // tombstone
        index.erase(it);
      }
    }
    at += kHeaderBytes + length;
  }
  torn_bytes_ = static_cast<int64_t>(data.size() - at);
  for (auto& seal : live) {
    if (seal.region_id() != 0) replayed_regions_.push_back(std::move(seal));
  }
  file_bytes_ = static_cast<int64_t>(at);
  return absl::OkStatus();
}

absl::Status RegionJournal::Rewrite(const v1::JournalPool& pool, const std::vector<v1::JournalSeal>& regions) {
  std::string tmp = absl::StrCat(path_, ".tmp");
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return absl::InternalError(absl::StrFormat("cannot write %s: %s", tmp, std::strerror(errno)));
  std::string bytes;
  v1::JournalRecord header;
  *header.mutable_pool() = pool;
  bytes += Frame(header);
  live_record_bytes_.clear();
  live_bytes_ = 0;
  for (const auto& seal : regions) {
    v1::JournalRecord record;
    *record.mutable_seal() = seal;
    std::string framed = Frame(record);
    live_record_bytes_[seal.region_id()] = static_cast<int64_t>(framed.size());
    live_bytes_ += static_cast<int64_t>(framed.size());
    bytes += framed;
  }
  absl::Status status = WriteAll(fd, bytes, tmp);
  if (status.ok() && fsync(fd) != 0) status = absl::InternalError(absl::StrCat("fsync ", tmp, ": ", std::strerror(errno)));
  close(fd);
  if (!status.ok()) return status;
  if (rename(tmp.c_str(), path_.c_str()) != 0) {
    return absl::InternalError(absl::StrFormat("rename %s: %s", tmp, std::strerror(errno)));
  }
  int next = open(path_.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (next < 0) return absl::InternalError(absl::StrFormat("reopen %s: %s", path_, std::strerror(errno)));
  close(fd_);
  fd_ = next;
  file_bytes_ = static_cast<int64_t>(bytes.size());
  return absl::OkStatus();
}

absl::Status RegionJournal::Append(const v1::JournalRecord& record) {
  std::string framed = Frame(record);
  if (auto s = WriteAll(fd_, framed, path_); !s.ok()) return s;
  file_bytes_ += static_cast<int64_t>(framed.size());
  if (record.has_seal()) {
    live_record_bytes_[record.seal().region_id()] = static_cast<int64_t>(framed.size());
    live_bytes_ += static_cast<int64_t>(framed.size());
  }
  return absl::OkStatus();
}

absl::Status RegionJournal::AppendSeal(const v1::JournalSeal& seal) {
  v1::JournalRecord record;
  *record.mutable_seal() = seal;
  return Append(record);
}

absl::Status RegionJournal::AppendDelete(const std::string& key, uint64_t region_id) {
  if (auto it = live_record_bytes_.find(region_id); it != live_record_bytes_.end()) {
    live_bytes_ -= it->second;
    live_record_bytes_.erase(it);
  }
  v1::JournalRecord record;
  record.mutable_del()->set_key(key);
  record.mutable_del()->set_region_id(region_id);
  return Append(record);
}

bool RegionJournal::WantsCompaction() const { return file_bytes_ > 4 * live_bytes_ + (16 << 20); }

}  // namespace sparsekv
