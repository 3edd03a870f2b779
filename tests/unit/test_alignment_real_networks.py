"""Where the feature cells of REAL nnU-Net networks sit, and that views align on them.

Networks come from nnU-Net's ``get_network_from_plans`` on small plans entries (PlainConvUNet and
ResidualEncoderUNet, 2d and 3d, anisotropic strides and kernels as nnU-Net plans them for anisotropic data) and
are turned into linear probes by ``real_networks.make_linear``. The truth is what the network computes, not the
library's convention: an impulse's response per level, and features of views that hold their case coordinates.
"""
import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ssl.methods.alignment import (CellGeometry, align_views, cell_fractions, decoder_cell_geometry,
                                          encoder_cell_geometry)
from nnunet_ssl.weights.network_parts import decoder_features
from real_networks import HIPPOCAMPUS_3D, PLAIN, RESENC, architecture, build, make_linear, ramp_views

# name: (arch, strides, kernels, input size for the impulse test: the response never reaches the zero padding)
CONFIGS = {
    "plain3d_hippocampus": (PLAIN, HIPPOCAMPUS_3D["strides"], HIPPOCAMPUS_3D["kernels"], (72, 72, 72)),
    "resenc3d_anisotropic": (RESENC, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                             [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], (40, 80, 80)),
    "plain2d_5stages": (PLAIN, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], None, (144, 144)),
    "resenc2d": (RESENC, [[1, 1], [2, 2], [2, 2], [2, 2]], None, (80, 80)),
}


def probe(name, kernel, features=None):
    arch, strides, kernels, _ = CONFIGS[name]
    features = features or [2] * len(strides)
    return make_linear(build(architecture(arch, strides, kernels, features)), kernel)


def cumulative_strides(name):
    return np.cumprod(np.array(CONFIGS[name][1], dtype=np.float64), axis=0)


# --------------------------------------------------------------------------------------------- reading modules
@pytest.mark.parametrize("name", CONFIGS)
def test_geometry_read_from_nnunet_networks(name):
    arch, strides, kernels, _ = CONFIGS[name]
    net = build(architecture(arch, strides, kernels, [4] * len(strides)))
    enc = encoder_cell_geometry(net)
    assert enc == encoder_cell_geometry(net.encoder)  # the network or its encoder
    # kernel k, padding (k - 1) // 2 everywhere: every cell sits on input voxel stride * j
    for g, s in zip(enc, cumulative_strides(name)):
        assert g.offset == (0.0,) * len(s) and g.stride == tuple(s)
    # decoder stages sit where their skips sit (coarsest first)
    assert decoder_cell_geometry(net) == enc[:-1][::-1]


class _OddEncoder(nn.Module):
    """Kernels, paddings, dilations and pooling nnU-Net does not plan: offsets become non-zero."""

    def __init__(self):
        super().__init__()
        self.stem = None
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 1, 2, stride=2, padding=0)),                    # offset 0.5, stride 2
            nn.Sequential(nn.Conv2d(1, 1, 4, stride=2, padding=1), nn.AvgPool2d(2)),   # 1.5 -> 3.5, stride 8
            nn.Sequential(nn.Conv2d(1, 1, 3, stride=1, padding=0, dilation=2)),        # 19.5, stride 8
        )

    def forward(self, x):
        out = []
        for s in self.stages:
            x = s(x)
            out.append(x)
        return out


