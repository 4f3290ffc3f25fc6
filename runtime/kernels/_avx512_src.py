"""C++ source of the AVX-512 weight-only GEMV/GEMM kernels (compiled lazily by cpu.py).

Dequantization happens in registers: int8/int4 codes are widened to float32 lanes and FMA'd with the float32
activations (or, in the a16/bf16 variants, multiplied as int16/bf16), so the weight streams from memory once at its
compressed size. Output rows are shared between the calling thread and ``nthreads - 1`` sleeping workers through
an atomic chunk counter (no fork-join barrier: see ``pool_run``). Only the bandwidth probe uses OpenMP; the library
links the ``libgomp.so.1`` torch has already loaded. Tiles: NB output rows x MB batch rows of accumulators, sized
to stay within the 32 zmm registers.
"""
from __future__ import annotations

from runtime.kernels._pool_src import POOL

SOURCE = r"""
""" + POOL + r"""
static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// ---------------------------------------------------------------- int8, per-channel scale
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k]
template <int NB, int MB>
static inline void int8_tile(const float* x, const int8_t* w, const float* scale, float* y,
                             int64_t N, int64_t K, int64_t n0, int64_t m0) {
  __m512 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MB];
    for (int j = 0; j < MB; ++j) xv[j] = _mm512_loadu_ps(x + (m0 + j) * K + k);
    for (int i = 0; i < NB; ++i) {
      __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
          _mm_loadu_si128((const __m128i*)(w + (n0 + i) * K + k))));
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  if (k < K) {  // masked tail: K need not be a multiple of 16
    __mmask16 mk = (__mmask16)((1u << (K - k)) - 1u);
    __m512 xv[MB];
    for (int j = 0; j < MB; ++j) xv[j] = _mm512_maskz_loadu_ps(mk, x + (m0 + j) * K + k);
    for (int i = 0; i < NB; ++i) {
      __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, w + (n0 + i) * K + k)));
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) y[(m0 + j) * N + n0 + i] = hsum(acc[i][j]) * scale[n0 + i];
}

template <int NB>
static inline void int8_rows(const float* x, const int8_t* w, const float* scale, float* y,
                             int64_t M, int64_t N, int64_t K, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) int8_tile<NB, 4>(x, w, scale, y, N, K, n0, m0);
  for (; m0 + 2 <= M; m0 += 2) int8_tile<NB, 2>(x, w, scale, y, N, K, n0, m0);
  for (; m0 < M; ++m0) int8_tile<NB, 1>(x, w, scale, y, N, K, n0, m0);
}

extern "C" void jal_int8_linear(const float* x, const int8_t* w, const float* scale, float* y,
                                int64_t M, int64_t N, int64_t K, int nthreads) {
  // Small batches: 8 rows per tile (8 independent FMA chains hide latency); larger: 4 rows x 4 batch.
  const int64_t NB = M < 4 ? 8 : 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      if (NB == 8) { for (int64_t m = 0; m < M; ++m) int8_tile<8, 1>(x, w, scale, y, N, K, n0, m); }
      else int8_rows<4>(x, w, scale, y, M, N, K, n0);
    } else {
      for (int64_t n = n0; n < N; ++n) int8_rows<1>(x, w, scale, y, M, N, K, n);
    }
  });
}

// ---------------------------------------------------------------- int4, group-wise scale + offset
// w[n, k] = q * s[n, g] + o[n, g]; packed: per 32-k block, byte j = q[j] | q[j + 16] << 4.
// y[m, n] = sum_g s[n, g] * dot_g(q, x) + o[n, g] * xsum[m, g]   (xsum: sum of x over group g)
template <int NB, int MB>
static inline void int4_tile(const float* x, const float* xsum, const uint8_t* w, const float* sc,
                             const float* off, float* y, int64_t N, int64_t Kp, int64_t G, int64_t gs,
                             int64_t n0, int64_t m0) {
  const int64_t half = Kp / 2;
  const __m512i mask = _mm512_set1_epi32(15);
  __m512 acc[NB][MB];
  float oacc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) { acc[i][j] = _mm512_setzero_ps(); oacc[i][j] = 0.f; }
  for (int64_t g = 0; g < G; ++g) {
    __m512 ag[NB][MB];
    for (int i = 0; i < NB; ++i)
      for (int j = 0; j < MB; ++j) ag[i][j] = _mm512_setzero_ps();
    for (int64_t kb = g * gs; kb < (g + 1) * gs; kb += 32) {
      __m512 xl[MB], xh[MB];
      for (int j = 0; j < MB; ++j) {
        xl[j] = _mm512_loadu_ps(x + (m0 + j) * Kp + kb);
        xh[j] = _mm512_loadu_ps(x + (m0 + j) * Kp + kb + 16);
      }
      for (int i = 0; i < NB; ++i) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(w + (n0 + i) * half + kb / 2)));
        __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, mask));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
        for (int j = 0; j < MB; ++j) {
          ag[i][j] = _mm512_fmadd_ps(lo, xl[j], ag[i][j]);
          ag[i][j] = _mm512_fmadd_ps(hi, xh[j], ag[i][j]);
        }
      }
    }
    for (int i = 0; i < NB; ++i) {
      const __m512 s = _mm512_set1_ps(sc[(n0 + i) * G + g]);
      const float o = off[(n0 + i) * G + g];
      for (int j = 0; j < MB; ++j) {
        acc[i][j] = _mm512_fmadd_ps(ag[i][j], s, acc[i][j]);
        oacc[i][j] += o * xsum[(m0 + j) * G + g];
      }
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) y[(m0 + j) * N + n0 + i] = hsum(acc[i][j]) + oacc[i][j];
}

template <int NB>
static inline void int4_rows(const float* x, const float* xsum, const uint8_t* w, const float* sc,
                             const float* off, float* y, int64_t M, int64_t N, int64_t Kp, int64_t G,
                             int64_t gs, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 2 <= M; m0 += 2) int4_tile<NB, 2>(x, xsum, w, sc, off, y, N, Kp, G, gs, n0, m0);
  for (; m0 < M; ++m0) int4_tile<NB, 1>(x, xsum, w, sc, off, y, N, Kp, G, gs, n0, m0);
}

extern "C" void jal_int4_linear(const float* x, const float* xsum, const uint8_t* w, const float* sc,
                                const float* off, float* y, int64_t M, int64_t N, int64_t Kp,
                                int64_t gs, int nthreads) {
  const int64_t G = Kp / gs;
  const int64_t NB = M < 2 ? 8 : 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      if (NB == 8) { for (int64_t m = 0; m < M; ++m) int4_tile<8, 1>(x, xsum, w, sc, off, y, N, Kp, G, gs, n0, m); }
      else int4_rows<4>(x, xsum, w, sc, off, y, M, N, Kp, G, gs, n0);
    } else {
      for (int64_t n = n0; n < N; ++n) int4_rows<1>(x, xsum, w, sc, off, y, M, N, Kp, G, gs, n);
    }
  });
}

// ---------------------------------------------------------------- int4 x bf16 activations (AVX512-BF16)
// Same weights as jal_int4_linear; activations rounded to bf16 and pre-permuted per 64-k chunk as
// [k 0..15, 32..47 | 16..31, 48..63] so that one 32-byte load of codes -> 32 words -> (lo, hi) nibbles lines up
// with two activation vectors. Codes become bf16 through a 16-entry vpermw table; vdpbf16ps does 32 MACs.
// Needs group size % 64 == 0.
#define JAL_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))
template <int NB, int MB>
JAL_BF16 static inline void int4bf_tile(const uint16_t* xp, const float* xsum, const uint8_t* w, const float* sc,
                                        const float* off, float* y, int64_t N, int64_t Kp, int64_t G, int64_t gs,
                                        int64_t n0, int64_t m0, __m512i table) {
  const int64_t half = Kp / 2;
  const __m512i mask = _mm512_set1_epi16(15);
  __m512 acc[NB][MB];
  float oacc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) { acc[i][j] = _mm512_setzero_ps(); oacc[i][j] = 0.f; }
  for (int64_t g = 0; g < G; ++g) {
    __m512 ag[NB][MB];
    for (int i = 0; i < NB; ++i)
      for (int j = 0; j < MB; ++j) ag[i][j] = _mm512_setzero_ps();
    for (int64_t kb = g * gs; kb < (g + 1) * gs; kb += 64) {
      __m512i xl[MB], xh[MB];
      for (int j = 0; j < MB; ++j) {
        xl[j] = _mm512_loadu_si512(xp + (m0 + j) * Kp + kb);
        xh[j] = _mm512_loadu_si512(xp + (m0 + j) * Kp + kb + 32);
      }
      for (int i = 0; i < NB; ++i) {
        __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(w + (n0 + i) * half + kb / 2)));
        __m512i lo = _mm512_permutexvar_epi16(_mm512_and_si512(b, mask), table);
        __m512i hi = _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 4), table);
        for (int j = 0; j < MB; ++j) {
          ag[i][j] = _mm512_dpbf16_ps(ag[i][j], (__m512bh)lo, (__m512bh)xl[j]);
          ag[i][j] = _mm512_dpbf16_ps(ag[i][j], (__m512bh)hi, (__m512bh)xh[j]);
        }
      }
    }
    for (int i = 0; i < NB; ++i) {
      const __m512 s = _mm512_set1_ps(sc[(n0 + i) * G + g]);
      // codes enter centred (q - 8): the bf16 rounding error of x then scales with |q - 8| <= 8, not q <= 15
      const float o = off[(n0 + i) * G + g] + 8.0f * sc[(n0 + i) * G + g];
      for (int j = 0; j < MB; ++j) {
        acc[i][j] = _mm512_fmadd_ps(ag[i][j], s, acc[i][j]);
        oacc[i][j] += o * xsum[(m0 + j) * G + g];
      }
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) y[(m0 + j) * N + n0 + i] = hsum(acc[i][j]) + oacc[i][j];
}

template <int NB>
JAL_BF16 static inline void int4bf_rows(const uint16_t* xp, const float* xsum, const uint8_t* w, const float* sc,
                                        const float* off, float* y, int64_t M, int64_t N, int64_t Kp, int64_t G,
                                        int64_t gs, int64_t n0, __m512i table) {
  int64_t m0 = 0;
  for (; m0 + 2 <= M; m0 += 2) int4bf_tile<NB, 2>(xp, xsum, w, sc, off, y, N, Kp, G, gs, n0, m0, table);
  for (; m0 < M; ++m0) int4bf_tile<NB, 1>(xp, xsum, w, sc, off, y, N, Kp, G, gs, n0, m0, table);
}

extern "C" JAL_BF16 void jal_int4_linear_bf16(const uint16_t* xp, const float* xsum, const uint8_t* w,
                                              const float* sc, const float* off, float* y, int64_t M, int64_t N,
                                              int64_t Kp, int64_t gs, int nthreads) {
  const int64_t G = Kp / gs;
  const int64_t NB = M < 2 ? 8 : 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  // bf16 bit patterns of q - 8 for q in 0..15 (exact): the top 16 bits of the float32 values.
  alignas(64) uint16_t tab[32];
  for (int v = 0; v < 32; ++v) {
    float f = (float)((v & 15) - 8);
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    tab[v] = (uint16_t)(u >> 16);
  }
  const __m512i table = _mm512_load_si512(tab);
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      if (NB == 8) { for (int64_t m = 0; m < M; ++m) int4bf_tile<8, 1>(xp, xsum, w, sc, off, y, N, Kp, G, gs, n0, m, table); }
      else int4bf_rows<4>(xp, xsum, w, sc, off, y, M, N, Kp, G, gs, n0, table);
    } else {
      for (int64_t n = n0; n < N; ++n) int4bf_rows<1>(xp, xsum, w, sc, off, y, M, N, Kp, G, gs, n, table);
    }
  });
}

// ---------------------------------------------------------------- 16-bit activations, integer dot (AVX512-VNNI)
// Activations quantized per row to int16 (x = sx * xq, |xq| <= 32767: relative error ~3e-5), weights widened to
// int16, vpdpwssd does 32 exact integer MACs per instruction. int32 accumulators are flushed to double before
// they can overflow (int8: every 64 steps of 32 k; int4: every group).
#define JAL_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
template <int NB, int MB>
JAL_VNNI static inline void int8a16_tile(const int16_t* xq, const int8_t* w, double* tot, int64_t N, int64_t K,
                                         int64_t Kx, int64_t n0, int64_t m0) {
  __m512i acc[NB][MB];
  double t[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) { acc[i][j] = _mm512_setzero_si512(); t[i][j] = 0.0; }
  int64_t step = 0;
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mk = K - k >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (K - k)) - 1u);
    __m512i xv[MB];
    for (int j = 0; j < MB; ++j) xv[j] = _mm512_loadu_si512(xq + (m0 + j) * Kx + k);
    for (int i = 0; i < NB; ++i) {
      __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mk, w + (n0 + i) * K + k));
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_dpwssd_epi32(acc[i][j], wv, xv[j]);
    }
    if (++step == 64) {  // 64 steps x 2 MACs x 127 x 32767 < 2^31
      step = 0;
      for (int i = 0; i < NB; ++i)
        for (int j = 0; j < MB; ++j) {
          t[i][j] += (double)_mm512_reduce_add_ps(_mm512_cvtepi32_ps(acc[i][j]));
          acc[i][j] = _mm512_setzero_si512();
        }
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j)
      tot[(m0 + j) * N + n0 + i] = t[i][j] + (double)_mm512_reduce_add_ps(_mm512_cvtepi32_ps(acc[i][j]));
}

template <int NB>
JAL_VNNI static inline void int8a16_rows(const int16_t* xq, const int8_t* w, double* tot, int64_t M, int64_t N,
                                         int64_t K, int64_t Kx, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 4 <= M; m0 += 4) int8a16_tile<NB, 4>(xq, w, tot, N, K, Kx, n0, m0);
  for (; m0 + 2 <= M; m0 += 2) int8a16_tile<NB, 2>(xq, w, tot, N, K, Kx, n0, m0);
  for (; m0 < M; ++m0) int8a16_tile<NB, 1>(xq, w, tot, N, K, Kx, n0, m0);
}

// y[m, n] = sx[m] * scale[n] * sum_k xq[m, k] * w[n, k]; xq rows are Kx = round_up(K, 32) long, zero padded.
extern "C" JAL_VNNI void jal_int8_linear_a16(const int16_t* xq, const float* sx, const int8_t* w,
                                             const float* scale, float* y, double* tot, int64_t M, int64_t N,
                                             int64_t K, int64_t Kx, int nthreads) {
  const int64_t NB = M < 4 ? 8 : 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      if (NB == 8) { for (int64_t m = 0; m < M; ++m) int8a16_tile<8, 1>(xq, w, tot, N, K, Kx, n0, m); }
      else int8a16_rows<4>(xq, w, tot, M, N, K, Kx, n0);
    } else {
      for (int64_t n = n0; n < N; ++n) int8a16_rows<1>(xq, w, tot, M, N, K, Kx, n);
    }
    const int64_t n1 = n0 + NB < N ? n0 + NB : N;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = n0; n < n1; ++n) y[m * N + n] = (float)(tot[m * N + n] * sx[m] * scale[n]);
  });
}

// int4 codes (block nibble layout) x int16 activations pre-permuted per 64-k chunk as for the bf16 kernel.
// y[m, n] = sx[m] * sum_g s[n, g] * dot_g(q, xq) + o[n, g] * xsum[m, g]; group size % 64 == 0.
template <int NB, int MB>
JAL_VNNI static inline void int4a16_tile(const int16_t* xp, const float* sx, const float* xsum, const uint8_t* w,
                                         const float* sc, const float* off, float* y, int64_t N, int64_t Kp,
                                         int64_t G, int64_t gs, int64_t n0, int64_t m0) {
  const int64_t half = Kp / 2;
  const __m512i mask = _mm512_set1_epi16(15);
  __m512 acc[NB][MB];
  float oacc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) { acc[i][j] = _mm512_setzero_ps(); oacc[i][j] = 0.f; }
  for (int64_t g = 0; g < G; ++g) {
    __m512i ag[NB][MB];
    for (int i = 0; i < NB; ++i)
      for (int j = 0; j < MB; ++j) ag[i][j] = _mm512_setzero_si512();
    for (int64_t kb = g * gs; kb < (g + 1) * gs; kb += 64) {
      __m512i xl[MB], xh[MB];
      for (int j = 0; j < MB; ++j) {
        xl[j] = _mm512_loadu_si512(xp + (m0 + j) * Kp + kb);
        xh[j] = _mm512_loadu_si512(xp + (m0 + j) * Kp + kb + 32);
      }
      for (int i = 0; i < NB; ++i) {
        __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(w + (n0 + i) * half + kb / 2)));
        __m512i lo = _mm512_and_si512(b, mask);
        __m512i hi = _mm512_srli_epi16(b, 4);
        for (int j = 0; j < MB; ++j) {
          ag[i][j] = _mm512_dpwssd_epi32(ag[i][j], lo, xl[j]);
          ag[i][j] = _mm512_dpwssd_epi32(ag[i][j], hi, xh[j]);
        }
      }
    }
    for (int i = 0; i < NB; ++i) {
      const __m512 s = _mm512_set1_ps(sc[(n0 + i) * G + g]);
      const float o = off[(n0 + i) * G + g];
      for (int j = 0; j < MB; ++j) {
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ag[i][j]), s, acc[i][j]);
        oacc[i][j] += o * xsum[(m0 + j) * G + g];
      }
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) y[(m0 + j) * N + n0 + i] = hsum(acc[i][j]) * sx[m0 + j] + oacc[i][j];
}

template <int NB>
JAL_VNNI static inline void int4a16_rows(const int16_t* xp, const float* sx, const float* xsum, const uint8_t* w,
                                         const float* sc, const float* off, float* y, int64_t M, int64_t N,
                                         int64_t Kp, int64_t G, int64_t gs, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + 2 <= M; m0 += 2) int4a16_tile<NB, 2>(xp, sx, xsum, w, sc, off, y, N, Kp, G, gs, n0, m0);
  for (; m0 < M; ++m0) int4a16_tile<NB, 1>(xp, sx, xsum, w, sc, off, y, N, Kp, G, gs, n0, m0);
}

extern "C" JAL_VNNI void jal_int4_linear_a16(const int16_t* xp, const float* sx, const float* xsum,
                                             const uint8_t* w, const float* sc, const float* off, float* y,
                                             int64_t M, int64_t N, int64_t Kp, int64_t gs, int nthreads) {
  const int64_t G = Kp / gs;
  const int64_t NB = M < 2 ? 8 : 4;
  const int64_t nblocks = (N + NB - 1) / NB;
  parallel_blocks(nblocks, nthreads, [&](int64_t b) {
    const int64_t n0 = b * NB;
    if (n0 + NB <= N) {
      if (NB == 8) { for (int64_t m = 0; m < M; ++m) int4a16_tile<8, 1>(xp, sx, xsum, w, sc, off, y, N, Kp, G, gs, n0, m); }
      else int4a16_rows<4>(xp, sx, xsum, w, sc, off, y, M, N, Kp, G, gs, n0);
    } else {
      for (int64_t n = n0; n < N; ++n) int4a16_rows<1>(xp, sx, xsum, w, sc, off, y, M, N, Kp, G, gs, n);
    }
  });
}

// ---------------------------------------------------------------- read-bandwidth probe (for the benchmark's bound)
// Streams `n` bytes (n % 256 == 0) once with 4 independent vector adds per thread; returns a checksum so the
// loads cannot be optimised away.
extern "C" int64_t jal_read_bytes(const uint8_t* p, int64_t n, int nthreads) {
  int64_t total = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; i += 4096) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t end = i + 4096 < n ? i + 4096 : n;
    for (int64_t j = i; j < end; j += 256) {
      a0 = _mm512_add_epi32(a0, _mm512_loadu_si512(p + j));
      a1 = _mm512_add_epi32(a1, _mm512_loadu_si512(p + j + 64));
      a2 = _mm512_add_epi32(a2, _mm512_loadu_si512(p + j + 128));
      a3 = _mm512_add_epi32(a3, _mm512_loadu_si512(p + j + 192));
    }
    total += _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
  }
  return total;
}

extern "C" int jal_abi_version(void) { return 1; }
"""
