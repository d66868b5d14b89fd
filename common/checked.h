// Checked integer arithmetic for every computation that takes a caller's number: token indices,
// counts, byte sizes, pool offsets, page numbers from the wire. One helper, used everywhere, so a
// value near INT64_MAX is refused with a status naming it instead of wrapping past a bounds
// check.
//
//   int64_t end;
//   if (!CheckedAdd(first, n, &end) || end > capacity) return OutOfRange(...);
//
// TokenRange validates [first, first + count) against a limit in one call and returns the
// status itself (OUT_OF_RANGE, naming the values and the limit).
#ifndef SPARSEKV_COMMON_CHECKED_H_
#define SPARSEKV_COMMON_CHECKED_H_

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace sparsekv {

// *out = a + b; false (and *out unspecified) when the result does not fit T.
template <typename T, typename A, typename B>
[[nodiscard]] constexpr bool CheckedAdd(A a, B b, T* out) {
  return !__builtin_add_overflow(a, b, out);
}
template <typename T, typename A, typename B>
[[nodiscard]] constexpr bool CheckedMul(A a, B b, T* out) {
  return !__builtin_mul_overflow(a, b, out);
}
template <typename T, typename A, typename B>
[[nodiscard]] constexpr bool CheckedSub(A a, B b, T* out) {
  return !__builtin_sub_overflow(a, b, out);
}

// OK when 0 <= first, 0 <= count and first + count <= limit (without overflow); else
// OUT_OF_RANGE: "<what>: tokens [first, first + count) are outside [0, limit)".
inline absl::Status CheckTokenRange(int64_t first, int64_t count, int64_t limit, std::string_view what,
                                    std::string_view limit_name = "capacity") {
  int64_t end = 0;
  if (first < 0 || count < 0 || !CheckedAdd(first, count, &end) || end > limit) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%s: %d tokens from token %d reach past the %s of %d tokens", what, count, first, limit_name, limit));
  }
  return absl::OkStatus();
}

// The byte size of `count` items of `item_bytes`, or INVALID_ARGUMENT when it overflows.
inline absl::Status CheckedBytes(int64_t count, int64_t item_bytes, std::string_view what, int64_t* out) {
  if (count < 0 || item_bytes < 0 || !CheckedMul(count, item_bytes, out)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d items of %d bytes do not fit a 64-bit size", what, count, item_bytes));
  }
  return absl::OkStatus();
}

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_CHECKED_H_
