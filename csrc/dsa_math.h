// Per-pixel math shared by the CPU (cpu/dsa_cpu.cpp) and CUDA (cuda/dsa_kernels.cu)
// DSA kernels. Plain C++ (no torch), host + device.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MTT_HD __host__ __device__ __forceinline__
#else
#define MTT_HD inline
#endif

namespace mtt_fast {

// torch.linspace(-1, 1, n)[k] as F.affine_grid builds its base grid (align_corners=True);
// affine_grid uses 0 when n == 1. linspace fills the first half from the start and the
// second half from the end, which this reproduces to the last bit.
template <typename T>
MTT_HD T grid_coord(int64_t k, int64_t n) {
  if (n <= 1) return T(0);
  const T step = T(2) / static_cast<T>(n - 1);
  return k < n / 2 ? T(-1) + step * static_cast<T>(k) : T(1) - step * static_cast<T>(n - 1 - k);
}

// Bilinear taps of output pixel (i, j) for F.grid_sample(bilinear, zeros, align_corners=True)
// on the affine grid of th (2, 3, row-major). off[k] is the source offset inside one
// (H, W) plane; a tap outside the image gets off = 0 and weight 0.
template <typename T>
MTT_HD void bilinear_taps(const T* th, int64_t i, int64_t j, int64_t H, int64_t W,
                          int64_t* off, T* w) {
  const T xn = grid_coord<T>(j, W), yn = grid_coord<T>(i, H);
  const T gx = th[0] * xn + th[1] * yn + th[2];
  const T gy = th[3] * xn + th[4] * yn + th[5];
  // grid_sample's unnormalisation: (g + 1) * ((size - 1) / 2)
  const T ix = (gx + T(1)) * (static_cast<T>(W - 1) / T(2));
  const T iy = (gy + T(1)) * (static_cast<T>(H - 1) / T(2));
  for (int k = 0; k < 4; ++k) {
    off[k] = 0;
    w[k] = T(0);
  }
  // Also rejects NaN and values whose floor would overflow int64.
  if (!(ix > T(-1) && ix < static_cast<T>(W) && iy > T(-1) && iy < static_cast<T>(H))) return;
  const T fx0 = floor(ix), fy0 = floor(iy);
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  // Weights in grid_sample's form: (x0 + 1 - ix) and (ix - x0).
  const T wx1 = ix - fx0, wx0 = (fx0 + T(1)) - ix;
  const T wy1 = iy - fy0, wy0 = (fy0 + T(1)) - iy;
  const bool vx0 = x0 >= 0, vx1 = x0 + 1 < W, vy0 = y0 >= 0, vy1 = y0 + 1 < H;
  if (vy0 && vx0) { off[0] = y0 * W + x0;           w[0] = wy0 * wx0; }
  if (vy0 && vx1) { off[1] = y0 * W + x0 + 1;       w[1] = wy0 * wx1; }
  if (vy1 && vx0) { off[2] = (y0 + 1) * W + x0;     w[2] = wy1 * wx0; }
  if (vy1 && vx1) { off[3] = (y0 + 1) * W + x0 + 1; w[3] = wy1 * wx1; }
}

// Cutout rectangle [r0, r1) x [c0, c1), clipped to the image (reference.cutout_mask).
MTT_HD void cutout_rect(int64_t cy, int64_t cx, int64_t h, int64_t w, int64_t H, int64_t W,
                        int64_t& r0, int64_t& r1, int64_t& c0, int64_t& c1) {
  const int64_t top = cy - h / 2, left = cx - w / 2;
  r0 = top < 0 ? 0 : top;
  r1 = top + h > H ? H : top + h;
  c0 = left < 0 ? 0 : left;
  c1 = left + w > W ? W : left + w;
}

}  // namespace mtt_fast
