"""PGL / IDEAL levels and loss path: level names, gradients, samples without overlap, feature and
aligned shapes, the wrapped (DDP) forward path.

PGL / IDEAL (nnunet_ssl/methods/aligned_views.py, pgl.py, ideal.py and their trainers) on tiny networks, no data.
Tiny trainers and random batches: aligned_views_trainers.py. The other aligned-views tests:
test_aligned_views_correspondence.py and test_aligned_views_training_state.py.
"""
import numpy as np
import pytest
import torch

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.methods.aligned_views import auto_levels, level_channels, level_spec, parse_levels
from nnunet_ssl_trainers.ideal import IDEALTrainer, IDEALTrainer_shallowLevels
from nnunet_ssl_trainers.pgl import PGLTrainer

from aligned_views_trainers import (GEOMETRY, PLAIN, RESENC, make_trainer, nnunet_folders,  # noqa: F401 (fixture)
                                    random_batch)


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


@pytest.mark.parametrize("strides, expected", [
    # hippocampus 3d_fullres (nnU-Net's plans): the default levels, down to 1/4
    ([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], ("bottleneck", "decoder1")),
    # ACDC 2d: five downsamplings, bottleneck at 1/32, decoder3 at 1/4
    ([[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]], ("bottleneck", "decoder1", "decoder2", "decoder3")),
    # ACDC 3d_fullres (anisotropic): in-plane 1/32 at the bottleneck, the coarsest axis decides
    ([[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
     ("bottleneck", "decoder1", "decoder2", "decoder3")),
    # a shallow network whose bottleneck is already at 1/4: the bottleneck alone
    ([[1, 1], [2, 2], [2, 2]], ("bottleneck",)),
])
def test_auto_levels_reach_a_quarter_of_the_input_resolution(strides, expected):
    from real_networks import PLAIN as PLAIN_CLASS, architecture, build
    net = build(architecture(PLAIN_CLASS, strides))
    assert auto_levels(net) == expected
    assert auto_levels(net, finest_stride=1)[-1] == f"decoder{len(strides) - 1}"  # down to full resolution


def test_levels_auto_resolves_on_the_trainers_network(nnunet_folders, monkeypatch):
    trainer = make_trainer(IDEALTrainer, settings="levels=auto", monkeypatch=monkeypatch)
    assert trainer.objective.level_names == auto_levels(trainer.network)
    # auto is PGL's and IDEAL's default; the shallow variant keeps the former default on any network
    assert IDEALTrainer.method_defaults()["levels"] == PGLTrainer.method_defaults()["levels"] == "auto"
    monkeypatch.delenv("NNUNET_SSL_SETTINGS")
    pgl = make_trainer(PGLTrainer, configuration="2d")  # no settings: the default
    assert pgl.objective.level_names == auto_levels(pgl.network)
    assert IDEALTrainer_shallowLevels.method_defaults()["levels"] == "bottleneck,decoder1"
    assert "loss_bottleneck" in trainer.objective.all_curve_keys()
    with pytest.raises(UserInputError, match="levels=auto"):
        parse_levels("bottleneck,auto")  # auto stands alone


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
