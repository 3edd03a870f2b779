"""PGL / IDEAL pre-training machinery (nnunet_ssl/methods/aligned_views.py, pgl.py, ideal.py, and their trainers) on tiny networks, no data.

Trainers are built from small in-memory plans (PlainConvUNet and ResidualEncoderUNet, 2d and 3d, anisotropic
patches, 1 or 2 input channels) with nnU-Net folders in tmp; batches are random images with real view geometry.
"""
import copy

import numpy as np
import pytest
import torch

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.weights.network_parts import unwrap
from nnunet_ssl.methods.teachers import cosine_momentum
from nnunet_ssl.methods.views import ViewSamplingConfig, sample_flips, sample_two_boxes, view_cell_centres
from nnunet_ssl.methods.aligned_views import (AlignedViewsObjective, aligned_pair, level_cell_geometry,
                                             level_channels, level_spec, parse_levels)
from nnunet_ssl.methods.ideal import IDEALObjective
from nnunet_ssl.methods.pgl import PGLObjective
from nnunet_ssl_trainers.ideal import IDEALTrainer, IDEALTrainer_bottleneckOnly, IDEALTrainer_tau02
from nnunet_ssl_trainers.pgl import PGLTrainer, PGLTrainer_bottleneckOnly, PGLTrainer_ema0996
from real_networks import make_linear, ramp_views

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

