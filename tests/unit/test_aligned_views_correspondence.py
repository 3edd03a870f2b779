"""PGL / IDEAL alignment: aligned cells show the same case location (IDEAL positives, features of
real networks for flipped and scaled views), corresponding keys lower IDEAL's loss.

PGL / IDEAL (nnunet_ssl/methods/aligned_views.py, pgl.py, ideal.py and their trainers) on tiny networks, no data.
Tiny trainers and random batches: aligned_views_trainers.py. The other aligned-views tests:
test_aligned_views_levels_and_loss.py and test_aligned_views_training_state.py.
"""
import numpy as np
import pytest
import torch

from nnunet_ssl.methods.views import view_cell_centres
from nnunet_ssl.methods.aligned_views import aligned_pair, level_cell_geometry
from nnunet_ssl.methods.ideal import IDEALObjective
from nnunet_ssl_trainers.ideal import IDEALTrainer
from nnunet_ssl_trainers.pgl import PGLTrainer
from real_networks import make_linear, ramp_views

from aligned_views_trainers import (GEOMETRY, PLAIN, RESENC, make_trainer, nnunet_folders,  # noqa: F401 (fixture)
                                    random_batch)


# --------------------------------------------------------------------------------------------- IDEAL positives
class IdentityHeads:
    """Objective mixin for probes: heads = identity, the aligned maps are the level features themselves."""

    @staticmethod
    def online_head(modules, level, features):
        return features

    @staticmethod
    def target_head(modules, level, features):
        return features


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_ideal_positives_are_corresponding_voxels(nnunet_folders, configuration):
    """Coordinate-encoding features through the trainer's own alignment: query i and key i show one location.
    (Cells placed with the network's cell geometry, as the trainer assumes; that the network really puts them
    there is test_real_network_features_of_flipped_and_scaled_views_align.)"""

    class CoordinateObjective(IdentityHeads, IDEALObjective):
        """Features = case coordinates of each cell (flips applied), heads = identity, loss inputs recorded."""
        geometry_batch = None
        recorded = []

        def _coords(self, x):
            b = self.geometry_batch
            out = {}
            for lvl, size in self.sizes.items():
                cells = level_cell_geometry(self.network, lvl)
                maps = [view_cell_centres(b[f"box_v{v}"][i], b[f"flip_v{v}"][i], size, cells, patch)
                        for v in (1, 2) for i in range(b["box_v1"].shape[0])]
                out[lvl] = torch.stack(maps).float()
            return out

        def online_level_features(self, network, x):
            return {k: v.requires_grad_(True) for k, v in self._coords(x).items()}, None

        def target_level_features(self, modules, x):
            return self._coords(x)

        def level_loss(self, o1, o2, t1, t2, mask):
            self.recorded.append((o1.detach(), o2.detach(), t1, t2, mask))
            return super().level_loss(o1, o2, t1, t2, mask)

    class CoordinateIDEAL(IDEALTrainer):
        objective_class = CoordinateObjective

    trainer = make_trainer(CoordinateIDEAL, PLAIN, configuration)
    objective = trainer.objective
    patch, strides = GEOMETRY[configuration]
    ndim = len(patch)
    cum = np.cumprod(np.array(strides), axis=0)
    objective.sizes = {"bottleneck": tuple(int(i) for i in np.array(patch) // cum[-1]),
                     "decoder1": tuple(int(i) for i in np.array(patch) // cum[-2])}
    objective.align_size = 6  # the overlap grid: finer than the bottleneck
    grid = (6,) * ndim
    batch = random_batch(trainer, batch_size=4, seed=3)
    objective.geometry_batch = batch
    loss, _ = trainer.ssl_loss(batch, train=True)
    assert torch.isfinite(loss)
    assert len(objective.recorded) == 2
    boxes1, boxes2 = batch["box_v1"].double(), batch["box_v2"].double()
    coords = objective._coords(None)
    n_inside = 0
    for (q1, q2, k1, k2, mask), lvl in zip(objective.recorded, objective.sizes):
        assert mask.flatten().tolist() == [1.0] * 4
        maps = coords[lvl].double()
        for b in range(4):
            # independent truth: cell centres of the overlap box on the alignment grid
            lo = torch.maximum(boxes1[b, 0], boxes2[b, 0])
            hi = torch.minimum(boxes1[b, 1], boxes2[b, 1])
            axes = [lo[d] + (torch.arange(6, dtype=torch.float64) + 0.5) * (hi[d] - lo[d]) / 6 for d in range(ndim)]
            truth = torch.stack(torch.meshgrid(*axes, indexing="ij"))
            # exact where the location lies between the outermost cell centres of both views' feature maps
            inside = torch.ones(grid, dtype=torch.bool)
            gap = {}
            for v, box in ((0, boxes1[b]), (1, boxes2[b])):
                m = maps[v * 4 + b].flatten(1)
                first, last = m.min(1).values, m.max(1).values
                gap[v] = torch.maximum(first - box[0], box[1] - last)  # beyond the outermost centres, per axis
                for d in range(ndim):
                    inside &= (truth[d] >= first[d] - 1e-6) & (truth[d] <= last[d] + 1e-6)
            n_inside += int(inside.sum())
            # the loss's positive pairs: (q1, k2) and (q2, k1) at the same cell show the same case location
            for q, k in ((q1, k2), (q2, k1)):
                torch.testing.assert_close(q[b][:, inside].double(), truth[:, inside], rtol=0, atol=1e-3)
                torch.testing.assert_close(k[b][:, inside].double(), truth[:, inside], rtol=0, atol=1e-3)
            # near the views' edges border padding keeps each map within the edge gap of the truth
            for q, v in ((q1, 0), (q2, 1), (k1, 0), (k2, 1)):
                err = (q[b].double() - truth).abs().flatten(1).max(1).values
                assert (err <= gap[v] + 1e-3).all()
    assert n_inside > 0.2 * 2 * 4 * 6 ** ndim
    # and the aligned pairs are the very call the trainer uses
    geometry = tuple(batch[k] for k in ("box_v1", "flip_v1", "box_v2", "flip_v2"))
    feats = coords["bottleneck"]
    a1, a2, valid = aligned_pair(feats[:4], feats[4:], geometry, grid,
                                 level_cell_geometry(trainer.network, "bottleneck"), patch)
    torch.testing.assert_close(a1, objective.recorded[0][0])
    torch.testing.assert_close(a2, objective.recorded[0][3])


@pytest.mark.parametrize("cls,arch,configuration", [(PGLTrainer, PLAIN, "3d_fullres"), (IDEALTrainer, RESENC, "2d")])
def test_real_network_features_of_flipped_and_scaled_views_align(nnunet_folders, cls, arch, configuration):
    """The trainer's own forward and alignment on its real nnU-Net network, made a linear subsampler (online and
    EMA target alike, real_networks.make_linear), heads = identity. Views hold a linear function of their case
    coordinates, so at every level the aligned online and target maps of both views must be that function at the
    overlap's cells, for flipped and scaled views. Truth derived by hand: nnU-Net's kernel-3, padding-1 convs put
    cell j of a level with cumulative stride S on input voxel S * j (the (j + 0.5) * S convention fails here)."""

    class ProbeObjective(IdentityHeads, cls.objective_class):
        recorded = []

        def level_loss(self, o1, o2, t1, t2, mask):
            self.recorded.append((o1.detach(), o2.detach(), t1, t2))
            return o1.sum() * 0.0

    class Probe(cls):
        objective_class = ProbeObjective

    levels = ("bottleneck", "encoder1", "decoder1")
    trainer = make_trainer(Probe, arch, configuration, levels=",".join(levels), align_size=8)
    for net in (trainer.network, trainer.ssl_modules["target_network"].module):
        make_linear(net, "delta")
    patch, strides = GEOMETRY[configuration]
    ndim = len(patch)
    cum = np.cumprod(np.array(strides), axis=0)
    stride = {"bottleneck": cum[-1], "encoder1": cum[-2], "decoder1": cum[-2]}
    batch = random_batch(trainer, batch_size=4, seed=7)
    assert (batch["flip_v1"] != batch["flip_v2"]).any()
    coeff = np.array([1.0, 0.73, 0.41][:ndim])
    runs = {}
    for name, make in (("ramp", lambda b, f: ramp_views(b, f, patch, coeff)),
                       ("ones", lambda b, f: torch.ones(len(b), 1, *patch, dtype=torch.float64))):
        trainer.objective.recorded = []
        trainer.ssl_loss(dict(batch, data_v1=make(batch["box_v1"], batch["flip_v1"]),
                              data_v2=make(batch["box_v2"], batch["flip_v2"])), train=False)
        runs[name] = trainer.objective.recorded
    boxes = [batch["box_v1"].double(), batch["box_v2"].double()]
    flips = [batch["flip_v1"], batch["flip_v2"]]
    checked = 0
    for lvl, maps, ones in zip(levels, runs["ramp"], runs["ones"]):
        gain = ones[0].flatten()[0]
        # a subsampler: every cell of a ones input is the gain
        assert all(((u - gain).abs() < 1e-12 * gain).all() for u in ones)
        S = torch.from_numpy(stride[lvl]).double()
        F = torch.tensor(patch, dtype=torch.float64) // S
        for b in range(4):
            lo = torch.maximum(boxes[0][b, 0], boxes[1][b, 0])
            hi = torch.minimum(boxes[0][b, 1], boxes[1][b, 1])
            axes = [lo[d] + (torch.arange(8, dtype=torch.float64) + 0.5) * (hi[d] - lo[d]) / 8 for d in range(ndim)]
            truth = torch.stack(torch.meshgrid(*axes, indexing="ij"))
            # exact between the outermost cell centres of both views (input voxels 0 and (F - 1) * S, mirrored on
            # flipped axes; beyond them "border" padding clamps)
            inside = torch.ones((8,) * ndim, dtype=torch.bool)
            for box, flip in zip(boxes, flips):
                step = (box[b, 1] - box[b, 0]) / torch.tensor(patch, dtype=torch.float64)
                first, last = 0.5 * step, ((F - 1) * S + 0.5) * step
                first, last = (torch.where(flip[b], box[b, 1] - last, box[b, 0] + first),
                               torch.where(flip[b], box[b, 1] - first, box[b, 0] + last))
                for d in range(ndim):
                    inside &= (truth[d] >= first[d] - 1e-9) & (truth[d] <= last[d] + 1e-9)
            value = torch.einsum("d,d...->...", torch.from_numpy(coeff), truth)
            for m in maps:
                torch.testing.assert_close(m[b][:, inside] / gain, value[inside].expand(m.shape[1], -1),
                                           rtol=0, atol=1e-6, msg=lambda s: f"{lvl}, sample {b}: {s}")
            checked += int(inside.sum())
    assert checked > 100


def test_ideal_loss_prefers_corresponding_keys(nnunet_folders):
    """With identity heads on random per-location features, matching keys give a lower loss than shuffled ones."""
    trainer = make_trainer(IDEALTrainer)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 16, 4, 4, 4, generator=g)
    k = q + 0.05 * torch.randn(q.shape, generator=g)
    mask = torch.ones(2, 1, 1, 1, 1)
    matched = trainer.objective.level_loss(q, q, k, k, mask)
    shuffled = k.flatten(2)[:, :, torch.randperm(64, generator=g)].view_as(k)
    assert matched < trainer.objective.level_loss(q, q, shuffled, shuffled, mask) - 1.0
