// Launchers of the DSA CUDA kernels (dsa_kernels.cu). Plain CUDA toolkit API: raw
// pointers to contiguous (B, C, H, W) tensors, the stream to launch on; each returns the
// launch status. Instantiated for float and double.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mtt_fast {
namespace kernels {

// out = grid_sample(x, affine_grid(theta)), bilinear, zeros, align_corners=True.
// theta: (B, 2, 3).
template <typename T>
cudaError_t affine_forward(const T* x, const T* theta, T* out, int64_t B, int64_t C, int64_t H,
                           int64_t W, cudaStream_t stream);

// grad_x += adjoint of affine_forward applied to grad_out; grad_x must be zeroed.
template <typename T>
cudaError_t affine_backward(const T* grad_out, const T* theta, T* grad_x, int64_t B, int64_t C,
                            int64_t H, int64_t W, cudaStream_t stream);

// Flip along W where mask (B,) is true.
template <typename T>
cudaError_t flip(const T* x, const bool* mask, T* out, int64_t B, int64_t C, int64_t H,
                 int64_t W, cudaStream_t stream);

// out[b, c, i, j] = x[b, c, i + dy, j + dx] (zero outside); shift: (B, 2) (dy, dx).
template <typename T>
cudaError_t crop(const T* x, const int64_t* shift, T* out, int64_t B, int64_t C, int64_t H,
                 int64_t W, cudaStream_t stream);

// Zero the (h, w) square centred at center (B, 2) (cy, cx), clipped to the image.
template <typename T>
cudaError_t cutout(const T* x, const int64_t* center, int64_t h, int64_t w, T* out, int64_t B,
                   int64_t C, int64_t H, int64_t W, cudaStream_t stream);

// Fused brightness (nullable: 0), saturation, contrast; each (B,). One block per image.
template <typename T>
cudaError_t color(const T* x, const T* brightness, const T* saturation, const T* contrast,
                  T* out, int64_t B, int64_t C, int64_t H, int64_t W, cudaStream_t stream);

}  // namespace kernels
}  // namespace mtt_fast
