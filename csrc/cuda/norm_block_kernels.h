// Launchers of the fused norm-block CUDA kernels (norm_block_kernels.cu): instance norm ->
// ReLU -> 2x2 average pooling, its backward and double backward. Plain CUDA toolkit API:
// raw pointers to contiguous tensors, the stream to launch on; each returns the launch
// status. One thread block per (n, c) plane. Instantiated for float and double.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mtt_fast {
namespace kernels {

// x (N, C, H, W), w / b (C,) -> y (N, C, H/2, W/2), mean / rstd (N, C).
template <typename T>
cudaError_t norm_block_forward(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd,
                               int64_t N, int64_t C, int64_t H, int64_t W, double eps,
                               cudaStream_t stream);

// -> gx (N, C, H, W); parts (2, N, C): per-plane sum(gz * xh) (for gw), sum(gz) (for gb).
template <typename T>
cudaError_t norm_block_backward(const T* gy, const T* x, const T* w, const T* b, const T* mean,
                                const T* rstd, T* gx, T* parts, int64_t N, int64_t C,
                                int64_t H, int64_t W, cudaStream_t stream);

// ggx (N, C, H, W), ggw / ggb (C,): each nullable (zero). -> g_gy (N, C, H/2, W/2),
// g_x (N, C, H, W), gw_part (N, C) (summed over N for the weight's gradient).
template <typename T>
cudaError_t norm_block_double_backward(const T* ggx, const T* ggw, const T* ggb, const T* gy,
                                       const T* x, const T* w, const T* b, const T* mean,
                                       const T* rstd, T* g_gy, T* g_x, T* gw_part, int64_t N,
                                       int64_t C, int64_t H, int64_t W, cudaStream_t stream);

}  // namespace kernels
}  // namespace mtt_fast
