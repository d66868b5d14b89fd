// Byte sizes as operators write them: "512MiB", "4GiB", "256k", "1048576".
//
// Binary suffixes (K, KiB, M, MiB, G, GiB, T, TiB; case-insensitive, "B" optional after K/M/G/T)
// are powers of 1024; decimal suffixes (KB, MB, GB, TB) are powers of 1000. A bare number is
// bytes. Anything else, a negative value, or a value that overflows int64 is an error that quotes
// the text.
#ifndef SPARSEKV_COMMON_SIZE_PARSE_H_
#define SPARSEKV_COMMON_SIZE_PARSE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sparsekv {

absl::StatusOr<int64_t> ParseSize(std::string_view text);

// "1.50 GiB", "656 B": for logs and tables.
std::string FormatBytes(int64_t bytes);

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_SIZE_PARSE_H_