def test_geometry_accumulates_kernel_padding_stride_and_dilation():
    enc = _OddEncoder().double()
    geoms = encoder_cell_geometry(enc)
    assert [g.offset for g in geoms] == [(0.5, 0.5), (3.5, 3.5), (19.5, 19.5)]
    assert [g.stride for g in geoms] == [(2.0, 2.0), (8.0, 8.0), (8.0, 8.0)]
    # truth from the modules: with symmetric, normalised kernels a linear ramp comes out as the ramp evaluated at
    # each cell's receptive-field centre, wherever zero padding is not involved (there a ones input stays 1)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0, 0].numel())
                m.bias.zero_()
        size = 96
        idx = torch.arange(size, dtype=torch.float64)
        for axis in (0, 1):
            ramp = (idx[:, None] if axis == 0 else idx[None, :]).expand(size, size)[None, None]
            for g, out, ones in zip(geoms, enc(ramp.contiguous()), enc(torch.ones_like(ramp))):
                inside = (ones[0, 0] - 1.0).abs() < 1e-12
                assert inside.sum() >= 4
                j = torch.arange(out.shape[2 + axis], dtype=torch.float64)
                centre = g.offset[axis] + j * g.stride[axis]
                expected = (centre[:, None] if axis == 0 else centre[None, :]).expand_as(out[0, 0])
                torch.testing.assert_close(out[0, 0][inside], expected[inside], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------- impulses
@pytest.mark.parametrize("name", CONFIGS)
def test_impulse_lands_on_predicted_cell(name, one_thread):
    """An impulse at input voxel i: at every encoder level the response's centroid, placed with the derived cell
    centres, is i (exact: the strided hat kernels reproduce linear functions), and its peak is the cell nearest
    to i. The (j + 0.5) * stride convention misses the centroid by (stride - 1) / 2 voxels."""
    net = probe(name, "hat")
    size = CONFIGS[name][3]
    geoms = encoder_cell_geometry(net)
    smax = geoms[-1].stride
    ndim = len(size)
    for shift in (0, 3):  # on a bottleneck cell centre, and 3 voxels off it
        pos = [int(smax[d]) * (size[d] // int(smax[d]) // 2) + shift for d in range(ndim)]
        x = torch.zeros(1, 1, *size, dtype=torch.float64)
        x[(0, 0, *pos)] = 1.0
        with torch.no_grad():
            levels = net.encoder(x)
        for lvl, (f, g) in enumerate(zip(levels, geoms)):
            r = f[0, 0]
            assert (r >= 0).all() and r.sum() > 0
            for d in range(ndim):
                marginal = r.sum(dim=[a for a in range(ndim) if a != d])
                j = torch.arange(marginal.numel(), dtype=torch.float64)
                assert marginal[0] == 0 and marginal[-1] == 0, "response reaches the border: enlarge the input"
                centroid = float((marginal * j).sum() / marginal.sum())
                assert g.offset[d] + centroid * g.stride[d] == pytest.approx(pos[d], abs=1e-9), (lvl, d)
                if shift == 0:
                    assert int(marginal.argmax()) == round((pos[d] - g.offset[d]) / g.stride[d]), (lvl, d)
                old = (centroid + 0.5) * g.stride[d] - 0.5  # old convention, in input voxel index
                assert old - pos[d] == pytest.approx((g.stride[d] - 1) / 2, abs=1e-9)


# --------------------------------------------------------------------------------------------- aligned views
def two_view_geometry(ndim, patch):
    """Three view pairs of one case: (identity, all axes flipped), (identity, 1.5x larger box shifted by a
    fraction of a voxel, axis 0 flipped), (0.8x box with axis 1 flipped, 1.25x box with the others flipped)."""
    p = np.asarray(patch, dtype=np.float64)
    lo = np.full(ndim, 10.0)
    b_same = np.stack((lo, lo + p))
    b_big = np.stack((lo - 0.3 * p + 0.37, lo + 1.2 * p + 0.37))
    b_small = np.stack((lo + 0.1 * p, lo + 0.9 * p))
    b_large = np.stack((lo - 0.2 * p - 0.61, lo + 1.05 * p - 0.61))
    f_none = np.zeros(ndim, bool)
    f_all = np.ones(ndim, bool)
    f_0 = f_none.copy()
    f_0[0] = True
    f_1 = f_none.copy()
    f_1[1] = True
    boxes1, flips1 = [b_same, b_same, b_small], [f_none, f_none, f_1]
    boxes2, flips2 = [b_same, b_big, b_large], [f_all, f_0, ~f_1]
    t = lambda a: torch.from_numpy(np.stack(a))  # noqa: E731
    return t(boxes1), t(flips1), t(boxes2), t(flips2)


def level_maps(net, x, n_dec):
    with torch.no_grad():
        skips = net.encoder(x)
        return list(skips) + decoder_features(net, skips, n_dec)


def overlap_centres(box1, box2, out):
    lo, hi = np.maximum(box1[0], box2[0]), np.minimum(box1[1], box2[1])
    axes = [lo[d] + (np.arange(out[d]) + 0.5) * (hi[d] - lo[d]) / out[d] for d in range(len(out))]
    return torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij")))


@pytest.mark.parametrize("name,kernel,patch", [("resenc3d_anisotropic", "delta", (16, 32, 32)),
                                               ("plain3d_hippocampus", "delta", (40, 56, 40)),
                                               ("plain2d_5stages", "hat", (160, 160)),
                                               ("resenc2d", "delta", (24, 40))])
def test_flipped_and_scaled_views_align_on_real_networks(name, kernel, patch, one_thread):
    """Views whose voxels hold a linear function of their case coordinates, through the real network: at every
    encoder and decoder level, the features of both views aligned with the derived geometry are the function at
    the overlap's cell centres (where neither view's zero padding is involved), for flipped and scaled views."""
    net = probe(name, kernel)
    ndim = len(patch)
    box1, flip1, box2, flip2 = two_view_geometry(ndim, patch)
    coeff = np.array([1.0, 0.73, 0.41][:ndim])
    x1, x2 = (ramp_views(b, f, patch, coeff) for b, f in ((box1, flip1), (box2, flip2)))
    ones = torch.ones_like(x1)
    n_dec = len(CONFIGS[name][1]) - 1
    geoms = encoder_cell_geometry(net) + decoder_cell_geometry(net)
    out = (5,) * ndim
    truth = torch.stack([torch.einsum("d,d...->...", torch.from_numpy(coeff), overlap_centres(b1, b2, out))
                         for b1, b2 in zip(box1.numpy(), box2.numpy())])[:, None]
    checked = 0
    for f1, f2, u, g in zip(level_maps(net, x1, n_dec), level_maps(net, x2, n_dec), level_maps(net, ones, n_dec),
                            geoms):
        gain = u.max()
        a1, a2, valid = align_views(f1, box1, flip1, f2, box2, flip2, out, geometry=g, input_size=patch)
        u1, u2, _ = align_views(u, box1, flip1, u, box2, flip2, out, geometry=g, input_size=patch)
        assert valid.all()
        # exact where the interpolation only touches cells that zero padding (of the network or of grid_sample
        # outside the outermost cell centres) did not reach: there the aligned ones map is the full gain
        mask = ((u1 - gain).abs() < 1e-9 * gain) & ((u2 - gain).abs() < 1e-9 * gain)
        for a in (a1, a2):
            torch.testing.assert_close(a[mask] / gain, truth.expand_as(a)[mask], rtol=0, atol=1e-9)
        checked += int(mask[:, 0].sum())
        if max(g.stride) > 1:  # the evenly-tiled convention misaligns these levels
            o1, o2, _ = align_views(f1, box1, flip1, f2, box2, flip2, out)
            assert max(float((o - truth * gain).abs()[mask].max()) for o in (o1, o2)) > 0.25 * float(gain)
    assert checked >= len(geoms) * 3 * 4


def test_cell_fractions_of_a_level():
    g = CellGeometry((0.0, 1.0), (4.0, 2.0))
    fr = cell_fractions((4, 3), g, (16, 6))
    np.testing.assert_allclose(fr[0], (np.array([0, 4, 8, 12]) + 0.5) / 16)
    np.testing.assert_allclose(fr[1], (np.array([1, 3, 5]) + 0.5) / 6)
    np.testing.assert_allclose(cell_fractions((4,))[0], (np.arange(4) + 0.5) / 4)
