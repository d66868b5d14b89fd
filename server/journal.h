// RegionJournal keeps the daemon's sealed regions crash-consistently beside the pool, so a
// restarted daemon serves them again with identical keys and bytes.
//
// The file <state_dir>/regions.journal is a sequence of records: a pool header, then one record
// per sealed region and one per deletion. Each record is framed as [u32 length][u64 XXH3 of the
// payload][payload], so a record torn by a crash is detected and replay stops there. Only sealed
// regions are journaled: a region that was being written when the daemon died is never served
// as complete; its pages are simply free after a restart.
//
// The journal is rewritten whole (temporary file + rename) at start-up and whenever it has grown
// to several times what the live regions need. Writes go to the page cache without fsync: the
// journal survives a crash of the daemon, which is what matters for pools that live in memory.
//
// Not thread-safe: the RegionTable calls it under its own lock.
#ifndef SPARSEKV_SERVER_JOURNAL_H_
#define SPARSEKV_SERVER_JOURNAL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "sparsekv/v1/journal.pb.h"

namespace sparsekv {

class RegionJournal {
 public:
  // Opens <dir>/regions.journal (creating dir and file if needed) and replays it.
  static absl::StatusOr<std::unique_ptr<RegionJournal>> Open(const std::string& dir);
  ~RegionJournal();

  const std::optional<v1::JournalPool>& replayed_pool() const { return replayed_pool_; }
  // Sealed regions live at the end of the replay, in journal order.
  const std::vector<v1::JournalSeal>& replayed_regions() const { return replayed_regions_; }
  int64_t torn_bytes() const { return torn_bytes_; }  // ignored after a damaged record
  const std::string& path() const { return path_; }

  // Replaces the whole journal with this pool header and these regions.
  absl::Status Rewrite(const v1::JournalPool& pool, const std::vector<v1::JournalSeal>& regions);
  absl::Status AppendSeal(const v1::JournalSeal& seal);
  absl::Status AppendDelete(const std::string& key, uint64_t region_id);

  // True when the file has grown well past what the live regions need.
  bool WantsCompaction() const;

 private:
  RegionJournal() = default;
  absl::Status Append(const v1::JournalRecord& record);
  absl::Status Replay();

  std::string dir_;
  std::string path_;
  int fd_ = -1;
  int64_t file_bytes_ = 0;
  int64_t live_bytes_ = 0;
  absl::flat_hash_map<uint64_t, int64_t> live_record_bytes_;  // region id -> its seal record size
  std::optional<v1::JournalPool> replayed_pool_;
  std::vector<v1::JournalSeal> replayed_regions_;
  int64_t torn_bytes_ = 0;
};

}  // namespace sparsekv

#endif  // SPARSEKV_SERVER_JOURNAL_H_
