// Per-plane CPU kernels of the fused norm block. Included several times by
// norm_block_cpu.cpp, once per instruction set (MTT_NB_ISA names the namespace; the
// includer sets the GCC target), so no include guard.
namespace MTT_NB_ISA {

constexpr int kLanes = 16;


// Sums of K per-pixel quantities f(i, out[K]) over i in [0, n).
template <typename T, int K, typename F>
void lane_sums(int64_t n, F f, double* out) {
  T acc[K][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      T v[K];
      f(i + l, v);
      for (int k = 0; k < K; ++k) acc[k][l] += v[k];
    }
  }
  for (int k = 0; k < K; ++k) out[k] = 0;
  for (; i < n; ++i) {
    T v[K];
    f(i, v);
    for (int k = 0; k < K; ++k) out[k] += v[k];
  }
  for (int k = 0; k < K; ++k)
    for (int l = 0; l < kLanes; ++l) out[k] += acc[k][l];
}

// gz over the whole plane: [z > 0] * gy / 4 inside the pooled windows, 0 elsewhere.
// Branch-free and contiguous in j (the mask is random: a branch would mispredict half the
// time); `up` (W) holds the current gy row spread over its windows.
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
    for (int64_t j = 0; j < W; ++j) o[j] = nb::mask<T>((xr[j] - mean) * r, w, b) * up[j];
  }
  if (H > 2 * Ho) std::fill(gz + 2 * Ho * W, gz + H * W, T(0));
}

template <typename T>
void forward_plane(const T* x, T* y, int64_t H, int64_t W, T w, T b, double eps, T* mean_out,
                   T* rstd_out) {
  const int64_t M = H * W, Ho = H / 2, Wo = W / 2;
  double s;
  lane_sums<T, 1>(M, [&](int64_t i, T* v) { v[0] = x[i]; }, &s);
  const T mean = static_cast<T>(s / M);
  lane_sums<T, 1>(M, [&](int64_t i, T* v) { const T d = x[i] - mean; v[0] = d * d; }, &s);
  const T r = static_cast<T>(1.0 / std::sqrt(s / M + eps));
  *mean_out = mean;
  *rstd_out = r;
  for (int64_t i = 0; i < Ho; ++i) {
    const T* r0 = x + 2 * i * W;
    const T* r1 = r0 + W;
    T* o = y + i * Wo;
    for (int64_t j = 0; j < Wo; ++j) {
      const T z00 = w * ((r0[2 * j] - mean) * r) + b, z01 = w * ((r0[2 * j + 1] - mean) * r) + b;
      const T z10 = w * ((r1[2 * j] - mean) * r) + b, z11 = w * ((r1[2 * j + 1] - mean) * r) + b;
      o[j] = T(0.25) * (nb::relu(z00) + nb::relu(z01) + nb::relu(z10) + nb::relu(z11));
    }
  }
}

template <typename T>
void backward_plane(const T* gy, const T* x, T* gx, T* gz, int64_t H, int64_t W, T w, T b,
                    T mean, T r, T* s1_out, T* s2_out) {
  const int64_t M = H * W;
  fill_gz<T>(gy, x, gz, gz + M, H, W, w, b, mean, r);
  double s[2];
  lane_sums<T, 2>(M, [&](int64_t i, T* v) {
    v[0] = gz[i];
    v[1] = gz[i] * ((x[i] - mean) * r);
  }, s);
  const nb::BwdCoef<T> k = nb::bwd_coef<T>(w, r, T(s[0]), T(s[1]), T(1) / T(M));
  for (int64_t i = 0; i < M; ++i) gx[i] = nb::bwd_gx<T>(k, gz[i], (x[i] - mean) * r);
  *s1_out = T(s[0]);
  *s2_out = T(s[1]);
}

template <typename T>
void double_backward_plane(const T* ggx, T ggw, T ggb, const T* gy, const T* x, T* ggy_out,
                           T* gx_out, T* gz, int64_t H, int64_t W, T w, T b, T mean, T r,
                           T* gw_part) {
  const int64_t M = H * W, Ho = H / 2, Wo = W / 2;
  fill_gz<T>(gy, x, gz, gz + M, H, W, w, b, mean, r);
  double s[5] = {0, 0, 0, 0, 0};  // s1, s2, t1, t2, u
  if (ggx) {
    lane_sums<T, 5>(M, [&](int64_t i, T* v) {
      const T xh = (x[i] - mean) * r;
      v[0] = gz[i];
      v[1] = gz[i] * xh;
      v[2] = ggx[i];
      v[3] = ggx[i] * xh;
      v[4] = ggx[i] * gz[i];
    }, s);
  } else {
    lane_sums<T, 2>(M, [&](int64_t i, T* v) {
      v[0] = gz[i];
      v[1] = gz[i] * ((x[i] - mean) * r);
    }, s);
  }
  const nb::DbwdCoef<T> c = nb::dbwd_coef<T>(w, r, ggw, ggb, T(s[0]), T(s[1]), T(s[2]),
                                             T(s[3]), T(s[4]), T(1) / T(M));
  // g_x everywhere; then gz's storage takes [z > 0] * d_gz for the pooling below
  if (ggx) {
    for (int64_t i = 0; i < M; ++i) {
      const T xh = (x[i] - mean) * r;
      gx_out[i] = nb::dbwd_gx<T>(c, gz[i], ggx[i], xh);
      gz[i] = nb::mask<T>(xh, w, b) * nb::dbwd_dgz<T>(c, ggx[i], xh);
    }
  } else {
    for (int64_t i = 0; i < M; ++i) {
      const T xh = (x[i] - mean) * r;
      gx_out[i] = nb::dbwd_gx<T>(c, gz[i], T(0), xh);
      gz[i] = nb::mask<T>(xh, w, b) * nb::dbwd_dgz<T>(c, T(0), xh);
    }
  }
  for (int64_t i = 0; i < Ho; ++i) {
    const T* d0 = gz + 2 * i * W;
    const T* d1 = d0 + W;
    T* o = ggy_out + i * Wo;
    for (int64_t j = 0; j < Wo; ++j)
      o[j] = T(0.25) * (d0[2 * j] + d0[2 * j + 1] + d1[2 * j] + d1[2 * j + 1]);
  }
  *gw_part = c.gw_part;
}

}  // namespace MTT_NB_ISA
