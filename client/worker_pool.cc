#include "client/worker_pool.h"

namespace sparsekv {

WorkerPool::WorkerPool(int helper_threads) {
  for (int t = 0; t < helper_threads; ++t) helpers_.emplace_back([this] { HelperLoop(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (auto& t : helpers_) t.join();
}

bool WorkerPool::TakeLocked(size_t* i) {
  if (job_ == nullptr || next_ >= n_) return false;
  *i = next_++;
  return true;
}

void WorkerPool::HelperLoop() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.Await(absl::Condition(
        +[](WorkerPool* p) ABSL_NO_THREAD_SAFETY_ANALYSIS { return p->stop_ || (p->job_ != nullptr && p->next_ < p->n_); },
        this));
    if (stop_) return;
    size_t i;
    while (TakeLocked(&i)) {
      const auto* job = job_;
      mu_.Unlock();
      (*job)(i);
      mu_.Lock();
      ++completed_;
    }
  }
}

void WorkerPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (helpers_.empty() || !run_mu_.TryLock()) {
    for (size_t i = 0; i < n; ++i) fn(i);  // no helpers, or they are busy with another batch
    return;
  }
  absl::MutexLock lock(&mu_);
  job_ = &fn;
  n_ = n;
  next_ = 0;
  completed_ = 0;
  size_t i;
  while (TakeLocked(&i)) {
    mu_.Unlock();
    fn(i);
    mu_.Lock();
    ++completed_;
  }
  mu_.Await(absl::Condition(
      +[](WorkerPool* p) ABSL_NO_THREAD_SAFETY_ANALYSIS { return p->completed_ == p->n_; }, this));
  job_ = nullptr;
  run_mu_.Unlock();
}

}  // namespace sparsekv
