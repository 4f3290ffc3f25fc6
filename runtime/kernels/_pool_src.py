"""C++ source shared by the CPU kernel libraries: headers and the barrier-free row pool (see ``pool_run``).

Output rows are shared between the calling thread and ``nthreads - 1`` sleeping workers through an atomic chunk
counter (no fork-join barrier): on a machine shared with other jobs one preempted thread would otherwise stall
every call for a whole scheduler slice.
"""
from __future__ import annotations

POOL = r"""
#include <immintrin.h>
#include <stdint.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

// ---------------------------------------------------------------- work sharing without a barrier
// OpenMP's fork-join barrier makes every call wait for every thread: on a machine shared with other jobs one
// preempted thread stalls the call for a whole scheduler slice (seen: calls of ~1 ms taking 8 ms). Here the
// calling thread and sleeping workers claim small chunks of row blocks from one atomic counter; the caller
// waits only for chunks already claimed, so a worker that is not scheduled in time simply gets no work.
namespace {
typedef void (*range_fn)(void*, int64_t, int64_t);

struct Pool {
  std::mutex m;
  std::condition_variable cv;
  int nworkers = 0;
  uint64_t gen = 0;
  range_fn fn = nullptr;
  void* ctx = nullptr;
  int64_t nchunks = 0, nblocks = 0, chunk = 1;
  std::atomic<uint64_t> next{0};  // (generation << 32) | next chunk index
  std::atomic<int64_t> done{0};
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: detached workers may outlive static destructors
  return *p;
}

void drain(Pool& p, uint32_t g, range_fn fn, void* ctx, int64_t nchunks, int64_t nblocks, int64_t chunk) {
  for (;;) {
    uint64_t v = p.next.load(std::memory_order_acquire);
    for (;;) {
      if ((uint32_t)(v >> 32) != g || (int64_t)(v & 0xffffffffu) >= nchunks) return;
      if (p.next.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) break;
    }
    const int64_t lo = (int64_t)(v & 0xffffffffu) * chunk;
    const int64_t hi = lo + chunk < nblocks ? lo + chunk : nblocks;
    fn(ctx, lo, hi);
    p.done.fetch_add(1, std::memory_order_acq_rel);
  }
}

void worker_main(Pool* p) {
  uint64_t seen = 0;
  for (;;) {
    range_fn fn;
    void* ctx;
    int64_t nchunks, nblocks, chunk;
    {
      std::unique_lock<std::mutex> lk(p->m);
      p->cv.wait(lk, [&] { return p->gen != seen; });
      seen = p->gen;
      fn = p->fn, ctx = p->ctx, nchunks = p->nchunks, nblocks = p->nblocks, chunk = p->chunk;
    }
    drain(*p, (uint32_t)seen, fn, ctx, nchunks, nblocks, chunk);
  }
}

std::mutex run_mutex;  // one call at a time (ctypes releases the GIL, so Python threads may race here)

void pool_run(int64_t nblocks, int nthreads, range_fn fn, void* ctx) {
  if (nthreads <= 1 || nblocks < 2) { fn(ctx, 0, nblocks); return; }
  std::lock_guard<std::mutex> run_lock(run_mutex);
  Pool& p = pool();
  int64_t chunk = nblocks / ((int64_t)nthreads * 32);
  if (chunk < 1) chunk = 1;
  const int64_t nchunks = (nblocks + chunk - 1) / chunk;
  uint32_t g;
  {
    std::lock_guard<std::mutex> lk(p.m);
    while (p.nworkers < nthreads - 1) { std::thread(worker_main, &p).detach(); ++p.nworkers; }
    g = (uint32_t)++p.gen;
    p.fn = fn, p.ctx = ctx, p.nchunks = nchunks, p.nblocks = nblocks, p.chunk = chunk;
    p.done.store(0, std::memory_order_relaxed);
    p.next.store((uint64_t)g << 32, std::memory_order_release);
  }
  p.cv.notify_all();
  drain(p, g, fn, ctx, nchunks, nblocks, chunk);
  for (int spins = 0; p.done.load(std::memory_order_acquire) < nchunks; ++spins) {
    if (spins < 4000) _mm_pause(); else std::this_thread::yield();
  }
}

template <class F>
void parallel_blocks(int64_t nblocks, int nthreads, F f) {
  pool_run(nblocks, nthreads, [](void* c, int64_t lo, int64_t hi) {
    F& fn = *static_cast<F*>(c);
    for (int64_t b = lo; b < hi; ++b) fn(b);
  }, &f);
}
}  // namespace

"""
