// ZCA scale + centre pass in CUDA (toolkit headers only); the matmul is cuBLAS via torch.
#include "zca_kernels.h"

namespace mtt_fast {
namespace kernels {
namespace {

template <typename T>
__global__ void zca_center_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                                  float scale, float* __restrict__ out, int64_t n, int64_t D) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) out[t] = static_cast<float>(x[t]) * scale - mean[t % D];
}

}  // namespace

template <typename T>
cudaError_t zca_center(const T* x, const float* mean, float scale, float* out, int64_t N,
                       int64_t D, cudaStream_t stream) {
  const int64_t n = N * D;
  if (n == 0) return cudaSuccess;
  constexpr int threads = 256;
  zca_center_kernel<T><<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0,
                         stream>>>(x, mean, scale, out, n, D);
  return cudaGetLastError();
}

template cudaError_t zca_center<uint8_t>(const uint8_t*, const float*, float, float*, int64_t,
                                         int64_t, cudaStream_t);
template cudaError_t zca_center<float>(const float*, const float*, float, float*, int64_t,
                                       int64_t, cudaStream_t);
template cudaError_t zca_center<double>(const double*, const float*, float, float*, int64_t,
                                        int64_t, cudaStream_t);

}  // namespace kernels
}  // namespace mtt_fast
