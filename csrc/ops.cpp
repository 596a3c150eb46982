// Schemas of the mtt_fast ops (torch.ops.mtt_fast.*). Implementations: cpu/*_cpu.cpp,
// cuda/*_cuda.cpp. The autograd wiring and fake (meta) kernels live in Python
// (mtt_fast/ops/*/native.py).
#include <Python.h>
#include <torch/library.h>

// An empty Python module: importing mtt_fast._C loads this library, which runs the
// static registrations below.
extern "C" {
static struct PyModuleDef mtt_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mtt_fast_module); }
}

TORCH_LIBRARY(mtt_fast, m) {
  // Bilinear resampling on the affine grid of theta (B, 2, 3), zeros padding,
  // align_corners=True (F.affine_grid + F.grid_sample). Backward: gradient wrt x.
  m.def("dsa_affine(Tensor x, Tensor theta) -> Tensor");
  m.def("dsa_affine_backward(Tensor grad_out, Tensor theta) -> Tensor");
  // Flip along W where mask (B,) bool; its own adjoint.
  m.def("dsa_flip(Tensor x, Tensor mask) -> Tensor");
  // out[b, :, i, j] = x[b, :, i + dy, j + dx], zero outside; adjoint: shift by -shift.
  m.def("dsa_crop(Tensor x, Tensor shift) -> Tensor");
  // Zero an (h, w) square centred at center (B, 2); its own adjoint.
  m.def("dsa_cutout(Tensor x, Tensor center, int h, int w) -> Tensor");
  // Brightness, saturation, contrast in one op. The map is affine in x and its linear
  // part is self-adjoint, so the backward needs neither x nor brightness.
  m.def("dsa_color(Tensor x, Tensor brightness, Tensor saturation, Tensor contrast) -> Tensor");
  m.def("dsa_color_backward(Tensor grad_out, Tensor saturation, Tensor contrast) -> Tensor");
  // ((x * scale - mean) @ matrix) as float32, reshaped to x's shape.
  m.def("zca_apply(Tensor x, Tensor mean, Tensor matrix, float scale) -> Tensor");
  // Fused ConvNet block: GroupNorm(C, C) (affine, eps) -> ReLU -> 2x2 avg pooling.
  // forward -> (y (N, C, H/2, W/2), mean (N, C), rstd (N, C)); backward -> (gx, gw (C,),
  // gb (C,)); double_backward: the upstream grads of the backward's outputs (undefined =
  // zero) -> (grad wrt grad_out, grad wrt x, grad wrt weight); the one wrt bias is zero.
  m.def("norm_block_forward(Tensor x, Tensor weight, Tensor bias, float eps) -> "
        "(Tensor, Tensor, Tensor)");
  m.def("norm_block_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, "
        "Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)");
  m.def("norm_block_double_backward(Tensor? ggx, Tensor? ggw, Tensor? ggb, Tensor grad_out, "
        "Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor rstd) -> "
        "(Tensor, Tensor, Tensor)");
}
