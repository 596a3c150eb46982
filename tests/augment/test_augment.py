"""DSA reference: hand-computed expectations per group, replay, sampling, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from mtt_fast import augment as A
from mtt_fast.ops.dsa import reference as R


def _params(op, args, B):
    return A.DSAParams(((op, args),), B, "custom", "M")


def test_flip_matches_manual():
    x = torch.randn(2, 3, 4, 5)
    out = A.apply(x, _params("flip", {"mask": torch.tensor([True, False])}, 2), backend="torch")
    assert torch.equal(out[0], x[0, :, :, torch.arange(4, -1, -1)])
    assert torch.equal(out[1], x[1])


def test_crop_shift_and_zero_border():
    x = torch.randn(1, 2, 6, 7)
    shift = torch.tensor([[1, -2]])
    out = R.crop(x, shift)
    exp = torch.zeros_like(x)
    for i in range(6):
        for j in range(7):
            si, sj = i + 1, j - 2
            if 0 <= si < 6 and 0 <= sj < 7:
                exp[0, :, i, j] = x[0, :, si, sj]
    assert torch.equal(out, exp)


def test_crop_resolution_matches_original_range():
    # The original draws randint(-s, s + 1) with s = int(H * 0.125 + 0.5): 4 for 32x32.
    p = A.sample(4000, "crop", torch.Generator().manual_seed(1))
    (_, a), = A.resolve(p, 32, 32)
    vals = set(a["shift"].flatten().tolist())
    assert vals == set(range(-4, 5))


def test_cutout_square():
    x = torch.ones(1, 1, 6, 7)
    out = R.cutout(x, torch.tensor([[2, 3]]), (3, 3))
    exp = torch.ones(6, 7)
    exp[1:4, 2:5] = 0
    assert torch.equal(out[0, 0], exp)
    # clipped at the border: centre (0, 0) zeroes rows/cols [-1, 2)
    out = R.cutout(x, torch.tensor([[0, 0]]), (3, 3))
    exp = torch.ones(6, 7)
    exp[0:2, 0:2] = 0
    assert torch.equal(out[0, 0], exp)


def test_cutout_resolution_matches_original():
    # size = int(32 * 0.5 + 0.5) = 16; centre in [0, 32 + (1 - 16 % 2)) = [0, 33)
    p = A.sample(4000, "cutout", torch.Generator().manual_seed(2))
    (_, a), = A.resolve(p, 32, 32)
    assert a["size"] == (16, 16)
    assert a["center"].min() == 0 and a["center"].max() == 32


def test_color_factors_by_hand():
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]])  # (1, 2, 1, 2)
    one, zero = torch.ones(1), torch.zeros(1)
    # brightness only
    assert torch.allclose(R.color(x, torch.tensor([0.25]), one, one), x + 0.25)
    # saturation 0: every channel becomes the per-pixel channel mean
    out = R.color(x, zero, zero, one)
    assert torch.allclose(out, torch.tensor([[[[3.0, 5.0]], [[3.0, 5.0]]]]))
    # contrast 0: every value becomes the image mean
    assert torch.allclose(R.color(x, zero, one, zero), torch.full_like(x, 4.0))
    # all three, by hand: b=1 -> [[2,4],[6,8]]; s=2 about pixel means [4,6] ->
    # [[0,2],[8,10]]; c=0.5 about the mean 5 -> [[2.5,3.5],[6.5,7.5]]
    out = R.color(x, torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.5]))
    assert torch.allclose(out, torch.tensor([[[[2.5, 3.5]], [[6.5, 7.5]]]]))


def _theta(a, sx=1.0, sy=1.0):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[[c * sx, -s, 0.0], [s, c * sy, 0.0]]], dtype=torch.float64)


def test_rotate_90_is_exact_permutation():
    x = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)
    out = R.affine(x, _theta(math.pi / 2))
    # src_x = -y_out, src_y = x_out  ->  out[i, j] = x[j, W - 1 - i]
    exp = torch.empty(5, 5, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            exp[i, j] = x[0, 0, j, 4 - i]
    assert torch.allclose(out[0, 0], exp, atol=1e-12)


def test_scale_half_interpolates_bilinearly():
    x = torch.arange(5, dtype=torch.float64).view(1, 1, 1, 5).expand(1, 1, 5, 5) * 10
    theta = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    out = R.affine(x.contiguous(), theta)
    # source columns 1, 1.5, 2, 2.5, 3 -> values 10, 15, 20, 25, 30 on every row
    assert torch.allclose(out[0, 0], torch.tensor([10.0, 15, 20, 25, 30]).expand(5, 5).double())


def test_identity_affine_and_outside_is_zero():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64).expand(2, 2, 3)
    assert torch.allclose(R.affine(x, eye), x, atol=1e-12)
    far = eye.clone()
    far[:, 0, 2] = 5.0  # shift the sampling grid far outside the image
    assert torch.equal(R.affine(x, far), torch.zeros_like(x))


def test_sampled_ranges():
    g = torch.Generator().manual_seed(3)
    B = 2000
    cfg = A.DSAConfig()
    p = A.sample(B, "scale", g)
    th = p.ops[0][1]["theta"]
    for v in (th[:, 0, 0], th[:, 1, 1]):
        assert v.min() >= 1 / 1.2 - 1e-6 and v.max() <= 1.2 + 1e-6
    p = A.sample(B, "rotate", g)
    th = p.ops[0][1]["theta"]
    ang = torch.atan2(th[:, 1, 0], th[:, 0, 0])
    assert ang.abs().max() <= math.radians(cfg.ratio_rotate) + 1e-6
    assert ang.abs().max() > math.radians(14)
    p = A.sample(B, "flip", g)
    frac = p.ops[0][1]["mask"].float().mean()
    assert 0.45 < frac < 0.55
    p = A.sample(B, "color", g)
    a = p.ops[0][1]
    assert -0.5 <= a["brightness"].min() and a["brightness"].max() <= 0.5
    assert 0 <= a["saturation"].min() and a["saturation"].max() <= 2
    assert 0.5 <= a["contrast"].min() and a["contrast"].max() <= 1.5


def test_mode_S_picks_one_group_uniformly_and_M_applies_all():
    g = torch.Generator().manual_seed(4)
    seen = {}
    for _ in range(300):
        p = A.sample(3, generator=g, mode="S")
        assert len(p.ops) == 1
        seen[p.ops[0][0] + p.ops[0][1].get("kind", "")] = 1
    assert set(seen) == {"color", "crop", "cutout", "flip", "affinescale", "affinerotate"}
    p = A.sample(3, generator=g, mode="M")
    assert p.names == ("color", "crop", "cutout", "flip", "affine", "affine")


def test_replay_is_bit_identical_and_seeded_sampling_reproducible():
    x = torch.randn(6, 3, 9, 11)
    for mode in ("S", "M"):
        p1 = A.sample(6, generator=torch.Generator().manual_seed(7), mode=mode)
        p2 = A.sample(6, generator=torch.Generator().manual_seed(7), mode=mode)
        y1, y2 = A.apply(x, p1, backend="torch"), A.apply(x, p2, backend="torch")
        assert torch.equal(y1, y2)
        assert torch.equal(A.apply(x, p1, backend="torch"), y1)


def test_same_across_batch():
    p = A.sample(5, "color", torch.Generator().manual_seed(0), same_across_batch=True)
    b = p.ops[0][1]["brightness"]
    assert torch.equal(b, b[:1].expand(5))


def test_gradcheck_all_groups_float64():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    p = A.sample(2, generator=torch.Generator().manual_seed(5), mode="M")
    p = A.DSAParams(
        tuple((n, {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
                   for k, v in a.items()}) for n, a in p.ops), 2, p.strategy, "M")
    assert torch.autograd.gradcheck(lambda t: A.apply(t, p, backend="torch"), (x,))


def test_bad_inputs_are_named():
    p = A.sample(3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch 3"):
        A.apply(torch.randn(4, 3, 8, 8), p)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        A.apply(torch.randn(3, 8, 8), p)
    with pytest.raises(ValueError, match="unknown DSA group"):
        A.sample(3, "color_blur")
    with pytest.raises(ValueError, match="mode"):
        A.sample(3, mode="X")
    with pytest.raises(ValueError, match="ratio_scale"):
        A.DSAConfig(ratio_scale=0.5)
    with pytest.raises(ValueError, match="unknown backend"):
        A.apply(torch.randn(3, 3, 8, 8), p, backend="cuda-magic")


def test_none_strategy_is_identity():
    x = torch.randn(2, 1, 4, 4)
    assert A.augment(x, "none") is x
    assert A.parse_strategy(None) == ()
