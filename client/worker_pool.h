// WorkerPool runs the items of one batch on the calling thread plus a few helper threads owned
// by the Client, so a large decode batch is copied by several cores at once.
//
// One batch at a time uses the helpers; a caller that finds them busy does its batch alone
// rather than queueing behind another thread's batch. Items are handed out one by one under a
// mutex: an item is a whole (region, layer) top-k list, ~1 MB of copying, so the lock is noise.
#ifndef SPARSEKV_CLIENT_WORKER_POOL_H_
#define SPARSEKV_CLIENT_WORKER_POOL_H_

#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sparsekv {

class WorkerPool {
 public:
  explicit WorkerPool(int helper_threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls fn(i) for every i in [0, n), on this thread and the helpers; returns when all are done.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  void HelperLoop();
  bool TakeLocked(size_t* i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex run_mu_;  // one batch at a time
  absl::Mutex mu_;
  const std::function<void(size_t)>* job_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t n_ ABSL_GUARDED_BY(mu_) = 0;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  size_t completed_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> helpers_;
};

}  // namespace sparsekv

#endif  // SPARSEKV_CLIENT_WORKER_POOL_H_
