// Input checks shared by the CPU and CUDA implementations of the mtt_fast ops.
// Every message names the argument and says what was expected and what was got.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mtt_fast {

// (B, C, H, W) float32 / float64 images; returns a contiguous tensor.
inline at::Tensor check_images(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": expected a (B, C, H, W) tensor, got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              ": expected dtype float32 or float64, got ", x.scalar_type());
  return x.contiguous();
}

inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(),
              " (the images' device), got one on ", t.device());
}

// Exact shape check: "theta: expected shape [4, 2, 3], got [4, 3]".
inline void check_shape(const at::Tensor& t, const char* name, std::vector<int64_t> expected) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), name, ": expected shape ",
              at::IntArrayRef(expected), ", got ", t.sizes());
}

// A per-image parameter tensor: right device and shape, cast to `dtype`, contiguous.
inline at::Tensor param(const at::Tensor& t, const at::Tensor& x, const char* name,
                        std::vector<int64_t> shape, at::ScalarType dtype) {
  check_device(t, x, name);
  check_shape(t, name, std::move(shape));
  return t.to(dtype).contiguous();
}

inline at::Tensor int_param(const at::Tensor& t, const at::Tensor& x, const char* name,
                            std::vector<int64_t> shape) {
  TORCH_CHECK(!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()), name,
              ": expected an integer tensor, got dtype ", t.scalar_type());
  return param(t, x, name, std::move(shape), at::kLong);
}

inline at::Tensor mask_param(const at::Tensor& t, const at::Tensor& x, const char* name,
                             std::vector<int64_t> shape) {
  TORCH_CHECK(t.scalar_type() == at::kBool || !at::isFloatingType(t.scalar_type()), name,
              ": expected a bool tensor, got dtype ", t.scalar_type());
  return param(t, x, name, std::move(shape), at::kBool);
}

// ZCA: x (N, C, H, W) uint8 / float, mean (D,), matrix (D, D) with D = C * H * W.
inline void check_zca(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& matrix) {
  TORCH_CHECK(x.dim() == 4, "x: expected a (N, C, H, W) tensor, got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kByte || at::isFloatingType(x.scalar_type()),
              "x: expected dtype uint8 or floating, got ", x.scalar_type());
  const int64_t D = x.size(1) * x.size(2) * x.size(3);
  check_device(mean, x, "mean");
  check_device(matrix, x, "matrix");
  check_shape(mean, "mean", {D});
  check_shape(matrix, "matrix", {D, D});
}

}  // namespace mtt_fast

namespace mtt_fast {

// Norm block: x (N, C, H, W) float32 / float64 with H, W >= 2; per-channel (C,) tensors
// and per-plane (N, C) tensors of x's dtype and device. Returns x contiguous.
inline at::Tensor check_norm_block_x(const at::Tensor& x_, const char* name) {
  at::Tensor x = check_images(x_, name);
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, name,
              ": 2x2 pooling needs H, W >= 2, got ", x.size(2), "x", x.size(3));
  return x;
}

inline at::Tensor check_like(const at::Tensor& t, const at::Tensor& x, const char* name,
                             std::vector<int64_t> shape) {
  check_device(t, x, name);
  check_shape(t, name, std::move(shape));
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, ": expected dtype ", x.scalar_type(),
              " (as x), got ", t.scalar_type());
  return t.contiguous();
}

}  // namespace mtt_fast
