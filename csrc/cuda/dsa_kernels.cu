// CUDA kernels of the DSA ops, written against the CUDA toolkit only (no torch headers),
// so CMakeLists.txt can compile-check them without a CUDA torch.
#include "dsa_kernels.h"

#include "../dsa_math.h"

namespace mtt_fast {
namespace kernels {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

// One thread per (image, output pixel); the taps are shared by all channels.
template <typename T>
__global__ void affine_forward_kernel(const T* __restrict__ x, const T* __restrict__ theta,
                                      T* __restrict__ out, int64_t B, int64_t C, int64_t H,
                                      int64_t W) {
  const int64_t HW = H * W;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * HW) return;
  const int64_t b = t / HW, p = t - b * HW;
  int64_t off[4];
  T w[4];
  bilinear_taps<T>(theta + 6 * b, p / W, p % W, H, W, off, w);
  for (int64_t c = 0; c < C; ++c) {
    const T* s = x + (b * C + c) * HW;
    out[(b * C + c) * HW + p] = w[0] * s[off[0]] + w[1] * s[off[1]] + w[2] * s[off[2]] +
                                w[3] * s[off[3]];
  }
}

// Scatter formulation: atomicAdd onto the four taps (sm_60+ for double).
template <typename T>
__global__ void affine_backward_kernel(const T* __restrict__ g, const T* __restrict__ theta,
                                       T* __restrict__ gx, int64_t B, int64_t C, int64_t H,
                                       int64_t W) {
  const int64_t HW = H * W;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * HW) return;
  const int64_t b = t / HW, p = t - b * HW;
  int64_t off[4];
  T w[4];
  bilinear_taps<T>(theta + 6 * b, p / W, p % W, H, W, off, w);
  for (int64_t c = 0; c < C; ++c) {
    const T gv = g[(b * C + c) * HW + p];
    T* d = gx + (b * C + c) * HW;
    for (int k = 0; k < 4; ++k)
      if (w[k] != T(0)) atomicAdd(d + off[k], w[k] * gv);
  }
}

template <typename T>
__global__ void flip_kernel(const T* __restrict__ x, const bool* __restrict__ mask,
                            T* __restrict__ out, int64_t n, int64_t per_image, int64_t W) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int64_t j = t % W;
  out[t] = mask[t / per_image] ? x[t - j + (W - 1 - j)] : x[t];
}

template <typename T>
__global__ void crop_kernel(const T* __restrict__ x, const int64_t* __restrict__ shift,
                            T* __restrict__ out, int64_t n, int64_t C, int64_t H, int64_t W) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int64_t j = t % W, i = (t / W) % H, b = t / (C * H * W);
  const int64_t si = i + shift[2 * b], sj = j + shift[2 * b + 1];
  const bool inside = si >= 0 && si < H && sj >= 0 && sj < W;
  out[t] = inside ? x[t + (si - i) * W + (sj - j)] : T(0);
}

template <typename T>
__global__ void cutout_kernel(const T* __restrict__ x, const int64_t* __restrict__ center,
                              int64_t h, int64_t w, T* __restrict__ out, int64_t n, int64_t C,
                              int64_t H, int64_t W) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int64_t j = t % W, i = (t / W) % H, b = t / (C * H * W);
  int64_t r0, r1, c0, c1;
  cutout_rect(center[2 * b], center[2 * b + 1], h, w, H, W, r0, r1, c0, c1);
  out[t] = (i >= r0 && i < r1 && j >= c0 && j < c1) ? T(0) : x[t];
}

