// Torch-facing glue of the ZCA CUDA kernel: fused scale + centre, then a cuBLAS matmul
// through at::matmul. Built only against a CUDA torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "zca_kernels.h"

namespace mtt_fast {
namespace {

at::Tensor zca_apply(const at::Tensor& x_, const at::Tensor& mean_, const at::Tensor& matrix_,
                     double scale) {
  check_zca(x_, mean_, matrix_);
  const c10::cuda::CUDAGuard guard(x_.device());
  at::Tensor x = x_.contiguous();
  const auto st = x.scalar_type();
  if (st != at::kByte && st != at::kFloat && st != at::kDouble) x = x.to(at::kFloat);
  const int64_t N = x.size(0), D = x.size(1) * x.size(2) * x.size(3);
  at::Tensor mean = mean_.to(at::kFloat).contiguous();
  at::Tensor centred = at::empty({N, D}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const float s = static_cast<float>(scale);
  const float* mu = mean.const_data_ptr<float>();
  float* out = centred.mutable_data_ptr<float>();
  cudaError_t err = cudaSuccess;
  if (x.scalar_type() == at::kByte)
    err = kernels::zca_center<uint8_t>(x.const_data_ptr<uint8_t>(), mu, s, out, N, D, stream);
  else if (x.scalar_type() == at::kFloat)
    err = kernels::zca_center<float>(x.const_data_ptr<float>(), mu, s, out, N, D, stream);
  else
    err = kernels::zca_center<double>(x.const_data_ptr<double>(), mu, s, out, N, D, stream);
  TORCH_CHECK(err == cudaSuccess, "mtt_fast zca_apply CUDA kernel failed: ",
              cudaGetErrorString(err));
  return at::matmul(centred, matrix_.to(at::kFloat)).view(x.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CUDA, m) { m.impl("zca_apply", &zca_apply); }

}  // namespace mtt_fast
