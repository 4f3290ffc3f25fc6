"""C++ source of the AVX2 weight-only int8 and int4 GEMV/GEMM (compiled lazily by ``cpu_avx2.py``).

For x86 CPUs without AVX-512 (AMD Zen 2/3, older Intel): int8 codes (int4 nibbles) are widened to float32 lanes in
registers and FMA'd with the float32 activations, so the weight streams from memory once, at a quarter (an eighth)
of its float32 bytes; int4 applies its group scale to a group's vector sum and its offsets through the group sums
of x. Rows are shared out by the same barrier-free pool as the AVX-512 library (``_pool_src``). Tiles: 4 output
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
#include <vector>

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

// ---------------------------------------------------------------- int4, group-wise scale + offset
// w[n, k] = q * s[n, g] + o[n, g]; packed per 32-k block: byte j = q[j] | q[j + 16] << 4 (formats.py).
// y[m, n] = sum_g s[n, g] * dot_g(q, x) + o[n, g] * xsum[m, g]   (xsum: sum of x over group g)
template <int NB, bool PF>
static inline void int4_tile_avx2(const float* x, const float* xsum, const uint8_t* w, const float* sc,
                                  const float* off, float* y, int64_t N, int64_t Kp, int64_t G, int64_t gs,
                                  int64_t n0, int64_t m) {
  const int64_t half = Kp / 2;
  const __m256i mask = _mm256_set1_epi32(15);
  const float* xr = x + m * Kp;
  const uint8_t* wt = w + n0 * half;  // (NB, Kp / 2) bytes of this tile
  __m256 acc[NB];
  float oacc[NB];
  for (int i = 0; i < NB; ++i) acc[i] = _mm256_setzero_ps(), oacc[i] = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    __m256 ag[NB];
    for (int i = 0; i < NB; ++i) ag[i] = _mm256_setzero_ps();
    for (int64_t kb = g * gs; kb < (g + 1) * gs; kb += 32) {
      const __m256 x0 = _mm256_loadu_ps(xr + kb), x1 = _mm256_loadu_ps(xr + kb + 8);
      const __m256 x2 = _mm256_loadu_ps(xr + kb + 16), x3 = _mm256_loadu_ps(xr + kb + 24);
      for (int i = 0; i < NB; ++i) {
        if (PF && (kb & 127) == 0) _mm_prefetch((const char*)(wt + (i + NB) * half + kb / 2), _MM_HINT_T0);
        const __m128i b = _mm_loadu_si128((const __m128i*)(wt + i * half + kb / 2));
        const __m256i b0 = _mm256_cvtepu8_epi32(b), b1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
        ag[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, mask)), x0, ag[i]);   // k 0..7
        ag[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, mask)), x1, ag[i]);   // k 8..15
        ag[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), x2, ag[i]);     // k 16..23
        ag[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), x3, ag[i]);     // k 24..31
      }
    }
    for (int i = 0; i < NB; ++i) {
      acc[i] = _mm256_fmadd_ps(ag[i], _mm256_set1_ps(sc[(n0 + i) * G + g]), acc[i]);
      oacc[i] += off[(n0 + i) * G + g] * xsum[m * G + g];
    }
  }
  for (int i = 0; i < NB; ++i) y[m * N + n0 + i] = hsum8(acc[i]) + oacc[i];
}

// x (M, Kp) float32, zero-padded past the real K by the caller; xsum (M, G) is computed here.
extern "C" void jal_avx2_int4_linear(const float* x, const uint8_t* w, const float* sc, const float* off, float* y,
                                     int64_t M, int64_t N, int64_t Kp, int64_t gs, int nthreads) {
  const int64_t G = Kp / gs;
  std::vector<float> xsum_buf(M * G);
  float* xsum = xsum_buf.data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t k = g * gs; k < (g + 1) * gs; ++k) s += x[m * Kp + k];
      xsum[m * G + g] = s;
    }
  const int64_t NB = 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      int4_tile_avx2<4, true>(x, xsum, w, sc, off, y, N, Kp, G, gs, n0, 0);
      for (int64_t m = 1; m < M; ++m) int4_tile_avx2<4, false>(x, xsum, w, sc, off, y, N, Kp, G, gs, n0, m);
    } else {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < N; ++n) int4_tile_avx2<1, false>(x, xsum, w, sc, off, y, N, Kp, G, gs, n, m);
    }
  });
}

extern "C" int jal_avx2_abi_version(void) { return 3; }
"""
