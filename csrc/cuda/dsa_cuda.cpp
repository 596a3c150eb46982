// Torch-facing glue of the DSA CUDA kernels: checks, allocation, stream, dispatch.
// Built only against a CUDA torch (setup.py); the kernels are in dsa_kernels.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "dsa_kernels.h"

#define MTT_CUDA_CHECK(expr)                                                              \
  do {                                                                                    \
    const cudaError_t err_ = (expr);                                                      \
    TORCH_CHECK(err_ == cudaSuccess, "mtt_fast CUDA kernel failed: ", cudaGetErrorString(err_)); \
  } while (0)

namespace mtt_fast {
namespace {

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor affine_impl(const at::Tensor& x_, const at::Tensor& theta_, bool backward) {
  const char* name = backward ? "grad_out" : "x";
  at::Tensor x = check_images(x_, name);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor theta = param(theta_, x, "theta", {B, 2, 3}, x.scalar_type());
  at::Tensor out = backward ? at::zeros_like(x) : at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_affine_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = theta.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    MTT_CUDA_CHECK(backward ? kernels::affine_backward<scalar_t>(xp, tp, op, B, C, H, W, stream())
                            : kernels::affine_forward<scalar_t>(xp, tp, op, B, C, H, W, stream()));
  });
  return out;
}

at::Tensor dsa_affine(const at::Tensor& x, const at::Tensor& theta) {
  return affine_impl(x, theta, false);
}

at::Tensor dsa_affine_backward(const at::Tensor& grad_out, const at::Tensor& theta) {
  return affine_impl(grad_out, theta, true);
}

at::Tensor dsa_flip(const at::Tensor& x_, const at::Tensor& mask_) {
  at::Tensor x = check_images(x_, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor mask = mask_param(mask_, x, "mask", {B});
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_flip_cuda", [&] {
    MTT_CUDA_CHECK(kernels::flip<scalar_t>(x.const_data_ptr<scalar_t>(),
                                           mask.const_data_ptr<bool>(),
                                           out.mutable_data_ptr<scalar_t>(), B, C, H, W, stream()));
  });
  return out;
}

at::Tensor dsa_crop(const at::Tensor& x_, const at::Tensor& shift_) {
  at::Tensor x = check_images(x_, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor shift = int_param(shift_, x, "shift", {B, 2});
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_crop_cuda", [&] {
    MTT_CUDA_CHECK(kernels::crop<scalar_t>(x.const_data_ptr<scalar_t>(),
                                           shift.const_data_ptr<int64_t>(),
                                           out.mutable_data_ptr<scalar_t>(), B, C, H, W, stream()));
  });
  return out;
}

at::Tensor dsa_cutout(const at::Tensor& x_, const at::Tensor& center_, int64_t h, int64_t w) {
  at::Tensor x = check_images(x_, "x");
  TORCH_CHECK(h >= 0 && w >= 0, "size: expected non-negative (h, w), got (", h, ", ", w, ")");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor center = int_param(center_, x, "center", {B, 2});
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_cutout_cuda", [&] {
    MTT_CUDA_CHECK(kernels::cutout<scalar_t>(x.const_data_ptr<scalar_t>(),
                                             center.const_data_ptr<int64_t>(), h, w,
                                             out.mutable_data_ptr<scalar_t>(), B, C, H, W,
                                             stream()));
  });
  return out;
}

at::Tensor color_impl(const at::Tensor& x_, const at::Tensor* brightness,
                      const at::Tensor& saturation, const at::Tensor& contrast, const char* name) {
  at::Tensor x = check_images(x_, name);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto dt = x.scalar_type();
  at::Tensor br = brightness ? param(*brightness, x, "brightness", {B}, dt) : at::Tensor();
  at::Tensor sat = param(saturation, x, "saturation", {B}, dt);
  at::Tensor con = param(contrast, x, "contrast", {B}, dt);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(dt, "dsa_color_cuda", [&] {
    MTT_CUDA_CHECK(kernels::color<scalar_t>(
        x.const_data_ptr<scalar_t>(), br.defined() ? br.const_data_ptr<scalar_t>() : nullptr,
        sat.const_data_ptr<scalar_t>(), con.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), B, C, H, W, stream()));
  });
  return out;
}

at::Tensor dsa_color(const at::Tensor& x, const at::Tensor& brightness,
                     const at::Tensor& saturation, const at::Tensor& contrast) {
  return color_impl(x, &brightness, saturation, contrast, "x");
}

at::Tensor dsa_color_backward(const at::Tensor& grad_out, const at::Tensor& saturation,
                              const at::Tensor& contrast) {
  return color_impl(grad_out, nullptr, saturation, contrast, "grad_out");
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CUDA, m) {
  m.impl("dsa_affine", &dsa_affine);
  m.impl("dsa_affine_backward", &dsa_affine_backward);
  m.impl("dsa_flip", &dsa_flip);
  m.impl("dsa_crop", &dsa_crop);
  m.impl("dsa_cutout", &dsa_cutout);
  m.impl("dsa_color", &dsa_color);
  m.impl("dsa_color_backward", &dsa_color_backward);
}

}  // namespace mtt_fast
