// Per-plane CPU kernels of the fused norm block. Included several times by
// norm_block_cpu.cpp, once per instruction set (MTT_NB_ISA names the namespace; the
// includer sets the GCC target), so no include guard.
//
// Every loop is contiguous and branch-free so the compiler vectorises it; plane sums are
// `omp simd` reductions (vector partial sums in a fixed order for a given build: the result
// does not depend on the thread count). 2x2 pooling goes through a row scratch: the two
// input rows are combined contiguously, then adjacent pairs are added.
namespace MTT_NB_ISA {

// gz over the whole plane: [z > 0] * gy / 4 inside the pooled windows, 0 elsewhere;
// `up` (W) holds the current gy row spread over its windows.
template <typename T>
void fill_gz(const T* gy, const T* x, T* gz, T* up, int64_t H, int64_t W, T w, T b, T mean,
             T r) {
  const int64_t Ho = H / 2, Wo = W / 2;
  for (int64_t j = 2 * Wo; j < W; ++j) up[j] = T(0);
  for (int64_t h = 0; h < 2 * Ho; ++h) {
    if (h % 2 == 0) {
      const T* g = gy + (h / 2) * Wo;
      for (int64_t j = 0; j < Wo; ++j) up[2 * j] = up[2 * j + 1] = T(0.25) * g[j];
    }
    const T* xr = x + h * W;
    T* o = gz + h * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) o[j] = nb::mask<T>((xr[j] - mean) * r, w, b) * up[j];
  }
  if (H > 2 * Ho) std::fill(gz + 2 * Ho * W, gz + H * W, T(0));
}

// out[j] = (t[2j] + t[2j+1]) / 4 over one output row, t = the two input rows combined.
template <typename T>
inline void pool_pairs(const T* t, T* out, int64_t Wo) {
#pragma omp simd
  for (int64_t j = 0; j < Wo; ++j) out[j] = T(0.25) * (t[2 * j] + t[2 * j + 1]);
}

// row: scratch of W.
template <typename T>
void forward_plane(const T* x, T* y, T* row, int64_t H, int64_t W, T w, T b, double eps,
                   T* mean_out, T* rstd_out) {
  const int64_t M = H * W, Ho = H / 2, Wo = W / 2;
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < M; ++i) s += x[i];
  const T mean = s / static_cast<T>(M);
  T v = T(0);
#pragma omp simd reduction(+ : v)
  for (int64_t i = 0; i < M; ++i) {
    const T d = x[i] - mean;
    v += d * d;
  }
  const T r = nb::rstd_of<T>(v / static_cast<T>(M), static_cast<T>(eps));
  *mean_out = mean;
  *rstd_out = r;
  for (int64_t i = 0; i < Ho; ++i) {
    const T* r0 = x + 2 * i * W;
    const T* r1 = r0 + W;
#pragma omp simd
    for (int64_t j = 0; j < 2 * Wo; ++j)
      row[j] = nb::relu<T>(w * ((r0[j] - mean) * r) + b) + nb::relu<T>(w * ((r1[j] - mean) * r) + b);
    pool_pairs<T>(row, y + i * Wo, Wo);
  }
}

// gz: scratch of M + W.
template <typename T>
void backward_plane(const T* gy, const T* x, T* gx, T* gz, int64_t H, int64_t W, T w, T b,
                    T mean, T r, T* s1_out, T* s2_out) {
  const int64_t M = H * W;
  fill_gz<T>(gy, x, gz, gz + M, H, W, w, b, mean, r);
  T s1 = T(0), s2 = T(0);
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < M; ++i) {
    s1 += gz[i];
    s2 += gz[i] * ((x[i] - mean) * r);
  }
  const nb::BwdCoef<T> k = nb::bwd_coef<T>(w, r, s1, s2, T(1) / T(M));
#pragma omp simd
  for (int64_t i = 0; i < M; ++i) gx[i] = nb::bwd_gx<T>(k, gz[i], (x[i] - mean) * r);
  *s1_out = s1;
  *s2_out = s2;
}

// gz: scratch of M + W.
template <typename T>
void double_backward_plane(const T* ggx, T ggw, T ggb, const T* gy, const T* x, T* ggy_out,
                           T* gx_out, T* gz, int64_t H, int64_t W, T w, T b, T mean, T r,
                           T* gw_part) {
  const int64_t M = H * W, Ho = H / 2, Wo = W / 2;
  fill_gz<T>(gy, x, gz, gz + M, H, W, w, b, mean, r);
  T s1 = T(0), s2 = T(0), t1 = T(0), t2 = T(0), u = T(0);
  if (ggx) {
#pragma omp simd reduction(+ : s1, s2, t1, t2, u)
    for (int64_t i = 0; i < M; ++i) {
      const T xh = (x[i] - mean) * r;
      s1 += gz[i];
      s2 += gz[i] * xh;
      t1 += ggx[i];
      t2 += ggx[i] * xh;
      u += ggx[i] * gz[i];
    }
  } else {
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t i = 0; i < M; ++i) {
      s1 += gz[i];
      s2 += gz[i] * ((x[i] - mean) * r);
    }
  }
  const nb::DbwdCoef<T> c = nb::dbwd_coef<T>(w, r, ggw, ggb, s1, s2, t1, t2, u, T(1) / T(M));
  // g_x everywhere; then gz's storage takes [z > 0] * d_gz for the pooling below
  if (ggx) {
#pragma omp simd
    for (int64_t i = 0; i < M; ++i) {
      const T xh = (x[i] - mean) * r;
      gx_out[i] = nb::dbwd_gx<T>(c, gz[i], ggx[i], xh);
      gz[i] = nb::mask<T>(xh, w, b) * nb::dbwd_dgz<T>(c, ggx[i], xh);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < M; ++i) {
      const T xh = (x[i] - mean) * r;
      gx_out[i] = nb::dbwd_gx<T>(c, gz[i], T(0), xh);
      gz[i] = nb::mask<T>(xh, w, b) * nb::dbwd_dgz<T>(c, T(0), xh);
    }
  }
  T* row = gz + M;
  for (int64_t i = 0; i < Ho; ++i) {
    const T* d0 = gz + 2 * i * W;
    const T* d1 = d0 + W;
#pragma omp simd
    for (int64_t j = 0; j < 2 * Wo; ++j) row[j] = d0[j] + d1[j];
    pool_pairs<T>(row, ggy_out + i * Wo, Wo);
  }
  *gw_part = c.gw_part;
}

}  // namespace MTT_NB_ISA
