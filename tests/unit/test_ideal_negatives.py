"""IDEAL's dense InfoNCE: negatives near the anchor (interpolations of the same features) are excluded.

Issue 20 item 3. ``DenseInfoNCELoss`` takes the case coordinates of the aligned cells (``coords``) and drops every
negative closer than ``negative_exclusion_radius`` to the anchor (same case only); optionally negatives also come
from the other cases of the batch. Radius 0 is the previous behaviour. The IDEAL trainer passes the overlap grid's
case coordinates and, by default, a radius of one feature cell of the level.
"""
import math

import numpy as np
import pytest
import torch

from nnunet_ssl.methods.objectives import DenseInfoNCELoss

from aligned_views_trainers import make_trainer, nnunet_folders, random_batch  # noqa: F401 (fixture)
from test_objectives import _infonce_loop


def _grid_coords(batch, spatial, spacing=1.0):
    axes = [torch.arange(s, dtype=torch.float64) * spacing for s in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.unsqueeze(0).expand(batch, *grid.shape).clone()


def _loop_with_exclusion(q, k, t, coords, radius, case_ids=None, cross_case=False):
    """Direct formula: all voxels sampled; negatives = k_j, q_j (j != i) of the anchor's sample (and of the other
    samples with ``cross_case``) except those of the same case closer than ``radius`` to the anchor."""
    b_, c = q.shape[:2]
    qv = torch.nn.functional.normalize(q.double().reshape(b_, c, -1), dim=1)
    kv = torch.nn.functional.normalize(k.double().reshape(b_, c, -1), dim=1)
    pos = coords.double().reshape(b_, coords.shape[1], -1)
    ids = list(range(b_)) if case_ids is None else list(case_ids)
    radii = [float(radius)] * b_ if not torch.is_tensor(radius) else [float(r) for r in radius]
    n = qv.shape[2]
    losses = []
    for b in range(b_):
        for i in range(n):
            a = qv[b, :, i]
            terms = [math.exp(float(a @ kv[b, :, i]) / t)]
            neg = 0
            for s in (range(b_) if cross_case else [b]):
                for j in range(n):
                    if s == b and j == i:
                        continue
                    if ids[s] == ids[b] and float((pos[b, :, i] - pos[s, :, j]).norm()) < radii[b]:
                        continue
                    terms += [math.exp(float(a @ kv[s, :, j]) / t), math.exp(float(a @ qv[s, :, j]) / t)]
                    neg += 2
            if neg:
                losses.append(-math.log(terms[0] / sum(terms)))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius,cross_case,case_ids", [(1.5, False, None), (2.5, True, None),
                                                        (1.1, True, [7, 7, 3])])
def test_exclusion_matches_loop_formula(ndim, radius, cross_case, case_ids):
    torch.manual_seed(0)
    spatial = (3, 4) if ndim == 2 else (2, 3, 3)
    q, k = torch.randn(3, 4, *spatial), torch.randn(3, 4, *spatial)
    coords = _grid_coords(3, spatial, spacing=0.9) + torch.randn(3, ndim, *[1] * ndim).double()
    loss = DenseInfoNCELoss(temperature=0.2, num_samples=1000, cross_case_negatives=cross_case)
    value = loss(q, k, coords=coords, radius=radius, case_ids=case_ids)
    assert value.item() == pytest.approx(_loop_with_exclusion(q, k, 0.2, coords, radius, case_ids, cross_case),
                                         rel=1e-5)


def test_per_sample_radius_and_constructor_default():
    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 3, 4), torch.randn(2, 4, 3, 4)
    coords = _grid_coords(2, (3, 4))
    radii = torch.tensor([0.0, 1.5])
    value = DenseInfoNCELoss(num_samples=1000)(q, k, coords=coords, radius=radii)
    assert value.item() == pytest.approx(_loop_with_exclusion(q, k, 0.1, coords, radii), rel=1e-5)
    # the module's own radius applies when none is passed; without coords the grid's cell indices are used
    by_default = DenseInfoNCELoss(num_samples=1000, negative_exclusion_radius=1.5)(q, k)
    assert by_default.item() == pytest.approx(_loop_with_exclusion(q, k, 0.1, coords, 1.5), rel=1e-5)