// One block per image. Pass 1: per-pixel channel means and their block-reduced total
// (in double); pass 2: out = c*s*x + [c*(mc - M) + M + b - c*s*mc].
template <typename T>
__global__ void color_kernel(const T* __restrict__ x, const T* __restrict__ br,
                             const T* __restrict__ sat, const T* __restrict__ con,
                             T* __restrict__ out, int64_t C, int64_t HW) {
  __shared__ double partial[kThreads];
  const int64_t b = blockIdx.x;
  const T* s = x + b * C * HW;
  T* d = out + b * C * HW;
  double acc = 0;
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
    T m = 0;
    for (int64_t c = 0; c < C; ++c) m += s[c * HW + p];
    acc += static_cast<double>(m / static_cast<T>(C));
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const T M = static_cast<T>(partial[0] / static_cast<double>(HW));
  const T bb = br ? br[b] : T(0), cc = con[b], cs = con[b] * sat[b];
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
    T m = 0;
    for (int64_t c = 0; c < C; ++c) m += s[c * HW + p];
    m /= static_cast<T>(C);
    const T k = cc * (m - M) + M + bb - cs * m;
    for (int64_t c = 0; c < C; ++c) d[c * HW + p] = cs * s[c * HW + p] + k;
  }
}

}  // namespace

template <typename T>
cudaError_t affine_forward(const T* x, const T* theta, T* out, int64_t B, int64_t C, int64_t H,
                           int64_t W, cudaStream_t stream) {
  const int64_t n = B * H * W;
  if (n == 0 || C == 0) return cudaSuccess;
  affine_forward_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, theta, out, B, C, H, W);
  return cudaGetLastError();
}

template <typename T>
cudaError_t affine_backward(const T* grad_out, const T* theta, T* grad_x, int64_t B, int64_t C,
                            int64_t H, int64_t W, cudaStream_t stream) {
  const int64_t n = B * H * W;
  if (n == 0 || C == 0) return cudaSuccess;
  affine_backward_kernel<T>
      <<<blocks_for(n), kThreads, 0, stream>>>(grad_out, theta, grad_x, B, C, H, W);
  return cudaGetLastError();
}

template <typename T>
cudaError_t flip(const T* x, const bool* mask, T* out, int64_t B, int64_t C, int64_t H,
                 int64_t W, cudaStream_t stream) {
  const int64_t n = B * C * H * W;
  if (n == 0) return cudaSuccess;
  flip_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, mask, out, n, C * H * W, W);
  return cudaGetLastError();
}

template <typename T>
cudaError_t crop(const T* x, const int64_t* shift, T* out, int64_t B, int64_t C, int64_t H,
                 int64_t W, cudaStream_t stream) {
  const int64_t n = B * C * H * W;
  if (n == 0) return cudaSuccess;
  crop_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, shift, out, n, C, H, W);
  return cudaGetLastError();
}

template <typename T>
cudaError_t cutout(const T* x, const int64_t* center, int64_t h, int64_t w, T* out, int64_t B,
                   int64_t C, int64_t H, int64_t W, cudaStream_t stream) {
  const int64_t n = B * C * H * W;
  if (n == 0) return cudaSuccess;
  cutout_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(x, center, h, w, out, n, C, H, W);
  return cudaGetLastError();
}

template <typename T>
cudaError_t color(const T* x, const T* brightness, const T* saturation, const T* contrast,
                  T* out, int64_t B, int64_t C, int64_t H, int64_t W, cudaStream_t stream) {
  if (B == 0 || C * H * W == 0) return cudaSuccess;
  color_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
      x, brightness, saturation, contrast, out, C, H * W);
  return cudaGetLastError();
}

#define MTT_INSTANTIATE(T)                                                                    \
  template cudaError_t affine_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t,  \
                                         int64_t, cudaStream_t);                              \
  template cudaError_t affine_backward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                          int64_t, cudaStream_t);                             \
  template cudaError_t flip<T>(const T*, const bool*, T*, int64_t, int64_t, int64_t, int64_t, \
                               cudaStream_t);                                                 \
  template cudaError_t crop<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t,      \
                               int64_t, cudaStream_t);                                        \
  template cudaError_t cutout<T>(const T*, const int64_t*, int64_t, int64_t, T*, int64_t,    \
                                 int64_t, int64_t, int64_t, cudaStream_t);                    \
  template cudaError_t color<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, \
                                int64_t, int64_t, cudaStream_t);

MTT_INSTANTIATE(float)
MTT_INSTANTIATE(double)
#undef MTT_INSTANTIATE

}  // namespace kernels
}  // namespace mtt_fast
