// Start-up step: restore from the journal (state_dir): the sealed regions of the previous run
// come back verified when the pool memory survived; otherwise only the pages a client of the
// previous run may still read are quarantined.
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/size_parse.h"
#include "server/daemon.h"

namespace sparsekv {

int Daemon::Restore() {
  const DaemonConfig& config = config_;
  if (config.state_dir.empty()) return 0;
  auto opened = RegionJournal::Open(config.state_dir);
  if (!opened.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "%s", opened.status().message());
    return 1;
  }
  journal_ = std::move(*opened);
  if (journal_->torn_bytes() > 0) {
    SKV_LOG_WARN("restore", "%s: ignoring %d bytes after the last whole record (torn by a crash)", journal_->path(),
                 journal_->torn_bytes());
  }
  // Which pages the previous run had handed out: only those are quarantined after a restart.
  auto page_map = table_->AttachPageMap(config.state_dir + "/pages.map");
  if (!page_map.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "%s", page_map.status().message());
    return 1;
  }
  const auto& previous = journal_->replayed_pool();
  const size_t sealed = journal_->replayed_regions().size();
  std::string mismatch;
  if (!previous) mismatch = "no previous pool";
  else if (previous->backing() != config.backing) mismatch = absl::StrCat("backing changed from ", previous->backing());
  else if (previous->pool_bytes() != pool_->size_bytes()) mismatch = "pool size changed";
  else if (previous->page_bytes() != config.page_bytes) mismatch = "page size changed";
  else if (!pool_->survived()) mismatch = "the pool memory did not survive the restart";
  if (mismatch.empty()) {
    pool_->set_uuid(previous->pool_uuid());
    auto restore_started = std::chrono::steady_clock::now();
    NotifyStatus(absl::StrFormat("restoring and verifying %d sealed regions", sealed));
    auto report = table_->Restore(journal_->replayed_regions());
    SKV_LOG_INFO("restore", "restored %d sealed regions (%s), checksums verified, in %.0f ms; dropped %d%s",
                 report.restored, FormatBytes(report.restored_bytes),
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - restore_started).count(),
                 report.dropped, report.first_problem.empty() ? "" : absl::StrCat(" (", report.first_problem, ")"));
  } else {
    if (sealed > 0) SKV_LOG_WARN("restore", "%d sealed regions of the previous run are lost: %s", sealed, mismatch);
    // Same pool memory, nothing restored: clients of the previous run may still read its pages.
    if (*page_map && previous && pool_->survived() && previous->pool_bytes() == pool_->size_bytes() &&
        previous->page_bytes() == config.page_bytes) {
      table_->QuarantinePreviouslyHandedOut();
    }
  }
  v1::JournalPool header;
  header.set_pool_uuid(pool_->uuid());
  header.set_backing(config.backing);
  header.set_pool_bytes(pool_->size_bytes());
  header.set_page_bytes(config.page_bytes);
  if (auto s = table_->AttachJournal(journal_.get(), header); !s.ok()) {
    SKV_LOG_ERROR(kDaemonLog, "journal: %s", s.message());
    return 1;
  }
  SKV_LOG_INFO("restore", "sealed regions are journaled to %s", journal_->path());
  return 0;
}

}  // namespace sparsekv
