// The Redis baseline: what a team without sparsekv would try first. Each entry is a key
// ("L:T") in a real redis-server on loopback, started and stopped by the benchmark; a decode
// step fetches each layer's top-k with one MGET. A minimal RESP client over one socket.
#ifndef SPARSEKV_BENCH_BASELINES_REDIS_H_
#define SPARSEKV_BENCH_BASELINES_REDIS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sparsekv::bench {

class RedisBaseline {
 public:
  // Starts redis-server (no persistence) on a free loopback port; UNAVAILABLE if it is missing.
  static absl::StatusOr<std::unique_ptr<RedisBaseline>> Start();
  ~RedisBaseline();  // shuts the server down

  // SETs entries of one layer, pipelined: key "L:tokens[i]" = values[i * entry_bytes ...].
  absl::Status Load(int32_t layer, const std::vector<int32_t>& tokens, const std::vector<std::byte>& values,
                    int32_t entry_bytes);
  // MGET of `indices` of `layer`, values written densely to dst. Returns bytes received.
  absl::StatusOr<int64_t> MGet(int32_t layer, const std::vector<int32_t>& indices, int32_t entry_bytes, std::byte* dst);

 private:
  RedisBaseline() = default;
  absl::Status SendAll(const std::string& bytes);
  absl::StatusOr<std::string> ReadLine();
  absl::Status ReadExact(char* out, size_t n);

  pid_t pid_ = -1;
  int fd_ = -1;
  std::string dir_;
  std::string buffer_;
  size_t buffer_at_ = 0;
};

}  // namespace sparsekv::bench

#endif  // SPARSEKV_BENCH_BASELINES_REDIS_H_
