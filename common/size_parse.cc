#include "common/size_parse.h"

#include <cctype>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace sparsekv {

absl::StatusOr<int64_t> ParseSize(std::string_view text) {
  absl::string_view s = absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size()));
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "size '%s' must start with a non-negative whole number (like 512MiB or 4GiB)", text));
  }
  if (i > 18) {
    return absl::InvalidArgumentError(absl::StrFormat("size '%s' is too large", text));
  }
  int64_t number = 0;
  for (size_t j = 0; j < i; ++j) number = number * 10 + (s[j] - '0');
  std::string suffix = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(i)));
  int64_t multiplier = 0;
  if (suffix.empty() || suffix == "b") multiplier = 1;
  else if (suffix == "k" || suffix == "kib") multiplier = int64_t{1} << 10;
  else if (suffix == "m" || suffix == "mib") multiplier = int64_t{1} << 20;
  else if (suffix == "g" || suffix == "gib") multiplier = int64_t{1} << 30;
  else if (suffix == "t" || suffix == "tib") multiplier = int64_t{1} << 40;
  else if (suffix == "kb") multiplier = 1000;
  else if (suffix == "mb") multiplier = 1000 * 1000;
  else if (suffix == "gb") multiplier = 1000 * 1000 * 1000;
  else if (suffix == "tb") multiplier = int64_t{1000} * 1000 * 1000 * 1000;
  else {
    return absl::InvalidArgumentError(absl::StrFormat(
        "size '%s' has unknown unit '%s' (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)", text,
        suffix));
  }
  if (number > std::numeric_limits<int64_t>::max() / multiplier) {
    return absl::InvalidArgumentError(absl::StrFormat("size '%s' overflows 64 bits", text));
  }
  return number * multiplier;
}

std::string FormatBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024 && bytes > -1024) return absl::StrFormat("%d B", bytes);
  double value = static_cast<double>(bytes);
  int unit = -1;
  while ((value >= 1024.0 || value <= -1024.0) && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  return absl::StrFormat("%.2f %s", value, kUnits[unit]);
}

}  // namespace sparsekv
