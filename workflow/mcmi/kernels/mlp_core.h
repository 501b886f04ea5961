// Torch-free building blocks of mlp_stack.cpp: a register-blocked row-combination kernel (every
// matrix product of the MLP's forward and backward pass is one call), a transpose, and the optimizers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mlp {

// A vector of 64 bytes (16 floats / 8 doubles); GCC and Clang lower it to the widest registers there are.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int64_t lanes = 64 / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline void store(T* p, typename Vec<T>::type v) { std::memcpy(p, &v, sizeof v); }

// C[r, 0:n] = init[0:n] (or 0) + sum_j A(r, j) * rows[j, 0:n] for r < R, where A(r, j) = a[r * a_r + j * a_j]
// and rows[j, :] = rows + j * ld_rows. C rows are ld_c apart. Tiles of 4 rows x 4 vectors stay in registers.
template <typename T>
void combine_rows(T* c, int64_t ld_c, int64_t R, int64_t n, const T* a, int64_t a_r, int64_t a_j, int64_t J,
                  const T* rows, int64_t ld_rows, const T* init) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::lanes, W = 4 * L;
  int64_t col = 0;
  for (; col + W <= n; col += W) {
    V i0 = {}, i1 = {}, i2 = {}, i3 = {};
    if (init) { i0 = load(init + col); i1 = load(init + col + L); i2 = load(init + col + 2 * L); i3 = load(init + col + 3 * L); }
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      V c00 = i0, c01 = i1, c02 = i2, c03 = i3, c10 = i0, c11 = i1, c12 = i2, c13 = i3;
      V c20 = i0, c21 = i1, c22 = i2, c23 = i3, c30 = i0, c31 = i1, c32 = i2, c33 = i3;
      const T* ar = a + r * a_r;
      for (int64_t j = 0; j < J; ++j) {
        const T* row = rows + j * ld_rows + col;
        const V w0 = load(row), w1 = load(row + L), w2 = load(row + 2 * L), w3 = load(row + 3 * L);
        const T s0 = ar[j * a_j], s1 = ar[a_r + j * a_j], s2 = ar[2 * a_r + j * a_j], s3 = ar[3 * a_r + j * a_j];
        c00 += s0 * w0; c01 += s0 * w1; c02 += s0 * w2; c03 += s0 * w3;
        c10 += s1 * w0; c11 += s1 * w1; c12 += s1 * w2; c13 += s1 * w3;
        c20 += s2 * w0; c21 += s2 * w1; c22 += s2 * w2; c23 += s2 * w3;
        c30 += s3 * w0; c31 += s3 * w1; c32 += s3 * w2; c33 += s3 * w3;
      }
      T* cr = c + r * ld_c + col;
      store(cr, c00); store(cr + L, c01); store(cr + 2 * L, c02); store(cr + 3 * L, c03);
      cr += ld_c; store(cr, c10); store(cr + L, c11); store(cr + 2 * L, c12); store(cr + 3 * L, c13);
      cr += ld_c; store(cr, c20); store(cr + L, c21); store(cr + 2 * L, c22); store(cr + 3 * L, c23);
      cr += ld_c; store(cr, c30); store(cr + L, c31); store(cr + 2 * L, c32); store(cr + 3 * L, c33);
    }
    for (; r < R; ++r) {
      V c0 = i0, c1 = i1, c2 = i2, c3 = i3;
      const T* ar = a + r * a_r;
      for (int64_t j = 0; j < J; ++j) {
        const T* row = rows + j * ld_rows + col;
        const T s = ar[j * a_j];
        c0 += s * load(row); c1 += s * load(row + L); c2 += s * load(row + 2 * L); c3 += s * load(row + 3 * L);
      }
      T* cr = c + r * ld_c + col;
      store(cr, c0); store(cr + L, c1); store(cr + 2 * L, c2); store(cr + 3 * L, c3);
    }
  }
  for (; col + L <= n; col += L) {  // one vector wide, four rows at a time
    const V i0 = init ? load(init + col) : V{};
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      V c0 = i0, c1 = i0, c2 = i0, c3 = i0;
      const T* ar = a + r * a_r;
      for (int64_t j = 0; j < J; ++j) {
        const V w = load(rows + j * ld_rows + col);
        c0 += ar[j * a_j] * w; c1 += ar[a_r + j * a_j] * w; c2 += ar[2 * a_r + j * a_j] * w; c3 += ar[3 * a_r + j * a_j] * w;
      }
      store(c + r * ld_c + col, c0); store(c + (r + 1) * ld_c + col, c1);
      store(c + (r + 2) * ld_c + col, c2); store(c + (r + 3) * ld_c + col, c3);
    }
    for (; r < R; ++r) {
      V c0 = i0;
      const T* ar = a + r * a_r;
      for (int64_t j = 0; j < J; ++j) c0 += ar[j * a_j] * load(rows + j * ld_rows + col);
      store(c + r * ld_c + col, c0);
    }
  }
  for (; col < n; ++col)  // scalar tail
    for (int64_t r = 0; r < R; ++r) {
      T s = init ? init[col] : T(0);
      const T* ar = a + r * a_r;
      for (int64_t j = 0; j < J; ++j) s += ar[j * a_j] * rows[j * ld_rows + col];
      c[r * ld_c + col] = s;
    }
}

