// CUDA kernels of the fused norm block, written against the CUDA toolkit only (no torch
// headers); the per-element math is csrc/norm_block_math.h, shared with the CPU kernels.
// One block per (n, c) plane; plane sums are block reductions (warp shuffles, then one
// warp over the per-warp partials), in a fixed order: deterministic.
#include "norm_block_kernels.h"

#include "../norm_block_math.h"

namespace mtt_fast {
namespace kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sums K values over the block; every thread gets the totals. Ends with a barrier, so it
// can be called again right away.
template <typename T, int K>
__device__ void block_sum(T (&v)[K]) {
  __shared__ T sh[K][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) sh[k][warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      T t = lane < nwarps ? sh[k][lane] : T(0);
      t = warp_sum(t);
      if (lane == 0) sh[k][0] = t;
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = sh[k][0];
  __syncthreads();
}

// gz of pixel i of a plane (0 outside the pooled windows) and its xh.
template <typename T>
__device__ __forceinline__ T gz_at(const T* gy, const T* x, int64_t i, int64_t W, int64_t Ho,
                                   int64_t Wo, T w, T b, T mean, T r, T& xh) {
  const int64_t h = i / W, j = i - h * W;
  xh = (x[i] - mean) * r;
  if (h >= 2 * Ho || j >= 2 * Wo) return T(0);
  return nb::gz_of<T>(gy[(h / 2) * Wo + j / 2], xh, w, b);
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ b, T* __restrict__ y, T* __restrict__ mean_o,
                               T* __restrict__ rstd_o, int64_t C, int64_t H, int64_t W, T eps) {
  const int64_t p = blockIdx.x, c = p % C, M = H * W, Ho = H / 2, Wo = W / 2;
  const T* xp = x + p * M;
  T s[1] = {T(0)};
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) s[0] += xp[i];
  block_sum<T, 1>(s);
  const T mean = s[0] / static_cast<T>(M);
  s[0] = T(0);
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    const T d = xp[i] - mean;
    s[0] += d * d;
  }
  block_sum<T, 1>(s);
  const T r = nb::rstd_of<T>(s[0] / static_cast<T>(M), eps);
  if (threadIdx.x == 0) {
    mean_o[p] = mean;
    rstd_o[p] = r;
  }
  const T wc = w[c], bc = b[c];
  T* yp = y + p * Ho * Wo;
  for (int64_t o = threadIdx.x; o < Ho * Wo; o += blockDim.x) {
    const int64_t i = o / Wo, j = o - i * Wo;
    const T* s0 = xp + 2 * i * W + 2 * j;
    T acc = T(0);
    acc += nb::relu<T>(wc * ((s0[0] - mean) * r) + bc);
    acc += nb::relu<T>(wc * ((s0[1] - mean) * r) + bc);
    acc += nb::relu<T>(wc * ((s0[W] - mean) * r) + bc);
    acc += nb::relu<T>(wc * ((s0[W + 1] - mean) * r) + bc);
    yp[o] = T(0.25) * acc;
  }
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                const T* __restrict__ w, const T* __restrict__ b,
                                const T* __restrict__ mean_i, const T* __restrict__ rstd_i,
                                T* __restrict__ gx, T* __restrict__ parts, int64_t P, int64_t C,
                                int64_t H, int64_t W) {
  const int64_t p = blockIdx.x, c = p % C, M = H * W, Ho = H / 2, Wo = W / 2;
  const T* xp = x + p * M;
  const T* gyp = gy + p * Ho * Wo;
  const T wc = w[c], bc = b[c], mean = mean_i[p], r = rstd_i[p];
  T s[2] = {T(0), T(0)};
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    T xh;
    const T gz = gz_at<T>(gyp, xp, i, W, Ho, Wo, wc, bc, mean, r, xh);
    s[0] += gz;
    s[1] += gz * xh;
  }
  block_sum<T, 2>(s);
  const nb::BwdCoef<T> k = nb::bwd_coef<T>(wc, r, s[0], s[1], T(1) / static_cast<T>(M));
  T* gxp = gx + p * M;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    T xh;
    const T gz = gz_at<T>(gyp, xp, i, W, Ho, Wo, wc, bc, mean, r, xh);
    gxp[i] = nb::bwd_gx<T>(k, gz, xh);
  }
  if (threadIdx.x == 0) {
    parts[p] = s[1];
    parts[P + p] = s[0];
  }
}

