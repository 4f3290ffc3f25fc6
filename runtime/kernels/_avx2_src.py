"""C++ source of the AVX2 weight-only int8 GEMV/GEMM (compiled lazily by ``cpu_avx2.py``).

For x86 CPUs without AVX-512 (AMD Zen 2/3, older Intel): int8 codes are widened to float32 lanes in registers
and FMA'd with the float32 activations, so the weight streams from memory once, at a quarter of its float32
bytes. Rows are shared out by the same barrier-free pool as the AVX-512 library (``_pool_src``). Tiles: 4 output
rows x 1 batch row, two 8-lane accumulators per row.

Software prefetch, one tile ahead: with K = 1024 a 4-row tile is exactly one 4 KiB page, and the hardware
prefetcher stops at page boundaries, so without it every tile starts with a full memory-latency stall. Measured on
a 2-core AMD EPYC (Zen 3) from DRAM at batch 1: 3.9-6.5 GB/s of int8 without, 8-10 GB/s with (torch's fp32 GEMV
reads 11-13 GB/s there): ``experiments/benchmarks/results/int8_gemv_cpu.md``.
"""
from __future__ import annotations

from runtime.kernels._pool_src import POOL

SOURCE = r"""
""" + POOL + r"""
static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k]; NB output rows of one batch row m. PF: prefetch the next tile's
// rows (the NB rows after these: the weight is row-major, so the next tile is the next NB * K bytes).
template <int NB, bool PF>
static inline void int8_tile_avx2(const float* x, const int8_t* w, const float* scale, float* y,
                                  int64_t N, int64_t K, int64_t n0, int64_t m) {
  __m256 acc[NB], acc2[NB];
  for (int i = 0; i < NB; ++i) acc[i] = _mm256_setzero_ps(), acc2[i] = _mm256_setzero_ps();
  const float* xr = x + m * K;
  const int8_t* wt = w + n0 * K;  // (NB, K) rows of this tile
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 xa = _mm256_loadu_ps(xr + k), xb = _mm256_loadu_ps(xr + k + 8);
    for (int i = 0; i < NB; ++i) {
      // a prefetch never faults, so the hint past the last row is harmless
      if (PF && (k & 63) == 0) _mm_prefetch((const char*)(wt + (i + NB) * K + k), _MM_HINT_T0);
      const __m128i q = _mm_loadu_si128((const __m128i*)(wt + i * K + k));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), xa, acc[i]);
      acc2[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), xb, acc2[i]);
    }
  }
  for (int i = 0; i < NB; ++i) {
    float tail = 0.f;  // K need not be a multiple of 16
    for (int64_t kk = k; kk < K; ++kk) tail += xr[kk] * (float)wt[i * K + kk];
    y[m * N + n0 + i] = (hsum8(_mm256_add_ps(acc[i], acc2[i])) + tail) * scale[n0 + i];
  }
}

extern "C" void jal_avx2_int8_linear(const float* x, const int8_t* w, const float* scale, float* y,
                                     int64_t M, int64_t N, int64_t K, int nthreads) {
  const int64_t NB = 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      // the first batch row streams the tile from memory (prefetching the next); the others re-read it from L1
      int8_tile_avx2<4, true>(x, w, scale, y, N, K, n0, 0);
      for (int64_t m = 1; m < M; ++m) int8_tile_avx2<4, false>(x, w, scale, y, N, K, n0, m);
    } else {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < N; ++n) int8_tile_avx2<1, false>(x, w, scale, y, N, K, n, m);
    }
  });
}

extern "C" int jal_avx2_abi_version(void) { return 2; }
"""
