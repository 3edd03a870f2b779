"""Exactness of view extraction and feature alignment against the "View geometry" convention.

The convention (docs/ARCHITECTURE.md): voxel k spans [k, k+1) (its value sits at k + 0.5); by default cell j of F
cells computed from a view with box [lo, hi) is centred at lo + (j + 0.5) * (hi - lo) / F before the view's flip;
with a cell geometry (offset o, stride S) of a network level and a view of P voxels, cell j sits on view voxel
o + S * j, i.e. at lo + (o + S * j + 0.5) * (hi - lo) / P, counted in the flipped view's own voxel order.
The helpers below compute those coordinates independently of the library code. That real nnU-Net networks put
their cells there is tested in test_alignment_real_networks.py.
"""
import numpy as np
import pytest
import torch

from nnunet_ssl.methods.alignment import CellGeometry, align_views, overlap_box, roi_align
from nnunet_ssl.methods.views import (ViewSamplingConfig, extract_view, overlap_fraction, place_box, sample_box,
                                      sample_flips, sample_two_boxes)
from view_placement import assert_placed


def cell_coords(box, flip, size, cells=None):
    """(ndim, *size) float64: case coordinate of each cell of a view-derived grid, flips applied. ``cells``:
    ``(offset, stride, view_size)`` per axis of a network level; None = cells tile the view evenly."""
    box = np.asarray(box, dtype=np.float64)
    ndim = len(size)
    per_axis = []
    for d in range(ndim):
        step = (box[1, d] - box[0, d]) / (size[d] if cells is None else cells[2][d])
        voxel = np.arange(size[d]) * (1.0 if cells is None else cells[1][d]) + (0 if cells is None else cells[0][d])
        if flip[d]:  # view voxel i of a flipped view shows the case at unflipped voxel P - 1 - i
            voxel = (size[d] if cells is None else cells[2][d]) - 1 - voxel
        per_axis.append(box[0, d] + (voxel + 0.5) * step)
    return np.stack(np.meshgrid(*per_axis, indexing="ij"))


def coord_features(boxes, flips, size, cells=None):
    """(B, ndim, *size) float64 'feature map' whose channels are the case coordinates of each cell."""
    return torch.from_numpy(np.stack([cell_coords(b, f, size, cells) for b, f in zip(boxes, flips)]))


def roi_centres(roi, out_size):
    return cell_coords(roi, [False] * len(out_size), out_size)


def interior_mask(coords, centres):
    """Samples between the outermost cell centres of a view's feature map (``centres`` = its cell_coords) on
    every axis: linear interpolation of cell-centre values is exact there (beyond, grid_sample pads)."""
    m = np.ones(coords.shape[1:], dtype=bool)
    for d in range(coords.shape[0]):
        m &= (coords[d] >= centres[d].min() - 1e-9) & (coords[d] <= centres[d].max() + 1e-9)
    return m


# --------------------------------------------------------------------------------------------- overlap_box
def test_overlap_box_and_validity():
    b1 = torch.tensor([[[0., 0, 0], [10, 10, 10]], [[0, 0, 0], [4, 4, 4]], [[0, 0, 0], [4, 4, 4]]])
    b2 = torch.tensor([[[5., -2, 3], [12, 6, 20]], [[4, 0, 0], [8, 4, 4]], [[5, 1, 1], [9, 3, 3]]])
    roi, valid = overlap_box(b1, b2)
    assert valid.tolist() == [True, False, False]  # touching faces and disjoint boxes are not valid
    assert torch.allclose(roi[0], torch.tensor([[5., 0, 3], [10, 6, 10]]))
    assert (roi[:, 1] >= roi[:, 0]).all()


