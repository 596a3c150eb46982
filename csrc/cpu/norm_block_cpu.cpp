// CPU kernels of the fused norm block (instance norm -> ReLU -> 2x2 average pooling):
// forward, backward and double backward, parallel over the (n, c) planes
// (at::parallel_for). A plane (M = H * W pixels) stays in cache across the passes. Plane
// sums are vectorised reductions in a fixed order (deterministic for any thread count).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "../norm_block_math.h"

namespace mtt_fast {
namespace {

int64_t plane_grain(int64_t m) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, m)); }

// The plane kernels, compiled for the baseline ISA and (x86-64 GCC) for AVX2 + FMA;
// the best one the CPU supports is picked at run time (AVX-512 measured no faster: these
// loops are memory-bound at the ConvNet's sizes). MTT_FAST_CPU_ISA=generic forces the
// baseline, for tests and comparisons.
#define MTT_NB_ISA generic
#include "norm_block_cpu_kernels.h"
#undef MTT_NB_ISA

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MTT_NB_MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define MTT_NB_ISA avx2
#include "norm_block_cpu_kernels.h"
#undef MTT_NB_ISA
#pragma GCC pop_options
#endif

template <typename T>
struct PlaneFns {
  decltype(&generic::forward_plane<T>) fwd;
  decltype(&generic::backward_plane<T>) bwd;
  decltype(&generic::double_backward_plane<T>) dbwd;
};

// 0 generic, 1 avx2 + fma: what the CPU supports, capped by MTT_FAST_CPU_ISA.
inline int cpu_isa() {
  int isa = 0;
#ifdef MTT_NB_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = 1;
#endif
  const char* cap = std::getenv("MTT_FAST_CPU_ISA");
  if (cap != nullptr && std::string(cap) == "generic") isa = 0;
  return isa;
}

template <typename T>
PlaneFns<T> plane_fns() {
#ifdef MTT_NB_MULTI_ISA
  if (cpu_isa() == 1)
    return {avx2::forward_plane<T>, avx2::backward_plane<T>, avx2::double_backward_plane<T>};
#endif
  return {generic::forward_plane<T>, generic::backward_plane<T>,
          generic::double_backward_plane<T>};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_block_forward(const at::Tensor& x_,
                                                                  const at::Tensor& weight,
                                                                  const at::Tensor& bias,
                                                                  double eps) {
  at::Tensor x = check_norm_block_x(x_, "x");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor w = check_like(weight, x, "weight", {C});
  at::Tensor b = check_like(bias, x, "bias", {C});
  at::Tensor y = at::empty({N, C, H / 2, W / 2}, x.options());
  at::Tensor mean = at::empty({N, C}, x.options());
  at::Tensor rstd = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_block_forward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rp = rstd.mutable_data_ptr<scalar_t>();
    const int64_t M = H * W, Mo = (H / 2) * (W / 2);
    const PlaneFns<scalar_t> fns = plane_fns<scalar_t>();
    at::parallel_for(0, N * C, plane_grain(M), [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> row(W);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        fns.fwd(xp + p * M, yp + p * Mo, row.data(), H, W, wp[c], bp[c], eps, mp + p, rp + p);
      }
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_block_backward(
    const at::Tensor& grad_out, const at::Tensor& x_, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean_, const at::Tensor& rstd_) {
  at::Tensor x = check_norm_block_x(x_, "x");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor gy = check_like(grad_out, x, "grad_out", {N, C, H / 2, W / 2});
  at::Tensor w = check_like(weight, x, "weight", {C});
  at::Tensor b = check_like(bias, x, "bias", {C});
  at::Tensor mean = check_like(mean_, x, "mean", {N, C});
  at::Tensor rstd = check_like(rstd_, x, "rstd", {N, C});
  at::Tensor gx = at::empty_like(x);
  at::Tensor parts = at::empty({2, N, C}, x.options());  // per-plane s2 (gw), s1 (gb)
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_block_backward_cpu", [&] {
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    scalar_t* pp = parts.mutable_data_ptr<scalar_t>();
    const int64_t M = H * W, Mo = (H / 2) * (W / 2), P = N * C;
    const PlaneFns<scalar_t> fns = plane_fns<scalar_t>();
    at::parallel_for(0, P, plane_grain(M), [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> gz(M + W);  // plane + one row
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        fns.bwd(gyp + p * Mo, xp + p * M, gxp + p * M, gz.data(), H, W, wp[c],
                                 bp[c], mp[p], rp[p], pp + P + p, pp + p);
      }
    });
  });
  return {gx, parts[0].sum(0), parts[1].sum(0)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_block_double_backward(
    const std::optional<at::Tensor>& ggx_, const std::optional<at::Tensor>& ggw_,
    const std::optional<at::Tensor>& ggb_, const at::Tensor& grad_out, const at::Tensor& x_,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean_,
    const at::Tensor& rstd_) {
  at::Tensor x = check_norm_block_x(x_, "x");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor gy = check_like(grad_out, x, "grad_out", {N, C, H / 2, W / 2});
  at::Tensor w = check_like(weight, x, "weight", {C});
  at::Tensor b = check_like(bias, x, "bias", {C});
  at::Tensor mean = check_like(mean_, x, "mean", {N, C});
  at::Tensor rstd = check_like(rstd_, x, "rstd", {N, C});
  const bool has_ggx = ggx_.has_value() && ggx_->defined();
  const bool has_ggw = ggw_.has_value() && ggw_->defined();
  const bool has_ggb = ggb_.has_value() && ggb_->defined();
  at::Tensor ggx = has_ggx ? check_like(*ggx_, x, "ggx", {N, C, H, W}) : at::Tensor();
  at::Tensor ggw = has_ggw ? check_like(*ggw_, x, "ggw", {C}) : at::Tensor();
  at::Tensor ggb = has_ggb ? check_like(*ggb_, x, "ggb", {C}) : at::Tensor();
  at::Tensor g_gy = at::empty_like(gy);
  at::Tensor g_x = at::empty_like(x);
  at::Tensor parts = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_block_double_backward_cpu", [&] {
    const scalar_t* ggxp = has_ggx ? ggx.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ggwp = has_ggw ? ggw.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ggbp = has_ggb ? ggb.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* rp = rstd.const_data_ptr<scalar_t>();
    scalar_t* ggyp = g_gy.mutable_data_ptr<scalar_t>();
    scalar_t* gxp = g_x.mutable_data_ptr<scalar_t>();
    scalar_t* pp = parts.mutable_data_ptr<scalar_t>();
    const int64_t M = H * W, Mo = (H / 2) * (W / 2);
    const PlaneFns<scalar_t> fns = plane_fns<scalar_t>();
    at::parallel_for(0, N * C, plane_grain(M), [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> gz(M + W);  // plane + one row
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        fns.dbwd(ggxp ? ggxp + p * M : nullptr,
                                        ggwp ? ggwp[c] : scalar_t(0), ggbp ? ggbp[c] : scalar_t(0),
                                        gyp + p * Mo, xp + p * M, ggyp + p * Mo, gxp + p * M,
                                        gz.data(), H, W, wp[c], bp[c], mp[p], rp[p], pp + p);
      }
    });
  });
  return {g_gy, g_x, parts.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CPU, m) {
  m.impl("norm_block_forward", &norm_block_forward);
  m.impl("norm_block_backward", &norm_block_backward);
  m.impl("norm_block_double_backward", &norm_block_double_backward);
}

}  // namespace mtt_fast
