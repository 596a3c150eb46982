// Launcher of the ZCA scale + centre kernel (zca_kernels.cu); CUDA toolkit API only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mtt_fast {
namespace kernels {

// out[n, d] = float(x[n, d]) * scale - mean[d] for contiguous x (N, D); T: uint8_t,
// float or double.
template <typename T>
cudaError_t zca_center(const T* x, const float* mean, float scale, float* out, int64_t N,
                       int64_t D, cudaStream_t stream);

}  // namespace kernels
}  // namespace mtt_fast
