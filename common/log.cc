#include "common/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

namespace sparsekv {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

bool ParseLogLevel(std::string_view text, LogLevel* level) {
  if (text == "debug") *level = LogLevel::kDebug;
  else if (text == "info") *level = LogLevel::kInfo;
  else if (text == "warning" || text == "warn") *level = LogLevel::kWarning;
  else if (text == "error") *level = LogLevel::kError;
  else return false;
  return true;
}

// Under systemd, stderr is a journal stream: journald reads a "<N>" syslog priority prefix and
// stamps the time itself, so lines carry the priority instead of a timestamp.
bool ToJournal() {
  static const bool journal = getenv("JOURNAL_STREAM") != nullptr;
  return journal;
}

void LogLine(LogLevel level, std::string_view component, std::string_view message) {
  static constexpr char kLetters[] = {'D', 'I', 'W', 'E'};
  static constexpr int kSyslogPriority[] = {7, 6, 4, 3};
  if (ToJournal()) {
    std::string line = absl::StrFormat("<%d>%s: %s\n", kSyslogPriority[static_cast<int>(level)], component, message);
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    return;
  }
  auto now = std::chrono::system_clock::now();
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm;
  gmtime_r(&secs, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  std::string line = absl::StrFormat("%s.%03dZ %c %s: %s\n", stamp, ms,
                                     kLetters[static_cast<int>(level)], component, message);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace sparsekv
