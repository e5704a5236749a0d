// The threads that run the CPU ops' parallel loops (ops_cpu.h: parallel_for, split_for).
//
// A decode step of a small model runs a hundred or so short parallel loops: four linears and the attention a
// layer, then the head. at::parallel_for runs each as an OpenMP region, and libgomp's workers sleep between regions
// unless they spin; they spin only while libgomp runs no more threads than there are CPUs. The server steps its
// models on their own threads, each of which gets its own OpenMP team, so on a 2-core machine the workers sleep,
// and waking them costs each region tens of microseconds: gemma-3-270m's int8 decode step took 16.3 ms on an
// engine's thread against 10.4 ms on the main thread (2-core AVX-512 EPYC), and 15.6 ms on the main thread with
// OMP_WAIT_POLICY=PASSIVE.
//
// So these loops run on a pool of our own, as llama.cpp's do: at::get_num_threads() - 1 workers that, after a loop,
// spin for a while (SPIN_US) on the next one's generation number, yielding the core to any other runnable thread
// as they spin, then sleep on a condition variable until a caller wakes them. A caller publishes its loop, runs part
// 0 itself and spins until the workers' parts are done. One caller holds the pool at a time: another thread's loop
// meanwhile (a second model's engine) runs on OpenMP, as before, and a loop inside a pool part runs serially.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OZWELL_PAUSE() _mm_pause()
#else
#define OZWELL_PAUSE() std::this_thread::yield()
#endif

#include "ops_cpu.h"

namespace ozwell {
namespace {

using Clock = std::chrono::steady_clock;

// How long an idle worker spins before it sleeps: it covers the gaps between a step's loops (the Python between
// layers, the sampling) and between steps, so a worker sleeps only when its model does. OZWELL_CPU_SPIN_US sets it.
int64_t spin_us() {
  static const int64_t us = [] {
    const char* env = std::getenv("OZWELL_CPU_SPIN_US");
    return env != nullptr ? std::max<int64_t>(0, std::atoll(env)) : int64_t{5000};
  }();
  return us;
}

thread_local bool in_pool = false;  // on a worker, or on a caller inside its own loop

struct Pool {
  std::mutex busy;  // held by the one caller whose loop runs
  std::atomic<uint64_t> generation{0};
  std::atomic<int64_t> pending{0};  // the workers that have not yet done their part of this loop (or seen it)
  std::atomic<int64_t> sleepers{0};
  std::mutex sleep_mutex;
  std::condition_variable wake;
  // the loop being run (written by the caller before it bumps `generation`)
  void (*call)(const void*, int64_t) = nullptr;
  const void* ctx = nullptr;
  int64_t parts = 0;
  std::exception_ptr error;
  std::mutex error_mutex;
  int64_t workers = 0;

  void worker(int64_t part, uint64_t seen) {
    in_pool = true;
    for (;;) {
      uint64_t now = generation.load(std::memory_order_acquire);
      if (now == seen) {
        const auto deadline = Clock::now() + std::chrono::microseconds(spin_us());
        for (int64_t spins = 1; (now = generation.load(std::memory_order_acquire)) == seen; ++spins) {
          OZWELL_PAUSE();
          if (spins % 64 != 0) continue;
          if (Clock::now() < deadline) {
            sched_yield();  // a runnable thread on this core (the event loop, OpenMP) goes first
            continue;
          }
          std::unique_lock<std::mutex> lock(sleep_mutex);
          sleepers.fetch_add(1);
          wake.wait(lock, [&] { return generation.load() != seen; });
          sleepers.fetch_sub(1);
        }
      }
      seen = now;
      if (part < parts) {
        try {
          call(ctx, part);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
        }
      }
      // every worker answers every loop, with a part or without: so none can read the next loop's fields as
      // this one's
      pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void grow(int64_t wanted) {  // under `busy`, before the loop's generation is published
    const uint64_t seen = generation.load();
    for (; workers < wanted; ++workers) std::thread([this, part = workers + 1, seen] { worker(part, seen); }).detach();
  }

  void run(int64_t n, void (*f)(const void*, int64_t), const void* c) {  // under `busy`
    grow(n - 1);
    call = f;
    ctx = c;
    parts = n;
    error = nullptr;
    pending.store(workers, std::memory_order_relaxed);
    generation.fetch_add(1);  // seq_cst, as the workers' sleepers count: one of the two sees the other
    if (sleepers.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex);
      wake.notify_all();
    }
    in_pool = true;
    try {
      f(c, 0);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
    in_pool = false;
    while (pending.load(std::memory_order_acquire) > 0) OZWELL_PAUSE();
    if (error) std::rethrow_exception(error);
  }
};

// Leaked on purpose: detached workers use it until the process ends. A forked child has none of the parent's
// workers, so it starts a pool of its own.
Pool* pool = new Pool();
[[maybe_unused]] const int forked = pthread_atfork(nullptr, nullptr, [] { pool = new Pool(); });

}  // namespace

void parallel_run(int64_t parts, void (*call)(const void*, int64_t), const void* ctx) {
  if (parts <= 1 || in_pool || at::in_parallel_region()) {
    for (int64_t part = 0; part < parts; ++part) call(ctx, part);
    return;
  }
  Pool* p = pool;
  std::unique_lock<std::mutex> lock(p->busy, std::try_to_lock);
  if (!lock.owns_lock()) {  // another thread's loop holds the pool: OpenMP's threads, as before
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) call(ctx, part);
    });
    return;
  }
  p->run(parts, call, ctx);
}

}  // namespace ozwell
