// CPU implementations of the DSA ops; parallel over the batch (at::parallel_for), so the
// scatter of the affine backward never races (each image owns its gradient plane).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../dsa_math.h"

namespace mtt_fast {
namespace {

// Images per parallel chunk: about 32k elements of work each.
int64_t grain(int64_t per_image) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_image)); }

template <typename T>
void affine_kernel(const T* src, const T* theta, T* dst, int64_t B, int64_t C, int64_t H,
                   int64_t W, bool backward) {
  const int64_t HW = H * W;
  at::parallel_for(0, B, grain(C * HW), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* th = theta + 6 * b;
      const T* s = src + b * C * HW;
      T* d = dst + b * C * HW;
      // taps computed once per pixel and used for every channel (planes HW apart)
      for (int64_t i = 0, p = 0; i < H; ++i) {
        for (int64_t j = 0; j < W; ++j, ++p) {
          int64_t o[4];
          T w[4];
          bilinear_taps<T>(th, i, j, H, W, o, w);
          if (!backward) {
            for (int64_t c = 0; c < C; ++c) {
              const T* sc = s + c * HW;
              d[c * HW + p] = w[0] * sc[o[0]] + w[1] * sc[o[1]] + w[2] * sc[o[2]] + w[3] * sc[o[3]];
            }
          } else {  // d is zero-initialised; scatter the output gradient onto the taps
            for (int64_t c = 0; c < C; ++c) {
              const T g = s[c * HW + p];
              T* dc = d + c * HW;
              dc[o[0]] += w[0] * g;
              dc[o[1]] += w[1] * g;
              dc[o[2]] += w[2] * g;
              dc[o[3]] += w[3] * g;
            }
          }
        }
      }
    }
  });
}

at::Tensor affine_impl(const at::Tensor& x_, const at::Tensor& theta_, bool backward) {
  const char* name = backward ? "grad_out" : "x";
  at::Tensor x = check_images(x_, name);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H * W < (int64_t(1) << 31), name, ": H * W must be < 2**31, got ", H * W);
  at::Tensor theta = param(theta_, x, "theta", {B, 2, 3}, x.scalar_type());
  at::Tensor out = backward ? at::zeros_like(x) : at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_affine_cpu", [&] {
    affine_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), theta.const_data_ptr<scalar_t>(),
                            out.mutable_data_ptr<scalar_t>(), B, C, H, W, backward);
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
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor mask = mask_param(mask_, x, "mask", {B});
  at::Tensor out = at::empty_like(x);
  const bool* m = mask.const_data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_flip_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t n = C * H * W;
    at::parallel_for(0, B, grain(n), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* s = src + b * n;
        scalar_t* d = dst + b * n;
        if (!m[b]) {
          std::memcpy(d, s, n * sizeof(scalar_t));
          continue;
        }
        for (int64_t r = 0; r < C * H; ++r)
          for (int64_t j = 0; j < W; ++j) d[r * W + j] = s[r * W + W - 1 - j];
      }
    });
  });
  return out;
}

at::Tensor dsa_crop(const at::Tensor& x_, const at::Tensor& shift_) {
  at::Tensor x = check_images(x_, "x");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor shift = int_param(shift_, x, "shift", {B, 2});
  at::Tensor out = at::empty_like(x);
  const int64_t* sh = shift.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_crop_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, grain(C * H * W), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t dy = sh[2 * b], dx = sh[2 * b + 1];
        // valid output columns [j0, j1): 0 <= j + dx < W
        const int64_t j0 = std::clamp<int64_t>(-dx, 0, W), j1 = std::clamp<int64_t>(W - dx, j0, W);
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t i = 0; i < H; ++i) {
            scalar_t* d = dst + ((b * C + c) * H + i) * W;
            const int64_t si = i + dy;
            if (si < 0 || si >= H || j0 >= j1) {
              std::fill(d, d + W, scalar_t(0));
              continue;
            }
            const scalar_t* s = src + ((b * C + c) * H + si) * W;
            std::fill(d, d + j0, scalar_t(0));
            std::memcpy(d + j0, s + j0 + dx, (j1 - j0) * sizeof(scalar_t));
            std::fill(d + j1, d + W, scalar_t(0));
          }
        }
      }
    });
  });
  return out;
}

