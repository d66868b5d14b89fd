// Levelled log lines on stderr, one line each, in a form journald keeps well:
//   2026-11-22T17:30:00.123Z I pool: backing=memfd size=4.00 GiB
// Never used on the fetch path.
#ifndef SPARSEKV_COMMON_LOG_H_
#define SPARSEKV_COMMON_LOG_H_

#include <string_view>

#include "absl/strings/str_format.h"

namespace sparsekv {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool ParseLogLevel(std::string_view text, LogLevel* level);
void LogLine(LogLevel level, std::string_view component, std::string_view message);

template <typename... Args>
void Log(LogLevel level, std::string_view component, const absl::FormatSpec<Args...>& format,
         const Args&... args) {
  if (level < GetLogLevel()) return;
  LogLine(level, component, absl::StrFormat(format, args...));
}

#define SKV_LOG_INFO(component, ...) ::sparsekv::Log(::sparsekv::LogLevel::kInfo, component, __VA_ARGS__)
#define SKV_LOG_WARN(component, ...) ::sparsekv::Log(::sparsekv::LogLevel::kWarning, component, __VA_ARGS__)
#define SKV_LOG_ERROR(component, ...) ::sparsekv::Log(::sparsekv::LogLevel::kError, component, __VA_ARGS__)
#define SKV_LOG_DEBUG(component, ...) ::sparsekv::Log(::sparsekv::LogLevel::kDebug, component, __VA_ARGS__)

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_LOG_H_