def test_radius_zero_is_the_previous_behaviour():
    torch.manual_seed(2)
    q, k = torch.randn(2, 5, 3, 3, 4), torch.randn(2, 5, 3, 3, 4)
    valid = torch.rand(2, 1, 3, 3, 4) > 0.3
    coords = _grid_coords(2, (3, 3, 4))
    loss = DenseInfoNCELoss(temperature=0.1, num_samples=1000)
    assert loss.negative_exclusion_radius == 0.0 and not loss.cross_case_negatives
    with_coords = loss(q, k, valid, coords=coords, radius=0.0)
    assert with_coords.item() == pytest.approx(_infonce_loop(q, k, 0.1, valid), rel=1e-6)
    # identical sampling and value with and without coordinates (radius 0 ignores them)
    small = DenseInfoNCELoss(temperature=0.1, num_samples=8)
    a = small(q, k, valid, generator=torch.Generator().manual_seed(3))
    b = small(q, k, valid, generator=torch.Generator().manual_seed(3), coords=coords, radius=0.0)
    assert a.item() == b.item()


def _block_copies(batch=2, size=8, block=2):
    """Features constant on ``block``^3 voxel blocks, one orthonormal vector per block: the voxels of a block are
    identical copies of each other (what interpolation at a fine aligned grid produces), other blocks orthogonal."""
    n_blocks = (size // block) ** 3
    eye = torch.eye(n_blocks)
    ids = torch.arange(n_blocks).view(*(size // block,) * 3)
    for d in range(3):
        ids = ids.repeat_interleave(block, dim=d)
    f = eye[ids].permute(3, 0, 1, 2).unsqueeze(0).repeat(batch, 1, 1, 1, 1)
    return f, _grid_coords(batch, (size,) * 3)


def test_identical_neighbour_copies_are_not_used_as_negatives():
    q, coords = _block_copies()
    t = 0.01
    # radius 0 (previous behaviour): the copies of the positive in both views sit in the denominator, so even a
    # perfect positive pays about log(1 + 2 * 7) per anchor
    old = DenseInfoNCELoss(temperature=t, num_samples=512)(q, q.clone(), coords=coords, radius=0.0)
    assert old.item() > math.log(2 * 7)
    # radius 1.8 > the block's diagonal (sqrt(3)): no copy is ever a negative, whatever voxels are sampled, so the
    # loss is that of orthogonal negatives only, e^{-1/t} ~ 0 (a single copy would add >= log(2) / 128)
    for seed in range(4):
        for cross_case, ids in ((False, None), (True, [5, 5])):
            loss = DenseInfoNCELoss(temperature=t, num_samples=64, cross_case_negatives=cross_case)
            value = loss(q, q.clone(), coords=coords, radius=1.8, case_ids=ids,
                         generator=torch.Generator().manual_seed(seed))
            assert value.item() < 1e-6, (seed, cross_case, value.item())
    # the same two samples declared different cases: their copies are legitimate negatives of each other
    other = DenseInfoNCELoss(temperature=t, num_samples=512, cross_case_negatives=True)
    assert other(q, q.clone(), coords=coords, radius=1.8, case_ids=[0, 1]).item() > math.log(2)


def test_exclusion_mask_never_keeps_a_candidate_within_the_radius():
    from nnunet_ssl.methods.objectives.dense_infonce import exclusion_mask
    g = torch.Generator().manual_seed(4)
    a = torch.rand(50, 3, generator=g, dtype=torch.float64) * 5
    c = torch.cat([a[:10] + 0.01, torch.rand(60, 3, generator=g, dtype=torch.float64) * 5])
    excluded = exclusion_mask(a, c, 1.0)
    dist = torch.cdist(a, c)
    assert excluded[dist < 0.999].all() and not excluded[dist > 1.0].any()
    assert exclusion_mask(a, c, 0.0).sum() == 0
    # a candidate exactly one radius away (up to rounding) is kept: the next, distinct feature cell
    grid = torch.tensor([[0.1 + 0.3 * i, 0.0, 0.0] for i in range(4)], dtype=torch.float64)
    assert exclusion_mask(grid, grid, 0.3).int().tolist() == torch.eye(4, dtype=torch.int).tolist()


def test_bad_arguments():
    with pytest.raises(ValueError):
        DenseInfoNCELoss(negative_exclusion_radius=-1.0)
    q = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError):
        DenseInfoNCELoss()(q, q, coords=torch.zeros(2, 3, 3, 3), radius=1.0)  # 3 coordinates in 2d
    with pytest.raises(ValueError):
        DenseInfoNCELoss()(q, q, coords=torch.zeros(2, 2, 3, 3), radius=1.0, case_ids=[0])


# --------------------------------------------------------------------------------------------- IDEAL trainer
def _record_contrastive_calls(trainer):
    calls = []
    original = trainer.objective.contrastive.forward

    def recording(q, k, valid=None, generator=None, **kw):
        calls.append(kw)
        return original(q, k, valid, generator, **kw)

    trainer.objective.contrastive.forward = recording
    return calls


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_trainer_passes_overlap_coordinates_and_one_feature_cell(nnunet_folders, configuration):
    from nnunet_ssl_trainers.ideal import IDEALTrainer
    trainer = make_trainer(IDEALTrainer, configuration=configuration)
    assert trainer.negative_exclusion_radius is None and trainer.cross_case_negatives is False
    batch = random_batch(trainer, batch_size=3, seed=5)
    batch["keys"] = ["a", "b", "a"]
    calls = _record_contrastive_calls(trainer)
    loss, _ = trainer.ssl_loss(batch, train=True)
    assert torch.isfinite(loss)
    assert len(calls) == 2 * len(trainer.objective.level_names)  # two directions per level
    patch = np.asarray(trainer.configuration_manager.patch_size, dtype=np.float64)
    b1, b2 = batch["box_v1"].double(), batch["box_v2"].double()
    lo, hi = torch.maximum(b1[:, 0], b2[:, 0]), torch.minimum(b1[:, 1], b2[:, 1])
    for lvl, kw in zip(np.repeat(trainer.objective.level_names, 2), calls):
        coords = kw["coords"].cpu()
        size = coords.shape[2:]
        ndim = len(size)
        for b in range(3):
            axes = [lo[b, d] + (torch.arange(size[d], dtype=torch.float64) + 0.5) * (hi[b, d] - lo[b, d]) / size[d]
                    for d in range(ndim)]
            torch.testing.assert_close(coords[b].double(), torch.stack(torch.meshgrid(*axes, indexing="ij")))
        # default radius: one feature cell of the level in case voxels (the coarser of the two views)
        stride = patch / np.asarray(size, dtype=np.float64)  # align_size 0: aligned grid = feature-map size
        expected = [max(float(((bx[b, 1] - bx[b, 0]).numpy() / patch * stride).max()) for bx in (b1, b2))
                    for b in range(3)]
        assert torch.as_tensor(kw["radius"]).double().tolist() == pytest.approx(expected, rel=1e-6), lvl
        assert [int(i) for i in kw["case_ids"]] == [0, 1, 0]  # the same case shares one coordinate frame


def test_trainer_settings_reach_the_loss_and_radius_zero_restores_the_old_loss(nnunet_folders, monkeypatch):
    from nnunet_ssl_trainers.ideal import IDEALTrainer
    t = make_trainer(IDEALTrainer, settings="negative_exclusion_radius=0,cross_case_negatives=1",
                     monkeypatch=monkeypatch)
    assert t.negative_exclusion_radius == 0.0 and t.objective.contrastive.cross_case_negatives is True
    monkeypatch.setenv("NNUNET_SSL_SETTINGS", "negative_exclusion_radius=0")
    t = make_trainer(IDEALTrainer)
    batch = random_batch(t, batch_size=2, seed=6)
    calls = _record_contrastive_calls(t)
    torch.manual_seed(0)
    new, _ = t.ssl_loss(batch, train=True)
    assert all(float(kw["radius"]) == 0.0 for kw in calls)
    # the previous loss: the same call without coordinates
    t.objective.contrastive.forward = lambda q, k, valid=None, generator=None, **kw: DenseInfoNCELoss.forward(
        t.objective.contrastive, q, k, valid, generator)
    torch.manual_seed(0)
    old, _ = t.ssl_loss(batch, train=True)
    assert new.item() == pytest.approx(old.item(), rel=1e-6)
    monkeypatch.setenv("NNUNET_SSL_SETTINGS", "negative_exclusion_radius=-2")
    with pytest.raises(SystemExit):
        make_trainer(IDEALTrainer)