// dst (cols, rows) = src (rows, cols)^T.
template <typename T>
void transpose(const T* __restrict__ src, int64_t rows, int64_t cols, T* __restrict__ dst) {
  constexpr int64_t tile = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += tile)
    for (int64_t c0 = 0; c0 < cols; c0 += tile) {
      const int64_t r1 = std::min(rows, r0 + tile), c1 = std::min(cols, c0 + tile);
#if defined(__AVX2__)
      if constexpr (sizeof(T) == 4) {
        if (r1 - r0 == 8 && c1 - c0 == 8) {  // 8 x 8 floats in registers
          __m256 v[8], t[8];
          for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(reinterpret_cast<const float*>(src + (r0 + k) * cols + c0));
          for (int k = 0; k < 4; ++k) {
            t[2 * k] = _mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]);
          }
          v[0] = _mm256_shuffle_ps(t[0], t[2], 0x44); v[1] = _mm256_shuffle_ps(t[0], t[2], 0xEE);
          v[2] = _mm256_shuffle_ps(t[1], t[3], 0x44); v[3] = _mm256_shuffle_ps(t[1], t[3], 0xEE);
          v[4] = _mm256_shuffle_ps(t[4], t[6], 0x44); v[5] = _mm256_shuffle_ps(t[4], t[6], 0xEE);
          v[6] = _mm256_shuffle_ps(t[5], t[7], 0x44); v[7] = _mm256_shuffle_ps(t[5], t[7], 0xEE);
          const __m256 out[8] = {
              _mm256_permute2f128_ps(v[0], v[4], 0x20), _mm256_permute2f128_ps(v[1], v[5], 0x20),
              _mm256_permute2f128_ps(v[2], v[6], 0x20), _mm256_permute2f128_ps(v[3], v[7], 0x20),
              _mm256_permute2f128_ps(v[0], v[4], 0x31), _mm256_permute2f128_ps(v[1], v[5], 0x31),
              _mm256_permute2f128_ps(v[2], v[6], 0x31), _mm256_permute2f128_ps(v[3], v[7], 0x31)};
          for (int k = 0; k < 8; ++k) _mm256_storeu_ps(reinterpret_cast<float*>(dst + (c0 + k) * rows + r0), out[k]);
          continue;
        }
      }
#endif
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
    }
}

struct Optim {
  bool adam;
  double lr, beta1, beta2, eps, momentum;
};

// torch.optim.Adam (no weight decay/amsgrad) or SGD (momentum, no dampening/nesterov) on one tensor;
// ``step`` counts from 1.
template <typename T>
void update(const Optim& opt, int64_t step, T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s1,
            T* __restrict__ s2, int64_t n) {
  if (opt.adam) {
    const T keep1 = T(1 - opt.beta1), beta2 = T(opt.beta2), keep2 = T(1 - opt.beta2), eps = T(opt.eps);
    const double bc1 = 1 - std::pow(opt.beta1, double(step)), bc2 = 1 - std::pow(opt.beta2, double(step));
    const T step_size = T(opt.lr / bc1), inv_bc2_sqrt = T(1 / std::sqrt(bc2));
    for (int64_t i = 0; i < n; ++i) {
      const T gi = g[i];
      const T m = s1[i] + keep1 * (gi - s1[i]);
      const T v = s2[i] * beta2 + keep2 * gi * gi;
      s1[i] = m;
      s2[i] = v;
      p[i] -= step_size * (m / (std::sqrt(v) * inv_bc2_sqrt + eps));
    }
  } else if (opt.momentum != 0) {
    const T mom = T(opt.momentum), lr = T(opt.lr);
    if (step == 1) for (int64_t i = 0; i < n; ++i) s1[i] = g[i];
    else for (int64_t i = 0; i < n; ++i) s1[i] = s1[i] * mom + g[i];
    for (int64_t i = 0; i < n; ++i) p[i] -= lr * s1[i];
  } else {
    const T lr = T(opt.lr);
    for (int64_t i = 0; i < n; ++i) p[i] -= lr * g[i];
  }
}

}  // namespace mlp
