// CPU ZCA apply: one fused scale + centre pass into float32, then a matmul.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"

namespace mtt_fast {
namespace {

at::Tensor zca_apply(const at::Tensor& x_, const at::Tensor& mean_, const at::Tensor& matrix_,
                     double scale) {
  check_zca(x_, mean_, matrix_);
  at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), D = x.size(1) * x.size(2) * x.size(3);
  at::Tensor mean = mean_.to(at::kFloat).contiguous();
  at::Tensor matrix = matrix_.to(at::kFloat);
  at::Tensor centred = at::empty({N, D}, x.options().dtype(at::kFloat));
  const float s = static_cast<float>(scale);
  const float* mu = mean.const_data_ptr<float>();
  float* dst = centred.mutable_data_ptr<float>();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zca_apply_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, N * D, 32768, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) dst[k] = static_cast<float>(src[k]) * s - mu[k % D];
    });
  });
  return at::matmul(centred, matrix).view(x.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CPU, m) { m.impl("zca_apply", &zca_apply); }

}  // namespace mtt_fast
