// Math of the fused ConvNet norm block (instance norm -> ReLU -> 2x2 average pooling),
// shared by the CPU (cpu/norm_block_cpu.cpp) and CUDA (cuda/norm_block_kernels.cu)
// kernels. Plain C++ (no torch), host + device.
//
// Per (n, c) plane of M = H * W pixels: xh = (x - mean) * rstd, z = w * xh + b, the ReLU
// mask [z > 0], and gz = [z > 0] * gy[h / 2, w / 2] / 4 inside the pooled windows (0 on a
// dropped odd row / column). Every output of the backward and double backward is affine in
// the per-pixel values (gz, ggx, xh) with per-plane coefficients computed from plane sums;
// mtt_fast/ops/norm_block/torch_impl.py derives them.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MTT_HD __host__ __device__ __forceinline__
#else
#define MTT_HD inline
#endif

namespace mtt_fast {
namespace nb {

template <typename T>
MTT_HD T rstd_of(T var, T eps) {
  return T(1) / sqrt(var + eps);
}

// The ReLU mask [w * xh + b > 0] as 0 / 1 (branch-free: the mask is random).
template <typename T>
MTT_HD T mask(T xh, T w, T b) {
  return w * xh + b > T(0) ? T(1) : T(0);
}

// The pooled-window gradient of a pixel: gy / 4 where the ReLU is active, else 0.
template <typename T>
MTT_HD T gz_of(T gy, T xh, T w, T b) {
  return mask<T>(xh, w, b) * (T(0.25) * gy);
}

template <typename T>
MTT_HD T relu(T v) {
  return v > T(0) ? v : T(0);
}

// Backward: gx = a_gz * gz + a_0 + a_xh * xh, from s1 = sum gz, s2 = sum gz * xh.
template <typename T>
struct BwdCoef {
  T a_gz, a_0, a_xh;
};

template <typename T>
MTT_HD BwdCoef<T> bwd_coef(T w, T rstd, T s1, T s2, T inv_m) {
  const T wr = w * rstd;
  return {wr, -wr * s1 * inv_m, -wr * s2 * inv_m};
}

template <typename T>
MTT_HD T bwd_gx(const BwdCoef<T>& k, T gz, T xh) {
  return k.a_gz * gz + k.a_0 + k.a_xh * xh;
}

// Double backward, from the plane sums s1 = sum gz, s2 = sum gz xh, t1 = sum ggx,
// t2 = sum ggx xh, u = sum ggx gz and the upstream per-channel ggw, ggb:
//   g_x  = c_gz * gz + c_ggx * ggx + c_0 + c_xh * xh
//   d_gz = e_0 + e_xh * xh + e_ggx * ggx            (g_gy = pool([z > 0] * d_gz))
//   g_w  = sum over n of gw_part
template <typename T>
struct DbwdCoef {
  T c_gz, c_ggx, c_0, c_xh, e_0, e_xh, e_ggx, gw_part;
};

template <typename T>
MTT_HD DbwdCoef<T> dbwd_coef(T w, T r, T ggw, T ggb, T s1, T s2, T t1, T t2, T u, T inv_m) {
  const T wr = w * r;
  const T k = wr * inv_m;
  const T q = u - (t1 * s1 + t2 * s2) * inv_m;  // d/dw of <ggx, gx>, divided by r
  const T R = w * q;                             // partial of <ggx, gx> wrt rstd
  const T sA = ggw * s1 - k * (t1 * s2 + t2 * s1);
  const T sAx = ggw * s2 - T(2) * k * t2 * s2;
  DbwdCoef<T> c;
  c.c_gz = r * (ggw - k * t2);
  c.c_ggx = -r * k * s2;
  c.c_0 = -r * sA * inv_m;
  c.c_xh = -(r * sAx + R * r * r) * inv_m;
  c.e_0 = ggb - wr * t1 * inv_m;
  c.e_xh = ggw - wr * t2 * inv_m;
  c.e_ggx = wr;
  c.gw_part = r * q;
  return c;
}

template <typename T>
MTT_HD T dbwd_gx(const DbwdCoef<T>& c, T gz, T ggx, T xh) {
  return c.c_gz * gz + c.c_ggx * ggx + c.c_0 + c.c_xh * xh;
}

template <typename T>
MTT_HD T dbwd_dgz(const DbwdCoef<T>& c, T ggx, T xh) {
  return c.e_0 + c.e_xh * xh + c.e_ggx * ggx;
}

}  // namespace nb
}  // namespace mtt_fast
