// Torch-facing glue of the fused norm-block CUDA kernels: checks, allocation, stream,
// dispatch. Built only against a CUDA torch (setup.py); the kernels are in
// norm_block_kernels.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../checks.h"
#include "norm_block_kernels.h"

#define MTT_NB_CUDA_CHECK(expr)                                                              \
  do {                                                                                       \
    const cudaError_t err_ = (expr);                                                         \
    TORCH_CHECK(err_ == cudaSuccess, "mtt_fast CUDA kernel failed: ", cudaGetErrorString(err_)); \
  } while (0)

namespace mtt_fast {
namespace {

cudaStream_t nb_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

template <typename scalar_t>
const scalar_t* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_block_forward_cuda(const at::Tensor& x_,
                                                                       const at::Tensor& weight,
                                                                       const at::Tensor& bias,
                                                                       double eps) {
  at::Tensor x = check_norm_block_x(x_, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor w = check_like(weight, x, "weight", {C});
  at::Tensor b = check_like(bias, x, "bias", {C});
  at::Tensor y = at::empty({N, C, H / 2, W / 2}, x.options());
  at::Tensor mean = at::empty({N, C}, x.options());
  at::Tensor rstd = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_block_forward_cuda", [&] {
    MTT_NB_CUDA_CHECK(kernels::norm_block_forward<scalar_t>(
        x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        y.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<scalar_t>(),
        rstd.mutable_data_ptr<scalar_t>(), N, C, H, W, eps, nb_stream()));
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_block_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_, const at::Tensor& rstd_) {
  at::Tensor x = check_norm_block_x(x_, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor gy = check_like(grad_out, x, "grad_out", {N, C, H / 2, W / 2});
  at::Tensor w = check_like(weight, x, "weight", {C});
  at::Tensor b = check_like(bias, x, "bias", {C});
  at::Tensor mean = check_like(mean_, x, "mean", {N, C});
  at::Tensor rstd = check_like(rstd_, x, "rstd", {N, C});
  at::Tensor gx = at::empty_like(x);
  at::Tensor parts = at::empty({2, N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_block_backward_cuda", [&] {
    MTT_NB_CUDA_CHECK(kernels::norm_block_backward<scalar_t>(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        mean.const_data_ptr<scalar_t>(), rstd.const_data_ptr<scalar_t>(),
        gx.mutable_data_ptr<scalar_t>(), parts.mutable_data_ptr<scalar_t>(), N, C, H, W,
        nb_stream()));
  });
  at::Tensor sums = parts.sum(1);  // one reduction launch for both
  return {gx, sums[0].clone(), sums[1].clone()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_block_double_backward_cuda(
    const std::optional<at::Tensor>& ggx_, const std::optional<at::Tensor>& ggw_,
    const std::optional<at::Tensor>& ggb_, const at::Tensor& grad_out, const at::Tensor& x_,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean_,
    const at::Tensor& rstd_) {
  at::Tensor x = check_norm_block_x(x_, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor gy = check_like(grad_out, x, "grad_out", {N, C, H / 2, W / 2});
  at::Tensor w = check_like(weight, x, "weight", {C});
  at::Tensor b = check_like(bias, x, "bias", {C});
  at::Tensor mean = check_like(mean_, x, "mean", {N, C});
  at::Tensor rstd = check_like(rstd_, x, "rstd", {N, C});
  at::Tensor ggx = ggx_.has_value() && ggx_->defined() ? check_like(*ggx_, x, "ggx", {N, C, H, W})
                                                       : at::Tensor();
  at::Tensor ggw = ggw_.has_value() && ggw_->defined() ? check_like(*ggw_, x, "ggw", {C})
                                                       : at::Tensor();
  at::Tensor ggb = ggb_.has_value() && ggb_->defined() ? check_like(*ggb_, x, "ggb", {C})
                                                       : at::Tensor();
  at::Tensor g_gy = at::empty_like(gy);
  at::Tensor g_x = at::empty_like(x);
  at::Tensor parts = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_block_double_backward_cuda", [&] {
    MTT_NB_CUDA_CHECK(kernels::norm_block_double_backward<scalar_t>(
        opt_ptr<scalar_t>(ggx), opt_ptr<scalar_t>(ggw), opt_ptr<scalar_t>(ggb),
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        w.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        mean.const_data_ptr<scalar_t>(), rstd.const_data_ptr<scalar_t>(),
        g_gy.mutable_data_ptr<scalar_t>(), g_x.mutable_data_ptr<scalar_t>(),
        parts.mutable_data_ptr<scalar_t>(), N, C, H, W, nb_stream()));
  });
  return {g_gy, g_x, parts.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CUDA, m) {
  m.impl("norm_block_forward", &norm_block_forward_cuda);
  m.impl("norm_block_backward", &norm_block_backward_cuda);
  m.impl("norm_block_double_backward", &norm_block_double_backward_cuda);
}

}  // namespace mtt_fast
