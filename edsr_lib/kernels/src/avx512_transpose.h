// AVX-512 register transposes for the Winograd packing; compiled only where the compiler targets AVX-512
// (-march=native on such a CPU). Other CPUs take the portable loops in winograd.h.
// Part of conv.cpp's single translation unit: include it only from there.
#ifndef EDSR_KERNELS_AVX512_TRANSPOSE_H
#define EDSR_KERNELS_AVX512_TRANSPOSE_H
#if defined(__AVX512F__)
// GCC 12's own intrinsics header trips -Wmaybe-uninitialized (its _mm512_undefined_ps; fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace {

// r[l][q] -> r[q][l] for a 16 x 16 block of floats in registers (unpack pairs, then pairs of pairs, then 128-bit
// lanes twice), instead of 256 scalar moves: packing NCHW rows into NHWC and writing 4x4 output tiles back to NCHW
// were each a large share of a 64-channel Winograd convolution with scalar loops (docs/benchmarks.md).
inline void Transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + m], lane k: column 4k + m of rows g..g+3
    const __m512d t0 = _mm512_castps_pd(t[g]), t1 = _mm512_castps_pd(t[g + 1]), t2 = _mm512_castps_pd(t[g + 2]),
                  t3 = _mm512_castps_pd(t[g + 3]);
    u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v2 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);
    const __m512 w = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88),
                 w2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
    r[m] = _mm512_shuffle_f32x4(v, w, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(v2, w2, 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(v, w, 0xdd);
    r[12 + m] = _mm512_shuffle_f32x4(v2, w2, 0xdd);
  }
}

}  // namespace

#endif  // __AVX512F__
#endif  // EDSR_KERNELS_AVX512_TRANSPOSE_H