# (configuration, patch, strides): the 3d patch is anisotropic and its first stride is in-plane only
GEOMETRY = {
    "3d_fullres": ((12, 24, 32), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
    "2d": ((24, 16), [[1, 1], [2, 2], [2, 2], [2, 2]]),
}


def tiny_plans(arch: str, configuration: str, features=(4, 8, 8, 8)) -> dict:
    patch, strides = GEOMETRY[configuration]
    ndim = len(patch)
    n_stages = len(strides)
    conv = "torch.nn.modules.conv.Conv3d" if ndim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if ndim == 3 else \
        "torch.nn.modules.instancenorm.InstanceNorm2d"
    kwargs = {"n_stages": n_stages, "features_per_stage": list(features), "conv_op": conv,
              "kernel_sizes": [[3] * ndim] * n_stages, "strides": strides,
              "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True, "norm_op": norm,
              "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    kwargs["n_conv_per_stage" if arch == PLAIN else "n_blocks_per_stage"] = [1] * n_stages
    cfg = {"data_identifier": f"tiny_{configuration}", "preprocessor_name": "DefaultPreprocessor",
           "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [2 * p for p in patch],
           "spacing": [3.0] + [1.0] * (ndim - 1) if ndim == 3 else [1.0, 1.0],
           "normalization_schemes": ["ZScoreNormalization"] * 2, "use_mask_for_norm": [False] * 2,
           "resampling_fn_data": "resample_data_or_seg_to_shape",
           "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                  "force_separate_z": None},
           "architecture": {"network_class_name": arch, "arch_kwargs": kwargs,
                            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
           "batch_dice": False}
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlansTiny",
            "original_median_spacing_after_transp": [3.0, 1.0, 1.0],
            "original_median_shape_after_transp": [24, 48, 40], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}, "configurations": {configuration: cfg},
            "continue_training": False}


def dataset_json(num_channels: int) -> dict:
    return {"channel_names": {str(i): f"ch{i}" for i in range(num_channels)},
            "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 4, "file_ending": ".nii.gz"}


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.delenv("NNUNET_SSL_SETTINGS", raising=False)
    for configuration in GEOMETRY:
        # initialize() infers the dataset class from the file endings of the preprocessed folder; nothing is read
        folder = tmp_path / "nnUNet_preprocessed" / "Dataset999_Tiny" / f"tiny_{configuration}"
        folder.mkdir(parents=True)
        (folder / "placeholder.b2nd").touch()
    return tmp_path


def make_trainer(cls, arch=PLAIN, configuration="3d_fullres", num_channels=1, settings=None, monkeypatch=None,
                 **attrs):
    if settings is not None:
        monkeypatch.setenv("NNUNET_SSL_SETTINGS", settings)
    trainer = cls(tiny_plans(arch, configuration), configuration, 0, dataset_json(num_channels),
                  device=torch.device("cpu"))
    for k, v in attrs.items():
        setattr(trainer, k, v)
    trainer.initialize()
    return trainer


def random_batch(trainer, batch_size=2, seed=0, disjoint_last=False):
    """Random images with real view geometry (boxes of a case 1.5x the patch, random flips)."""
    rng = np.random.RandomState(seed)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    ndim = len(patch)
    case_shape = [int(1.5 * p) for p in patch]
    cfg = ViewSamplingConfig()
    b1, b2, f1, f2 = [], [], [], []
    for _ in range(batch_size):
        x, y = sample_two_boxes(case_shape, patch, cfg, rng)
        b1.append(x), b2.append(y)
        f1.append(sample_flips(ndim, cfg, rng)), f2.append(sample_flips(ndim, cfg, rng))
    if disjoint_last:  # move view 2 of the last sample far away: no overlap
        b2[-1] = b2[-1] + 10 * np.asarray(patch)[None]
    g = torch.Generator().manual_seed(seed)
    c = trainer.num_input_channels
    return {"data_v1": torch.randn(batch_size, c, *patch, generator=g),
            "data_v2": torch.randn(batch_size, c, *patch, generator=g),
            "box_v1": torch.from_numpy(np.stack(b1)).float(), "box_v2": torch.from_numpy(np.stack(b2)).float(),
            "flip_v1": torch.from_numpy(np.stack(f1)), "flip_v2": torch.from_numpy(np.stack(f2)),
            "keys": [f"case{i}" for i in range(batch_size)]}


# --------------------------------------------------------------------------------------------- levels
def test_parse_levels_and_specs():
    assert parse_levels("bottleneck,decoder1") == ("bottleneck", "decoder1")
    assert parse_levels("bottleneck+encoder1+bottleneck") == ("bottleneck", "encoder1")
    assert parse_levels(["decoder2", "bottleneck"]) == ("decoder2", "bottleneck")
    for bad in ("", "decoder0", "decoder", "enc1", "bottleneck,foo"):
        with pytest.raises(UserInputError):
            parse_levels(bad)
    assert level_spec("bottleneck", 4) == ("encoder", 3)
    assert level_spec("encoder1", 4) == ("encoder", 2)
    assert level_spec("decoder1", 4) == ("decoder", 0)
    assert level_spec("decoder3", 4) == ("decoder", 2)
    with pytest.raises(UserInputError, match="does not exist"):
        level_spec("decoder4", 4)


def test_level_that_the_network_lacks_is_refused(nnunet_folders, monkeypatch, capsys):
    # inside nnUNetv2_train a user error ends the run with the message and exit status 2, no traceback
    with pytest.raises(SystemExit) as e:
        make_trainer(PGLTrainer, settings="levels=bottleneck+decoder7", monkeypatch=monkeypatch)
    assert e.value.code == 2
    assert "level 'decoder7' does not exist in a network with 4 stages" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- loss path
@pytest.mark.parametrize("cls", [PGLTrainer, IDEALTrainer])
@pytest.mark.parametrize("arch,configuration,channels", [(PLAIN, "3d_fullres", 1), (RESENC, "3d_fullres", 2),
                                                         (PLAIN, "2d", 2), (RESENC, "2d", 1)])
def test_loss_forward_backward(nnunet_folders, cls, arch, configuration, channels):
    trainer = make_trainer(cls, arch, configuration, channels)
    assert trainer.objective.level_names == ("bottleneck", "decoder1")
    batch = random_batch(trainer)
    loss, curves = trainer.ssl_loss(batch, train=True)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(curves) == set(trainer.all_curve_keys()) - {"skipped_steps"}
    assert curves["overlapping_samples"] == 1.0 and curves["ema_momentum"] == pytest.approx(0.99)
    assert loss.item() == pytest.approx(np.mean([curves["loss_bottleneck"], curves["loss_decoder1"]]), rel=1e-5)
    loss.backward()
    net = trainer.network
    assert net.encoder.stages[0].parameters().__next__().grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.decoder.stages[0].parameters())
    for p in trainer.ssl_modules["projectors"].parameters():
        assert p.grad is not None
    if cls is PGLTrainer:
        assert all(p.grad is not None for p in trainer.ssl_modules["predictors"].parameters())
    else:
        assert "predictors" not in trainer.ssl_modules
    for name in ("target_network", "target_projectors"):
        for p in trainer.ssl_modules[name].parameters():
            assert not p.requires_grad and p.grad is None
    # the optimizer updates network + heads, never the teachers
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in trainer.ssl_modules["target_network"].parameters()}
    assert {id(p) for p in trainer.ssl_modules["projectors"].parameters()} <= optimised


def test_samples_without_overlap_do_not_contribute(nnunet_folders):
    trainer = make_trainer(PGLTrainer)
    batch = random_batch(trainer, batch_size=3, disjoint_last=True)
    loss, curves = trainer.ssl_loss(batch, train=True)
    assert curves["overlapping_samples"] == pytest.approx(2 / 3)
    # changing the image of the non-overlapping sample changes nothing
    batch2 = dict(batch, data_v1=batch["data_v1"].clone(), data_v2=batch["data_v2"].clone())
    batch2["data_v1"][-1] = 100.0
    batch2["data_v2"][-1] = -3.0
    loss2, _ = trainer.ssl_loss(batch2, train=True)
    torch.testing.assert_close(loss2, loss)