template <typename T>
__global__ void double_backward_kernel(const T* __restrict__ ggx, const T* __restrict__ ggw,
                                       const T* __restrict__ ggb, const T* __restrict__ gy,
                                       const T* __restrict__ x, const T* __restrict__ w,
                                       const T* __restrict__ b, const T* __restrict__ mean_i,
                                       const T* __restrict__ rstd_i, T* __restrict__ g_gy,
                                       T* __restrict__ g_x, T* __restrict__ gw_part, int64_t C,
                                       int64_t H, int64_t W) {
  const int64_t p = blockIdx.x, c = p % C, M = H * W, Ho = H / 2, Wo = W / 2;
  const T* xp = x + p * M;
  const T* gyp = gy + p * Ho * Wo;
  const T* ggp = ggx ? ggx + p * M : nullptr;
  const T wc = w[c], bc = b[c], mean = mean_i[p], r = rstd_i[p];
  T s[5] = {T(0), T(0), T(0), T(0), T(0)};  // s1, s2, t1, t2, u
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    T xh;
    const T gz = gz_at<T>(gyp, xp, i, W, Ho, Wo, wc, bc, mean, r, xh);
    const T gg = ggp ? ggp[i] : T(0);
    s[0] += gz;
    s[1] += gz * xh;
    s[2] += gg;
    s[3] += gg * xh;
    s[4] += gg * gz;
  }
  block_sum<T, 5>(s);
  const nb::DbwdCoef<T> k =
      nb::dbwd_coef<T>(wc, r, ggw ? ggw[c] : T(0), ggb ? ggb[c] : T(0), s[0], s[1], s[2], s[3],
                       s[4], T(1) / static_cast<T>(M));
  T* gxp = g_x + p * M;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    T xh;
    const T gz = gz_at<T>(gyp, xp, i, W, Ho, Wo, wc, bc, mean, r, xh);
    gxp[i] = nb::dbwd_gx<T>(k, gz, ggp ? ggp[i] : T(0), xh);
  }
  T* ggyp = g_gy + p * Ho * Wo;
  for (int64_t o = threadIdx.x; o < Ho * Wo; o += blockDim.x) {
    const int64_t i = o / Wo, j = o - i * Wo;
    T acc = T(0);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int64_t q = (2 * i + t / 2) * W + 2 * j + t % 2;
      const T xh = (xp[q] - mean) * r;
      acc += nb::mask<T>(xh, wc, bc) * nb::dbwd_dgz<T>(k, ggp ? ggp[q] : T(0), xh);
    }
    ggyp[o] = T(0.25) * acc;
  }
  if (threadIdx.x == 0) gw_part[p] = k.gw_part;
}

}  // namespace

template <typename T>
cudaError_t norm_block_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd,
                               int64_t N, int64_t C, int64_t H, int64_t W, double eps,
                               cudaStream_t stream) {
  if (N * C == 0) return cudaSuccess;
  forward_kernel<T><<<static_cast<unsigned>(N * C), kThreads, 0, stream>>>(
      x, w, b, y, mean, rstd, C, H, W, static_cast<T>(eps));
  return cudaGetLastError();
}

template <typename T>
cudaError_t norm_block_backward(const T* gy, const T* x, const T* w, const T* b, const T* mean,
                                const T* rstd, T* gx, T* parts, int64_t N, int64_t C,
                                int64_t H, int64_t W, cudaStream_t stream) {
  if (N * C == 0) return cudaSuccess;
  backward_kernel<T><<<static_cast<unsigned>(N * C), kThreads, 0, stream>>>(
      gy, x, w, b, mean, rstd, gx, parts, N * C, C, H, W);
  return cudaGetLastError();
}

template <typename T>
cudaError_t norm_block_double_backward(const T* ggx, const T* ggw, const T* ggb, const T* gy,
                                       const T* x, const T* w, const T* b, const T* mean,
                                       const T* rstd, T* g_gy, T* g_x, T* gw_part, int64_t N,
                                       int64_t C, int64_t H, int64_t W, cudaStream_t stream) {
  if (N * C == 0) return cudaSuccess;
  double_backward_kernel<T><<<static_cast<unsigned>(N * C), kThreads, 0, stream>>>(
      ggx, ggw, ggb, gy, x, w, b, mean, rstd, g_gy, g_x, gw_part, C, H, W);
  return cudaGetLastError();
}

#define MTT_INSTANTIATE(T)                                                                    \
  template cudaError_t norm_block_forward<T>(const T*, const T*, const T*, T*, T*, T*,       \
                                             int64_t, int64_t, int64_t, int64_t, double,     \
                                             cudaStream_t);                                   \
  template cudaError_t norm_block_backward<T>(const T*, const T*, const T*, const T*,        \
                                              const T*, const T*, T*, T*, int64_t, int64_t,  \
                                              int64_t, int64_t, cudaStream_t);                \
  template cudaError_t norm_block_double_backward<T>(                                        \
      const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*,        \
      const T*, T*, T*, T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);

MTT_INSTANTIATE(float)
MTT_INSTANTIATE(double)
#undef MTT_INSTANTIATE

}  // namespace kernels
}  // namespace mtt_fast