# --------------------------------------------------------------------------------------------- exact cases
@pytest.mark.parametrize("flip1", [(False, False, False), (True, False, True), (True, True, True)])
@pytest.mark.parametrize("flip2", [(False, False, False), (False, True, False), (True, True, True)])
def test_align_views_exact_on_shared_cells_3d(flip1, flip2):
    # anisotropic boxes whose overlap is made of whole cells of both feature maps -> every sample is a cell centre
    box1 = np.array([[0., 2, 5], [16, 10, 29]])    # cells (2, 2, 4) with F = (8, 4, 6)
    box2 = np.array([[4., 4, 13], [20, 12, 37]])   # cells (2, 2, 4) with F = (8, 4, 6)
    size = (8, 4, 6)
    f1 = coord_features([box1], [flip1], size)
    f2 = coord_features([box2], [flip2], size)
    out = (6, 3, 4)
    a1, a2, valid = align_views(f1, torch.from_numpy(box1)[None], torch.tensor([flip1]),
                                f2, torch.from_numpy(box2)[None], torch.tensor([flip2]), out)
    assert valid.tolist() == [True]
    expected = torch.from_numpy(roi_centres(np.array([[4., 4, 13], [16, 10, 29]]), out))[None]
    torch.testing.assert_close(a1, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(a2, expected, rtol=0, atol=1e-9)
    # and a1 is literally a sub-block of view 1's un-flipped feature map
    f1_unflipped = torch.flip(f1, [2 + d for d in range(3) if flip1[d]])
    torch.testing.assert_close(a1, f1_unflipped[:, :, 2:8, 1:4, 2:6], rtol=0, atol=1e-9)


def test_align_views_exact_2d_different_resolutions():
    box1 = np.array([[10., 0], [26, 12]])  # F1 = (8, 6): cells 2 x 2
    box2 = np.array([[14., 4], [30, 16]])  # F2 = (4, 3): cells 4 x 4
    f1 = coord_features([box1], [(True, False)], (8, 6))
    f2 = coord_features([box2], [(False, True)], (4, 3))
    out = (3, 2)  # overlap [14, 26) x [4, 12) = 3 x 2 cells of view 2; view 1 interpolates between its centres
    a1, a2, valid = align_views(f1, torch.from_numpy(box1)[None], torch.tensor([[True, False]]),
                                f2, torch.from_numpy(box2)[None], torch.tensor([[False, True]]), out)
    expected = torch.from_numpy(roi_centres(np.array([[14., 4], [26, 12]]), out))[None]
    assert valid.item()
    torch.testing.assert_close(a1, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(a2, expected, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------- random cases
@pytest.mark.parametrize("with_cells", [False, True])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_align_views_random_geometry(ndim, seed, with_cells):
    """Random boxes, flips and resolutions; with_cells: the maps are network levels with a random cell geometry
    (offset, stride) in views of a random size, both maps of the same level."""
    rng = np.random.RandomState(seed)
    B = 4
    shape = rng.randint(20, 60, size=ndim)
    patch = rng.randint(8, 24, size=ndim)
    # anisotropic boxes, partly beyond the case (alignment must not care)
    cfg = ViewSamplingConfig(scale_range=(0.6, 1.6), p_synchronize=0.0, min_overlap=0.2, placement="centre")
    boxes1, boxes2, flips1, flips2 = [], [], [], []
    for _ in range(B):
        b1, b2 = sample_two_boxes(shape, patch, cfg, rng)
        boxes1.append(b1), boxes2.append(b2)
        flips1.append(sample_flips(ndim, cfg, rng)), flips2.append(sample_flips(ndim, cfg, rng))
    size1 = tuple(int(i) for i in rng.randint(4, 12, size=ndim))
    size2 = tuple(int(i) for i in rng.randint(4, 12, size=ndim))
    out = tuple(int(i) for i in rng.randint(3, 10, size=ndim))
    cells, kw = None, {}
    if with_cells:
        stride = rng.choice([1, 2, 4, 8], size=ndim).astype(float)
        offset = rng.uniform(-1, 3, size=ndim)
        size2 = size1
        view_size = tuple(int(i) for i in np.ceil((np.array(size1) - 1) * stride + offset + 1
                                                 + rng.randint(0, 4, size=ndim)))
        cells = (offset, stride, view_size)
        kw = dict(geometry=CellGeometry(offset, stride), input_size=view_size)
    f1 = coord_features(boxes1, flips1, size1, cells).float().requires_grad_(True)
    f2 = coord_features(boxes2, flips2, size2, cells).float()
    a1, a2, valid = align_views(f1, torch.from_numpy(np.stack(boxes1)).float(), torch.from_numpy(np.stack(flips1)),
                                f2, torch.from_numpy(np.stack(boxes2)).float(), torch.from_numpy(np.stack(flips2)),
                                out, **kw)
    assert a1.shape == (B, ndim, *out) and a2.shape == (B, ndim, *out)
    assert valid.all()
    n_checked = 0
    for b in range(B):
        roi = np.stack((np.maximum(boxes1[b][0], boxes2[b][0]), np.minimum(boxes1[b][1], boxes2[b][1])))
        exp = roi_centres(roi, out)
        m1 = interior_mask(exp, cell_coords(boxes1[b], flips1[b], size1, cells))
        m2 = interior_mask(exp, cell_coords(boxes2[b], flips2[b], size2, cells))
        e = torch.from_numpy(exp).float()
        torch.testing.assert_close(a1[b][:, torch.from_numpy(m1)], e[:, torch.from_numpy(m1)], rtol=0, atol=1e-3)
        torch.testing.assert_close(a2[b][:, torch.from_numpy(m2)], e[:, torch.from_numpy(m2)], rtol=0, atol=1e-3)
        both = torch.from_numpy(m1 & m2)
        torch.testing.assert_close(a1[b][:, both], a2[b][:, both], rtol=0, atol=1e-3)
        n_checked += int(both.sum())
    assert n_checked > (0.15 if with_cells else 0.3) * B * np.prod(out)  # sparser cells cover less of a view
    a1.sum().backward()  # differentiable w.r.t. the features
    assert f1.grad is not None and f1.grad.abs().sum() > 0


def test_non_overlapping_views_invalid():
    box1 = torch.tensor([[[0., 0, 0], [8, 8, 8]], [[0., 0, 0], [8, 8, 8]]])
    box2 = torch.tensor([[[9., 0, 0], [17, 8, 8]], [[4., 4, 4], [12, 12, 12]]])
    flips = torch.zeros(2, 3, dtype=torch.bool)
    f = torch.randn(2, 5, 4, 4, 4)
    a1, a2, valid = align_views(f, box1, flips, f, box2, flips, 2)
    assert valid.tolist() == [False, True]
    assert a1.shape == (2, 5, 2, 2, 2)
    assert torch.isfinite(a1).all() and torch.isfinite(a2).all()


def test_roi_align_of_whole_view_undoes_flips():
    box = torch.tensor([[[3., 1, 2], [11, 9, 14]]])
    flip = torch.tensor([[True, False, True]])
    f = torch.randn(1, 3, 4, 4, 6)
    out = roi_align(f, box, flip, box, (4, 4, 6))
    torch.testing.assert_close(out, torch.flip(f, [2, 4]))


def test_cell_geometry_arguments():
    box = torch.tensor([[[3., 1, 2], [11, 9, 14]]])
    flip = torch.tensor([[True, False, True]])
    roi = torch.tensor([[[4., 2, 3], [10, 8, 12]]])
    f = torch.randn(1, 3, 8, 8, 12)
    # the input itself (offset 0, stride 1) is where the default convention puts a full-resolution map
    identity = roi_align(f, box, flip, roi, 5, geometry=CellGeometry.identity(3), input_size=(8, 8, 12))
    torch.testing.assert_close(identity, roi_align(f, box, flip, roi, 5))
    # stride-2 cells on voxels 0, 2, 4, ... of a 16-voxel view vs. the even tiling (cells between voxel pairs)
    g = CellGeometry((0, 0, 0), (2, 2, 2))
    a = roi_align(f[..., :6], box, flip, roi, 4, geometry=g, input_size=(16, 16, 12))
    b = roi_align(f[..., :6], box, flip, roi, 4)
    assert (a - b).abs().max() > 0.1
    assert CellGeometry.identity(2).then(3, 2, 1).then((1, 3), (1, 2), (0, 1)) == CellGeometry((0, 0), (2, 4))
    with pytest.raises(ValueError, match="input_size"):
        roi_align(f, box, flip, roi, 4, geometry=g)
    with pytest.raises(ValueError, match="2d"):
        roi_align(f, box, flip, roi, 4, geometry=CellGeometry.identity(2), input_size=(8, 8))
    with pytest.raises(ValueError, match="positive"):
        CellGeometry((0,), (0,))


# --------------------------------------------------------------------------------------------- views
@pytest.mark.parametrize("ndim", [2, 3])
def test_extract_view_samples_convention_coordinates(ndim):
    rng = np.random.RandomState(3)
    shape = (23, 17, 30)[:ndim]
    # image whose channel d holds the coordinate of each voxel centre (k + 0.5) along axis d
    img = torch.from_numpy(np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij"))).float()
    patch = (9, 12, 7)[:ndim]
    for _ in range(6):
        lo = rng.uniform(-5, 10, size=ndim)
        box = np.stack((lo, lo + rng.uniform(5, 20, size=ndim)))
        flips = rng.rand(ndim) < 0.5
        v = extract_view(img, box, flips, patch)
        assert v.shape == (ndim, *patch) and v.dtype == torch.float32
        exp = cell_coords(box, flips, patch)
        inside = np.ones(patch, dtype=bool)
        for d in range(ndim):
            inside &= (exp[d] >= 0.5) & (exp[d] <= shape[d] - 0.5)
        assert inside.sum() > 0
        m = torch.from_numpy(inside)
        torch.testing.assert_close(v[:, m], torch.from_numpy(exp).float()[:, m], rtol=0, atol=1e-4)
        # numpy input (cropped read path) gives the same result
        torch.testing.assert_close(extract_view(img.numpy(), box, flips, patch), v)


def test_extract_view_zero_padding_and_identity_crop():
    img = torch.randn(2, 10, 12, 8)
    # a box of whole voxels at scale 1 is an exact crop
    v = extract_view(img, np.array([[2., 3, 1], [8, 11, 7]]), None, (6, 8, 6))
    torch.testing.assert_close(v, img[:, 2:8, 3:11, 1:7])
    # far outside the case: zeros
    ones = torch.ones(1, 10, 10, 10)
    v = extract_view(ones, np.array([[-30., -30, -30], [-20, -20, -20]]), None, (4, 4, 4))
    assert (v == 0).all()
    # partly outside: the samples beyond the case are zero, those inside one
    v = extract_view(ones, np.array([[-4., 0, 0], [4, 8, 8]]), None, (8, 8, 8))
    assert (v[:, :4] == 0).all() and (v[:, 4:] == 1).all()


@pytest.mark.parametrize("placement", ["inside", "centre"])
def test_sample_two_boxes_guarantees(placement):
    rng = np.random.RandomState(0)
    for cfg in (ViewSamplingConfig(placement=placement),
                ViewSamplingConfig(min_overlap=0.6, p_synchronize=0.5, placement=placement),
                ViewSamplingConfig(min_overlap=0.95, scale_range=(0.5, 2.0), max_tries=3,  # forces the fallback
                                   placement=placement)):
        for ndim, shape, patch in ((3, (30, 40, 25), (16, 16, 16)), (2, (100, 80), (32, 48)),
                                   (3, (5, 60, 60), (8, 24, 24)), (3, (36, 50, 35), (40, 56, 40))):
            for _ in range(100):
                b1, b2 = sample_two_boxes(shape, patch, cfg, rng)
                assert b1.shape == (2, ndim) and b2.shape == (2, ndim)
                assert overlap_fraction(b1, b2) >= cfg.min_overlap - 1e-9
                for b in (b1, b2):
                    assert_placed(b, shape, placement)
    # scales respect the range
    cfg = ViewSamplingConfig(scale_range=(0.7, 1.4), min_overlap=0.0, placement=placement)
    for _ in range(50):
        b1, b2 = sample_two_boxes((50, 50, 50), (10, 20, 10), cfg, rng)
        for b in (b1, b2):
            s = (b[1] - b[0]) / np.array([10, 20, 10])
            assert np.allclose(s, s[0]) and 0.7 - 1e-9 <= s[0] <= 1.4 + 1e-9


def _inside_fraction(box, shape):
    inter = np.clip(np.minimum(box[1], shape) - np.maximum(box[0], 0), 0, None)
    return float(np.prod(inter) / np.prod(box[1] - box[0]))


def test_inside_placement_keeps_views_on_the_case():
    """A hippocampus-sized case (smaller than the patch): 'centre' boxes are mostly padding, 'inside' boxes hold
    as much of the case as their size allows (the whole case where they are larger than it)."""
    shape, patch = np.array([36., 50., 35.]), (40, 56, 40)
    fractions = {}
    for placement in ("inside", "centre"):
        rng = np.random.RandomState(1)
        cfg = ViewSamplingConfig(placement=placement)
        got = []
        for _ in range(300):
            b = sample_box(shape, patch, cfg, rng)
            assert_placed(b, shape, placement)
            best = np.prod(np.minimum(b[1] - b[0], shape)) / np.prod(b[1] - b[0])
            got.append(_inside_fraction(b, shape))
            if placement == "inside":
                assert got[-1] == pytest.approx(best)
        fractions[placement] = np.mean(got)
    assert fractions["centre"] < 0.45 and fractions["inside"] > 0.55, fractions
    # where the case is larger than the box, 'inside' boxes never leave it
    rng = np.random.RandomState(2)
    for _ in range(200):
        b = sample_box((300, 260), (256, 224), ViewSamplingConfig(scale_range=(0.7, 1.1)), rng)
        assert _inside_fraction(b, np.array([300., 260.])) == pytest.approx(1.0)


def test_place_box_moves_least_and_keeps_size():
    box = np.array([[-10., 5., 80.], [20., 25., 110.]])
    placed = place_box(box, (100, 100, 100), "inside")
    assert np.allclose(placed, [[0, 5, 70], [30, 25, 100]])
    assert np.allclose(place_box(box, (100, 100, 100), "centre"), [[-10, 5, 80], [20, 25, 110]])
    with pytest.raises(ValueError):
        ViewSamplingConfig(placement="anywhere")


def test_sample_flips_respects_axes():
    rng = np.random.RandomState(0)
    cfg = ViewSamplingConfig(flip_axes=(1,), p_flip=1.0)
    assert sample_flips(3, cfg, rng).tolist() == [False, True, False]
    cfg = ViewSamplingConfig(p_flip=0.5)
    flips = np.stack([sample_flips(3, cfg, rng) for _ in range(400)])
    assert np.all(np.abs(flips.mean(0) - 0.5) < 0.1)
