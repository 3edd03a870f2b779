"""Unit tests for GMIM masking: nnunet_ssl.methods.adaptive_grid (cells, entropies, grid choice, ratios),
block_masks (exact per-cell block masks) and gmim_maskers (adaptive grid masks, hierarchical feature masks, MAE
baseline)."""
import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ssl.methods.adaptive_grid import (
    adaptive_cell_ratios,
    cell_bounds,
    cell_entropies,
    cell_index_map,
    choose_grid,
    valid_grids,
)
from nnunet_ssl.methods.block_masks import default_unit, grid_block_mask
from nnunet_ssl.methods.gmim_maskers import GMIMMasker, HierarchicalFeatureMasker


pytestmark = pytest.mark.usefixtures("one_thread")


def _half_textured(shape, seed=0):
    """(1, 1, *shape): random noise in the lower half of axis 0, constant 0.5 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, 1) + tuple(shape), 0.5)
    half = shape[0] // 2
    x[:, :, :half] = torch.rand((1, 1, half) + tuple(shape[1:]), generator=g)
    return x


def _textured_cells(shape, grid):
    """Bool (K,) True for cells entirely inside the textured half (axis-0 cell index)."""
    b0 = cell_bounds(shape[0], grid)
    cells0 = torch.arange(grid)
    textured0 = b0[1:][cells0] <= shape[0] // 2
    flat0 = b0[:-1][cells0] >= shape[0] // 2
    rest = grid ** (len(shape) - 1)
    return textured0.repeat_interleave(rest), flat0.repeat_interleave(rest)


# ----------------------------------------------------------------------------------------------------------- cells
@pytest.mark.parametrize("size", [20, 28, 40, 56, 7])
@pytest.mark.parametrize("grid", [1, 3, 4, 8, 16])
def test_cell_bounds_partition(size, grid):
    if grid > size:
        pytest.skip("grid larger than size")
    b = cell_bounds(size, grid)
    assert b[0] == 0 and b[-1] == size and len(b) == grid + 1
    lengths = b[1:] - b[:-1]
    assert (lengths >= 1).all() and int(lengths.max() - lengths.min()) <= 1


@pytest.mark.parametrize("shape", [(40, 56, 40), (20, 28), (17, 9, 23)])
def test_cell_index_map_every_voxel_one_cell(shape):
    grid = 4
    ids = cell_index_map(shape, grid)
    assert ids.shape == shape
    counts = torch.bincount(ids.reshape(-1), minlength=grid ** len(shape))
    assert counts.numel() == grid ** len(shape) and (counts > 0).all() and counts.sum() == np.prod(shape)
    # row-major: the last axis varies fastest
    assert ids[(0,) * (len(shape) - 1) + (shape[-1] - 1,)] == grid - 1


# ------------------------------------------------------------------------------------------------------- entropies
def _np_entropies(xs, grid, bins=32):
    """Independent numpy computation: per-cell histogram over the sample's global range, entropy in bits."""
    xs = xs.astype(np.float64)
    mn, mx = xs.min(), xs.max()
    spatial = xs.shape[1:]
    bounds = [[(i * s) // grid for i in range(grid + 1)] for s in spatial]
    out = []
    for cell in np.ndindex(*([grid] * len(spatial))):
        sl = (slice(None),) + tuple(slice(bounds[a][c], bounds[a][c + 1]) for a, c in enumerate(cell))
        v = xs[sl].reshape(-1)
        if mx > mn:
            hist, _ = np.histogram(v, bins=bins, range=(mn, mx))
        else:
            hist = np.array([v.size])
        p = hist[hist > 0] / hist.sum()
        out.append(float(-(p * np.log2(p)).sum()))
    return np.array(out)


def _np_entropies_vectorised(xs, grid, bins=32):
    """Same quantity, numpy-vectorised: bin of each value from np.linspace edges (last edge inclusive, like
    np.histogram), cell of each voxel from the floor boundaries, then one bincount."""
    xs = xs.astype(np.float64)
    mn, mx = xs.min(), xs.max()
    edges = np.linspace(mn, mx, bins + 1)
    b = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, bins - 1) if mx > mn else np.zeros(xs.shape, int)
    cell = np.zeros(xs.shape[1:], dtype=np.int64)
    for axis, size in enumerate(xs.shape[1:]):
        bounds = np.array([(i * size) // grid for i in range(grid + 1)])
        c = np.searchsorted(bounds, np.arange(size), side="right") - 1
        shape = [1] * (xs.ndim - 1)
        shape[axis] = size
        cell = cell * grid + c.reshape(shape)
    k = grid ** (xs.ndim - 1)
    counts = np.bincount((np.broadcast_to(cell, xs.shape) * bins + b).reshape(-1), minlength=k * bins)
    p = counts.reshape(k, bins) / counts.reshape(k, bins).sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(1)


@pytest.mark.parametrize("shape", [(40, 56, 40), (20, 28)])
def test_cell_entropies_match_numpy(shape):
    x = torch.rand((2, 2) + shape, generator=torch.Generator().manual_seed(1))
    x[1, :, : shape[0] // 2] = 0.3
    for grid in (4, 8):
        h = cell_entropies(x, grid)
        assert h.shape == (2, grid ** len(shape))
        for b in range(2):
            ref = _np_entropies(x[b].numpy(), grid)
            np.testing.assert_allclose(h[b].numpy(), ref, atol=2e-2)
            np.testing.assert_allclose(_np_entropies_vectorised(x[b].numpy(), grid), ref, atol=1e-9)


def test_flat_cells_have_zero_entropy_and_constant_sample():
    x = _half_textured((40, 56, 40))
    h = cell_entropies(x, 4)[0]
    textured, flat = _textured_cells((40, 56, 40), 4)
    assert torch.all(h[flat] == 0) and torch.all(h[textured] > 3.0)
    assert torch.all(cell_entropies(torch.ones(1, 1, 20, 28), 4) == 0)


# ------------------------------------------------------------------------------------------------------------ grid
def _grid_batch_3d():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 1, 40, 56, 40)
    x[0, :, 5:12, 5:12, 5:12] = torch.rand(7, 7, 7, generator=g)  # small textured blob -> fine grid
    x[1] = torch.rand(1, 40, 56, 40, generator=g)  # noise everywhere
    x[2, :, :20] = torch.rand(1, 20, 56, 40, generator=g)  # half textured -> coarse grid
    return x


def _grid_batch_2d():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 1, 20, 28)
    x[0, :, 2:6, 3:7] = torch.rand(4, 4, generator=g)
    x[1] = torch.rand(1, 20, 28, generator=g)
    x[2, :, :10] = torch.rand(1, 10, 28, generator=g)
    return x


@pytest.mark.parametrize("make", [_grid_batch_3d, _grid_batch_2d])
def test_choose_grid_follows_formula(make):
    x = make()
    grids, scores = choose_grid(x, min_cell_size=2)  # 2-voxel cells allowed: every candidate of 40x56x40 competes
    min_size = min(x.shape[2:])
    expected_candidates = [g for g in (4, 8, 16) if g <= min_size // 2]
    assert sorted(scores) == expected_candidates
    for b in range(x.shape[0]):
        ref = {}
        for g in expected_candidates:
            h = _np_entropies_vectorised(x[b].numpy(), g)
            ref[g] = g ** -0.1 * h.std() / h.mean() if h.mean() > 1e-12 else 0.0
            assert scores[g][b].item() == pytest.approx(ref[g], rel=2e-2, abs=1e-4)
        best = max(ref, key=ref.get)
        assert grids[b] == best
    assert len(set(grids)) > 1  # the batch was built so samples choose different grids


def test_valid_grids_small_patches():
    # cells of at least 4 voxels on the smallest axis (two 2-voxel masking units)
    assert valid_grids((20, 28)) == [4]
    assert valid_grids((40, 56, 40)) == [4, 8]  # hippocampus: no 2-voxel cells at G=16
    assert valid_grids((256, 224)) == [4, 8, 16]  # ACDC 2d
    assert valid_grids((6, 64, 64)) == [1]  # all candidates dropped -> min(size) // 4
    assert valid_grids((1, 64)) == [1]
    assert valid_grids((40, 56, 40), min_cell_size=2) == [4, 8, 16]
    assert valid_grids((6, 64, 64), min_cell_size=2) == [3]


def test_default_unit_never_single_voxels_where_the_cell_allows():
    assert default_unit((40, 56, 40), 8) == (1, 1, 1)  # the plain rule: a quarter of a 5-7 voxel cell
    assert default_unit((40, 56, 40), 8, min_unit=2) == (2, 2, 2)
    assert default_unit((40, 56, 40), 4, min_unit=2) == (2, 3, 2)
    assert default_unit((256, 224), 8, min_unit=2) == (8, 7)  # large cells: a quarter of the cell, as before
    assert default_unit((3, 64), 2, min_unit=2) == (1, 8)  # a 1-voxel cell keeps 1-voxel units
    # the masker uses it: on a hippocampus-sized patch every masked run along an axis is at least 2 voxels
    # long, except where a cell boundary cuts a unit (cells of 5 or 7 voxels: units 2, 2, 1 / 2, 2, 2, 1)
    res = GMIMMasker.mae().mask(torch.rand(2, 1, 40, 56, 40), generator=torch.Generator().manual_seed(0))
    assert res.grids == [8, 8]
    line = res.mask[0, 0, :, 10, 10]
    starts = [0, 2, 4] + [5 * c + o for c in range(1, 8) for o in (0, 2, 4)]
    for k in range(40):  # units start at 0, 2, 4 of every 5-voxel cell and are uniform inside
        if k not in starts:
            assert line[k] == line[k - 1]


# ----------------------------------------------------------------------------------------------------------- ratios
def test_adaptive_ratios_rank_formula():
    h = torch.tensor([3.0, 1.0, 2.0, 0.5])
    r = adaptive_cell_ratios(h, base=0.5, spread=0.3)
    lin = 0.5 * torch.linspace(0.7, 1.3, 4)
    rank = torch.tensor([3, 1, 2, 0])
    torch.testing.assert_close(r, lin[rank])
    # ties share the average of their ranks' ratios
    r2 = adaptive_cell_ratios(torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert r2[0] == r2[1] and r2[0].item() == pytest.approx(float(lin[:2].mean()))
    assert r2.mean().item() == pytest.approx(0.5)
    # clipping
    r3 = adaptive_cell_ratios(torch.arange(5.0), base=0.9, spread=0.5)
    assert r3.max() == 1.0 and r3.min() >= 0
    assert adaptive_cell_ratios(torch.tensor([2.0])).item() == 0.5


@pytest.mark.parametrize("shape", [(40, 56, 40), (20, 28)])
def test_textured_cells_get_higher_ratios(shape):
    x = _half_textured(shape)
    grid = 4
    r = adaptive_cell_ratios(cell_entropies(x, grid)[0])
    textured, flat = _textured_cells(shape, grid)
    assert r[textured].min() > r[flat].max()
    assert torch.allclose(r[flat], r[flat][0].expand_as(r[flat]))
    # through the masker: textured half masked more
    res = GMIMMasker().mask(x, generator=torch.Generator().manual_seed(0))
    half = shape[0] // 2
    assert res.mask[:, :, :half].mean() > res.mask[:, :, half:].mean() + 0.1
    assert res.mean_cell_ratio.item() == pytest.approx(0.5, abs=1e-6)


# ------------------------------------------------------------------------------------------------------- block mask
def test_block_mask_exact_units_divisible_2d():
    g = torch.Generator().manual_seed(3)
    ratios = torch.rand(2, 64, generator=g)
    mask = grid_block_mask((64, 64), 8, ratios, generator=g)  # cells 8x8, default unit 2x2 -> 16 units
    assert mask.shape == (2, 1, 64, 64) and mask.dtype == torch.float32
    ids = cell_index_map((64, 64), 8)
    for b in range(2):
        counts = torch.bincount(ids.reshape(-1), weights=mask[b, 0].reshape(-1), minlength=64)
        expected = torch.tensor([4 * round(float(r) * 16) for r in ratios[b]], dtype=counts.dtype)
        torch.testing.assert_close(counts, expected)
        # masked areas are whole 2x2 blocks
        blocks = mask[b, 0].reshape(32, 2, 32, 2).permute(0, 2, 1, 3).reshape(32, 32, 4)
        assert torch.all((blocks.sum(-1) == 0) | (blocks.sum(-1) == 4))


@pytest.mark.parametrize("shape,grids", [((40, 56, 40), [4, 8]), ((20, 28), [4, 8]), ((17, 9, 23), [3, 4])])
def test_block_mask_per_cell_ratio_nondivisible(shape, grids):
    g = torch.Generator().manual_seed(5)
    ndim = len(shape)
    ratios = [torch.rand(gr ** ndim, generator=g) for gr in grids]
    # unit 1: exactly round(ratio * n_voxels_in_cell) voxels per cell
    mask1 = grid_block_mask(shape, grids, ratios, unit=1, generator=g)
    # default units: realised ratio close to the requested one
    mask = grid_block_mask(shape, grids, ratios, generator=g)
    assert mask.shape == (len(grids), 1) + shape
    for b, gr in enumerate(grids):
        ids = cell_index_map(shape, gr).reshape(-1)
        n = torch.bincount(ids, minlength=gr ** ndim).double()
        c1 = torch.bincount(ids, weights=mask1[b, 0].reshape(-1).double(), minlength=gr ** ndim)
        torch.testing.assert_close(c1, torch.round(ratios[b].double() * n))
        c = torch.bincount(ids, weights=mask[b, 0].reshape(-1).double(), minlength=gr ** ndim)
        frac = c / n
        assert (frac - ratios[b].double()).abs().max() < 0.2
        assert (frac - ratios[b].double()).abs().mean() < 0.06


def test_block_mask_generator_reproducible_and_random():
    r = torch.full((1, 64), 0.5)
    m1 = grid_block_mask((32, 32), 8, r, generator=torch.Generator().manual_seed(7))
    m2 = grid_block_mask((32, 32), 8, r, generator=torch.Generator().manual_seed(7))
    m3 = grid_block_mask((32, 32), 8, r, generator=torch.Generator().manual_seed(8))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)


# ----------------------------------------------------------------------------------------------------------- masker
@pytest.mark.parametrize("shape", [(40, 56, 40), (20, 28)])
def test_masker_zeroes_masked_keeps_rest(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3) + shape, generator=g) + 1.0  # no zeros in the input
    x[1, :, : shape[0] // 2] = 1.5
    masked, mask = GMIMMasker()(x, generator=g)
    assert masked.shape == x.shape and mask.shape == (2, 1) + shape
    m = mask.expand_as(x).bool()
    assert torch.all(masked[m] == 0)
    assert torch.equal(masked[~m], x[~m])
    assert 0.4 < mask.mean().item() < 0.6


def test_masker_different_grid_per_sample():
    x = _grid_batch_3d()
    res = GMIMMasker().mask(x, generator=torch.Generator().manual_seed(0))
    assert res.grids == choose_grid(x)[0] and len(set(res.grids)) > 1
    for b, gr in enumerate(res.grids):
        assert res.cell_ratios[b].numel() == gr ** 3


def test_mae_baseline():
    x = torch.rand(2, 1, 40, 56, 40)
    m = GMIMMasker.mae()
    assert m.fixed_grid == 8 and m.fixed_ratio == 0.75
    res = m.mask(x, generator=torch.Generator().manual_seed(0))
    assert res.grids == [8, 8] and res.scores is None
    assert all(torch.all(r == 0.75) for r in res.cell_ratios)
    ids = cell_index_map((40, 56, 40), 8).reshape(-1)
    frac = torch.bincount(ids, weights=res.mask[0, 0].reshape(-1).double()) / torch.bincount(ids).double()
    assert (frac - 0.75).abs().max() < 0.15 and abs(res.mask.mean().item() - 0.75) < 0.03
    # 2d small patch: cells must be >= 4 voxels, so grid 8 and 16 are clamped to 5 for 20x28
    assert GMIMMasker.mae().mask(torch.rand(1, 1, 20, 28)).grids == [5]
    assert GMIMMasker.mae(grid=16).mask(torch.rand(1, 1, 20, 28)).grids == [5]


# ----------------------------------------------------------------------------------------------------- hierarchical
def test_hierarchical_ratios_and_fresh_masks():
    hm = HierarchicalFeatureMasker(probability=1.0)
    cell_ratio = torch.tensor([0.5, 0.8])
    feats = [torch.ones(2, 4, 64, 64, 32), torch.ones(2, 8, 32, 32, 16), torch.ones(2, 16, 16, 16, 8),
             torch.ones(2, 32, 8, 8, 4)]
    out1, flags1 = hm(feats, cell_ratio)
    out2, flags2 = hm(feats, cell_ratio)
    assert flags1 == flags2 == [True, True, True, False]
    assert torch.equal(out1[3], feats[3])
    for i, factor in enumerate(hm.ratio_factors):
        assert not torch.equal(out1[i], out2[i])  # fresh randomness every call
        for b in range(2):
            zero_frac = (out1[i][b] == 0).float().mean().item()
            # divisible sizes: units of size//16, round(ratio * n_units) units
            n_units = 16 ** 3
            assert zero_frac == pytest.approx(round(factor * float(cell_ratio[b]) * n_units) / n_units, abs=1e-9)
            # mask shared across channels
            assert torch.equal(out1[i][b, 0] == 0, out1[i][b, -1] == 0)


def test_hierarchical_nondivisible_2d_and_probability():
    hm = HierarchicalFeatureMasker(probability=1.0)
    f = torch.rand(3, 2, 20, 28) + 1
    out, mask = hm.mask_stage(f, 0, 0.6)
    assert mask.shape == (3, 1, 20, 28)
    assert torch.all(out[mask.expand_as(f).bool()] == 0) and torch.equal(out[~mask.expand_as(f).bool()],
                                                                            f[~mask.expand_as(f).bool()])
    assert abs(mask.mean().item() - 0.3) < 0.05
    assert hm.mask_stage(f, 0, 0.6, force=False)[1] is None
    assert HierarchicalFeatureMasker(probability=0.0).mask_stage(f, 0, 0.6)[1] is None
    hp = HierarchicalFeatureMasker(probability=0.3)
    gen = torch.Generator().manual_seed(0)
    hits = sum(hp.mask_stage(f, 1, 0.5, generator=gen)[1] is not None for _ in range(400))
    assert 0.22 < hits / 400 < 0.38


def test_hierarchical_forward_hooks():
    hm = HierarchicalFeatureMasker(probability=1.0)
    stages = nn.ModuleList([nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1)])
    for p in stages.parameters():
        nn.init.constant_(p, 0.1)
    ctx = {"ratio": torch.tensor([0.5, 0.5])}
    for i, st in enumerate(stages):
        st.register_forward_hook(hm.forward_hook(i, lambda: ctx["ratio"]))
    x = torch.ones(2, 1, 32, 32)

    def run():
        h = x
        outs = []
        for st in stages:
            h = st(h)
            outs.append(h)
        return outs

    outs = run()
    assert hm.last_masked == {0: True, 1: True}
    assert abs((outs[0][:, 0] == 0).float().mean().item() - 0.25) < 1e-6
    ctx["ratio"] = None
    outs = run()
    assert hm.last_masked == {0: False, 1: False} and not (outs[0] == 0).any()
    ctx["ratio"] = 0.5
    stages.eval()
    run()
    assert hm.last_masked == {0: False, 1: False}