at::Tensor dsa_cutout(const at::Tensor& x_, const at::Tensor& center_, int64_t h, int64_t w) {
  at::Tensor x = check_images(x_, "x");
  TORCH_CHECK(h >= 0 && w >= 0, "size: expected non-negative (h, w), got (", h, ", ", w, ")");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor center = int_param(center_, x, "center", {B, 2});
  at::Tensor out = at::empty_like(x);
  const int64_t* ct = center.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dsa_cutout_cpu", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const int64_t n = C * H * W;
    at::parallel_for(0, B, grain(n), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        std::memcpy(dst + b * n, src + b * n, n * sizeof(scalar_t));
        int64_t r0, r1, c0, c1;
        cutout_rect(ct[2 * b], ct[2 * b + 1], h, w, H, W, r0, r1, c0, c1);
        if (r0 >= r1 || c0 >= c1) continue;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t i = r0; i < r1; ++i) {
            scalar_t* d = dst + ((b * C + c) * H + i) * W;
            std::fill(d + c0, d + c1, scalar_t(0));
          }
      }
    });
  });
  return out;
}

// out = c*s*(x - mc) + c*(mc - M) + M + b, with mc the per-pixel channel mean and M the
// per-image mean of x: the reference's three steps with the intermediate means solved
// in closed form (mean_c of the saturated image is mc + b, its image mean is M + b).
// Two passes over x: channel sums (and their total), then the output.
template <typename T>
void color_kernel(const T* src, const T* br, const T* sat, const T* con, T* dst, int64_t B,
                  int64_t C, int64_t H, int64_t W) {
  const int64_t HW = H * W;
  at::parallel_for(0, B, grain(C * HW), [&](int64_t b0, int64_t b1) {
    std::vector<T> mc(HW);
    for (int64_t b = b0; b < b1; ++b) {
      const T* s = src + b * C * HW;
      T* d = dst + b * C * HW;
      std::fill(mc.begin(), mc.end(), T(0));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t p = 0; p < HW; ++p) mc[p] += s[c * HW + p];
      double total = 0;  // accumulated in double: the image mean of up to ~1e6 values
      for (int64_t p = 0; p < HW; ++p) {
        mc[p] /= static_cast<T>(C);
        total += mc[p];
      }
      const T M = static_cast<T>(total / static_cast<double>(HW));
      const T bb = br ? br[b] : T(0), cs = con[b] * sat[b], cc = con[b];
      for (int64_t p = 0; p < HW; ++p) mc[p] = cc * (mc[p] - M) + M + bb - cs * mc[p];
      for (int64_t c = 0; c < C; ++c)
        for (int64_t p = 0; p < HW; ++p) d[c * HW + p] = cs * s[c * HW + p] + mc[p];
    }
  });
}

at::Tensor color_impl(const at::Tensor& x_, const at::Tensor* brightness,
                      const at::Tensor& saturation, const at::Tensor& contrast, const char* name) {
  at::Tensor x = check_images(x_, name);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto dt = x.scalar_type();
  at::Tensor br = brightness ? param(*brightness, x, "brightness", {B}, dt) : at::Tensor();
  at::Tensor sat = param(saturation, x, "saturation", {B}, dt);
  at::Tensor con = param(contrast, x, "contrast", {B}, dt);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(dt, "dsa_color_cpu", [&] {
    color_kernel<scalar_t>(x.const_data_ptr<scalar_t>(),
                           br.defined() ? br.const_data_ptr<scalar_t>() : nullptr,
                           sat.const_data_ptr<scalar_t>(), con.const_data_ptr<scalar_t>(),
                           out.mutable_data_ptr<scalar_t>(), B, C, H, W);
  });
  return out;
}

at::Tensor dsa_color(const at::Tensor& x, const at::Tensor& brightness,
                     const at::Tensor& saturation, const at::Tensor& contrast) {
  return color_impl(x, &brightness, saturation, contrast, "x");
}

// The linear part of dsa_color is self-adjoint (the mean projections are symmetric), so
// the gradient is the forward map without brightness applied to grad_out.
at::Tensor dsa_color_backward(const at::Tensor& grad_out, const at::Tensor& saturation,
                              const at::Tensor& contrast) {
  return color_impl(grad_out, nullptr, saturation, contrast, "grad_out");
}

}  // namespace

TORCH_LIBRARY_IMPL(mtt_fast, CPU, m) {
  m.impl("dsa_affine", &dsa_affine);
  m.impl("dsa_affine_backward", &dsa_affine_backward);
  m.impl("dsa_flip", &dsa_flip);
  m.impl("dsa_crop", &dsa_crop);
  m.impl("dsa_cutout", &dsa_cutout);
  m.impl("dsa_color", &dsa_color);
  m.impl("dsa_color_backward", &dsa_color_backward);
}

}  // namespace mtt_fast