@pytest.mark.parametrize("arch", [PLAIN, RESENC])
def test_level_shapes_and_aligned_shapes(nnunet_folders, monkeypatch, arch):
    trainer = make_trainer(PGLTrainer, arch, settings="levels=bottleneck+decoder1+encoder1+decoder3",
                           monkeypatch=monkeypatch)
    batch = random_batch(trainer)
    x, _ = trainer.objective.batch_views(batch)
    feats, anchor = trainer.objective.online_level_features(trainer.network, x)
    assert anchor is None and trainer.objective.decoder_stages_needed() == 3
    patch = trainer.configuration_manager.patch_size
    strides = np.cumprod(np.array(GEOMETRY["3d_fullres"][1]), axis=0)  # (stages, ndim)
    expect = {"bottleneck": 3, "encoder1": 2, "decoder1": 2, "decoder3": 0}
    for lvl, stage in expect.items():
        assert feats[lvl].shape == (4, level_channels(trainer.network, lvl),
                                    *[p // s for p, s in zip(patch, strides[stage])]), lvl
    seen = {}
    original = trainer.objective.level_loss

    def recording(o1, o2, t1, t2, mask):
        seen[len(seen)] = [o1.shape, o2.shape, t1.shape, t2.shape, mask.shape]
        return original(o1, o2, t1, t2, mask)

    trainer.objective.level_loss = recording
    trainer.ssl_loss(batch, train=False)
    for i, lvl in enumerate(trainer.objective.level_names):
        shapes = seen[i]
        assert len(set(shapes[:4])) == 1
        assert shapes[0] == (2, trainer.projector_dim, *feats[lvl].shape[2:])
        assert shapes[4] == (2, 1, 1, 1, 1)
    trainer.objective.align_size = 3
    seen.clear()
    trainer.ssl_loss(batch, train=False)
    assert all(s[0] == (2, trainer.projector_dim, 3, 3, 3) for s in seen.values())


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_wrapped_forward_path_matches_direct_path(nnunet_folders, configuration):
    """The DDP path (self.network(x) + hooks + zero-weight output term) gives the same loss and gradients."""
    trainer = make_trainer(IDEALTrainer, RESENC, configuration, num_samples=10 ** 6)
    batch = random_batch(trainer)
    grads = []
    for full in (False, True):
        trainer.objective.full_forward = full
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss, _ = trainer.ssl_loss(batch, train=True)
        loss.backward()
        grads.append((loss.detach(), [None if p.grad is None else p.grad.clone()
                                      for p in trainer.network.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for g_direct, g_full in zip(grads[0][1], grads[1][1]):
        if g_direct is None:  # parts the direct path does not run get an exact zero gradient on the wrapped path
            assert g_full is None or g_full.abs().max() == 0
        else:
            torch.testing.assert_close(g_direct, g_full, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("cls,final", [(PGLTrainer, 1.0), (IDEALTrainer, None)])
def test_ema_update_follows_formula(nnunet_folders, cls, final):
    trainer = make_trainer(cls, num_epochs=10, num_iterations_per_epoch=5)
    assert trainer.ema_final == final
    trainer.train_step(random_batch(trainer, seed=1))  # teacher and online differ from now on
    trainer.current_epoch, trainer._iteration_in_epoch = 3, 2
    step = 3 * 5 + 2
    expected_m = cosine_momentum(step, 50, 0.99, 0.99 if final is None else final)
    assert trainer.objective.current_momentum() == pytest.approx(expected_m)
    teacher_before = copy.deepcopy(trainer.ssl_modules["target_network"].module.state_dict())
    proj_before = copy.deepcopy(trainer.ssl_modules["target_projectors"].module.state_dict())
    out = trainer.train_step(random_batch(trainer, seed=2))
    assert out["skipped_steps"] == 0.0 and out["ema_momentum"] == pytest.approx(expected_m)
    assert trainer._iteration_in_epoch == 3
    online = trainer.network.state_dict()
    teacher = trainer.ssl_modules["target_network"].module.state_dict()
    for k, v in teacher.items():
        ref = expected_m * teacher_before[k] + (1 - expected_m) * online[k]
        torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-7)
    online_p = trainer.ssl_modules["projectors"].state_dict()
    for k, v in trainer.ssl_modules["target_projectors"].module.state_dict().items():
        torch.testing.assert_close(v, expected_m * proj_before[k] + (1 - expected_m) * online_p[k],
                                   rtol=1e-5, atol=1e-7)
    assert any((teacher[k] - online[k]).abs().max() > 0 for k in teacher)


def test_iteration_counter_resets_each_epoch(nnunet_folders):
    trainer = make_trainer(PGLTrainer, num_epochs=4, num_iterations_per_epoch=3)
    trainer._iteration_in_epoch = 7
    trainer.lr_scheduler.step = lambda *a, **k: None
    trainer.on_train_epoch_start()
    assert trainer._iteration_in_epoch == 0 and trainer.global_step() == 0
    trainer.current_epoch = 2
    assert trainer.global_step() == 6
    assert trainer.total_steps() == 12


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


# --------------------------------------------------------------------------------------------- settings, variants
def test_settings_and_variants(nnunet_folders, monkeypatch):
    t = make_trainer(IDEALTrainer, settings="ema_base=0.995,levels=bottleneck+encoder1,temperature=0.2,"
                     "num_samples=64,projector_dim=16,align_size=2", monkeypatch=monkeypatch)
    assert (t.ema_base, t.objective.level_names, t.objective.contrastive.temperature,
            t.objective.contrastive.num_samples) == \
        (0.995, ("bottleneck", "encoder1"), 0.2, 64)
    assert t.objective.current_momentum() == pytest.approx(0.995)  # IDEAL: constant key-encoder momentum by default
    assert t.objective.decoder_stages_needed() == 0
    assert t.logger.local_logger.curve_keys[:2] == ("loss_bottleneck", "loss_encoder1")
    monkeypatch.setenv("NNUNET_SSL_SETTINGS", "temperature=0.3")
    with pytest.raises(SystemExit) as e:  # PGL has no temperature: the run stops before training
        make_trainer(PGLTrainer)
    assert e.value.code == 2
    monkeypatch.delenv("NNUNET_SSL_SETTINGS")
    assert make_trainer(PGLTrainer_ema0996).ema_base == 0.996
    assert make_trainer(PGLTrainer_bottleneckOnly).objective.level_names == ("bottleneck",)
    assert make_trainer(IDEALTrainer_tau02).objective.contrastive.temperature == 0.2
    assert make_trainer(IDEALTrainer_bottleneckOnly).objective.level_names == ("bottleneck",)
    assert issubclass(PGLObjective, AlignedViewsObjective) and issubclass(IDEALObjective, AlignedViewsObjective)
    assert PGLTrainer.objective_class is PGLObjective and IDEALTrainer.objective_class is IDEALObjective


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("arch", [PLAIN, RESENC])
def test_checkpoint_holds_plain_network_and_restores_teachers(nnunet_folders, arch, tmp_path):
    trainer = make_trainer(PGLTrainer, arch, num_epochs=10, num_iterations_per_epoch=3)
    trainer.train_step(random_batch(trainer, seed=4))
    trainer.train_step(random_batch(trainer, seed=5))
    trainer.current_epoch = 1  # as if epoch 1 had ended: checkpoint says "continue at epoch 2"
    trainer.save_checkpoint(str(tmp_path / "ckpt.pth"))
    ckpt = torch.load(tmp_path / "ckpt.pth", map_location="cpu", weights_only=False)
    # network_weights load strictly into the plain nnU-Net network (what nnUNetv2_predict / fine-tuning build)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    plain = nnUNetTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                     trainer.num_input_channels, 3, False)
    plain.load_state_dict(ckpt["network_weights"], strict=True)
    assert set(ckpt["ssl_state"]) == {"projectors", "predictors", "target_network", "target_projectors"}
    fresh = make_trainer(PGLTrainer, arch, num_epochs=10, num_iterations_per_epoch=3)
    fresh.load_checkpoint(str(tmp_path / "ckpt.pth"))
    assert fresh.current_epoch == 2 and fresh.global_step() == 6
    # ssl_state holds the unwrapped modules: the target network's entry is a plain nnU-Net state dict
    plain.load_state_dict(ckpt["ssl_state"]["target_network"], strict=True)
    for name in ckpt["ssl_state"]:
        state = unwrap(fresh.ssl_modules[name]).state_dict()
        assert state.keys() == ckpt["ssl_state"][name].keys()
        for k, v in state.items():
            torch.testing.assert_close(v, ckpt["ssl_state"][name][k], rtol=0, atol=0)
    teacher = fresh.ssl_modules["target_network"].module.state_dict()
    online = fresh.network.state_dict()
    assert any((teacher[k] - online[k]).abs().max() > 0 for k in teacher)  # the teacher is not re-copied
