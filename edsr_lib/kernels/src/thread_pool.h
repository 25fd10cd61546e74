// A thread pool for oneDNN whose idle workers sleep instead of spinning.
// Part of conv.cpp's single translation unit: include it only from there.
#ifndef EDSR_KERNELS_THREAD_POOL_H
#define EDSR_KERNELS_THREAD_POOL_H

namespace {


thread_local bool in_pool_worker = false;

class SleepingPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit SleepingPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { Work(i); });
  }
  ~SleepingPool() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto &t : workers_) t.join();
  }
  int get_num_threads() const override { return threads_; }
  bool get_in_parallel() const override { return in_pool_worker; }
  uint64_t get_flags() const override { return 0; }  // synchronous: parallel_for returns when all is done
  void wait() override {}

  void parallel_for(int n, const std::function<void(int, int)> &fn) override {
    if (n <= 0) return;
    if (n == 1 || threads_ == 1 || in_pool_worker) {
      for (int i = 0; i < n; ++i) fn(i, n);
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &fn;
    total_ = n;
    remaining_ = threads_;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    RunShare(0);
    lock.lock();
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  // Static shares (thread t runs chunks t, t + threads, ...), as oneDNN's own runtimes do: oneDNN sizes the chunks
  // for one thread each, so a caller that also took a late worker's chunk would run the convolution serially.
  void RunShare(int thread) {
    for (int i = thread; i < total_; i += threads_) (*job_)(i, total_);
    std::lock_guard<std::mutex> lock(mutex_);
    if (--remaining_ == 0) done_.notify_all();
  }
  void Work(int thread) {
    in_pool_worker = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (generation_ != seen && job_ != nullptr); });
      if (stop_) return;
      seen = generation_;
      lock.unlock();
      RunShare(thread);
      lock.lock();
    }
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int, int)> *job_ = nullptr;
  int total_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

int AvailableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

}  // namespace

#endif  // EDSR_KERNELS_THREAD_POOL_H
