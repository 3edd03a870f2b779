"""PGL / IDEAL training state: the EMA teacher update, the step counter, settings and variants,
checkpoints.

PGL / IDEAL (nnunet_ssl/methods/aligned_views.py, pgl.py, ideal.py and their trainers) on tiny networks, no data.
Tiny trainers and random batches: aligned_views_trainers.py. The other aligned-views tests:
test_aligned_views_levels_and_loss.py and test_aligned_views_correspondence.py.
"""
import copy

import pytest
import torch

from nnunet_ssl.weights.network_parts import unwrap
from nnunet_ssl.methods.teachers import cosine_momentum
from nnunet_ssl.methods.aligned_views import AlignedViewsObjective
from nnunet_ssl.methods.ideal import IDEALObjective
from nnunet_ssl.methods.pgl import PGLObjective
from nnunet_ssl_trainers.ideal import (IDEALTrainer, IDEALTrainer_bottleneckOnly, IDEALTrainer_deepLevels,
                                       IDEALTrainer_insideViews, IDEALTrainer_tau02)
from nnunet_ssl_trainers.pgl import PGLTrainer, PGLTrainer_bottleneckOnly, PGLTrainer_ema0996

from aligned_views_trainers import PLAIN, RESENC, make_trainer, nnunet_folders, random_batch  # noqa: F401 (fixture)


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
    assert make_trainer(IDEALTrainer_deepLevels).objective.level_names == ("bottleneck", "decoder1", "decoder2",
                                                                           "decoder3")
    assert issubclass(PGLObjective, AlignedViewsObjective) and issubclass(IDEALObjective, AlignedViewsObjective)
    assert PGLTrainer.objective_class is PGLObjective and IDEALTrainer.objective_class is IDEALObjective


def test_view_placement_reaches_the_loader(nnunet_folders, monkeypatch):
    """PGL keeps views inside the case, IDEAL centres them anywhere in it (its benchmarked default); the variant
    and the setting change it, and a wrong value stops the run before training."""
    assert make_trainer(PGLTrainer).view_sampling_config().placement == "inside"
    assert make_trainer(IDEALTrainer).view_sampling_config().placement == "centre"
    assert make_trainer(IDEALTrainer_insideViews).view_sampling_config().placement == "inside"
    t = make_trainer(PGLTrainer, settings="view_placement=centre", monkeypatch=monkeypatch)
    assert t.view_sampling_config().placement == "centre"
    monkeypatch.setenv("NNUNET_SSL_SETTINGS", "view_placement=anywhere")
    with pytest.raises(SystemExit) as e:
        make_trainer(PGLTrainer)
    assert e.value.code == 2


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
