"""IDEAL semi-supervised fine-tuning: two-decoder network, CPS step, unlabeled pool, plans comparison."""
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.methods.objectives.cross_pseudo_supervision import CrossPseudoSupervisionLoss
from nnunet_ssl.data.plans_compat import DATA_ASPECTS, plans_differences
from nnunet_ssl.methods.semi_supervised import (consistency_weight_at, default_rampup_epochs, sigmoid_rampup,
                                                two_decoder_semi_supervised_loss)
from nnunet_ssl.methods.two_decoder_unet import TwoDecoderUNet
from nnunet_ssl_trainers.ideal_semi import build_two_decoder_unet

from tiny_nnunet_data import CONFIG, make_trainer, tiny_plans, write_tiny_dataset

NUM_CLASSES = 3


def _managers(ndim=3, n_stages=2, features=(4, 8, 8)):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(tiny_plans(ndim=ndim, n_stages=n_stages, features=features[:n_stages]))
    return pm, pm.get_configuration(CONFIG if ndim == 3 else "2d")


def _net(ndim=3, n_stages=2, deep_supervision=True, seed=0):
    pm, cm = _managers(ndim, n_stages)
    torch.manual_seed(seed)
    return build_two_decoder_unet(pm, cm, 1, NUM_CLASSES, deep_supervision)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


# ---------------------------------------------------------------- network

def test_state_dict_keys_and_loading_by_name():
    from nnunet_ssl.weights.transfer import transfer_weights
    from nnunet_ssl_trainers.ideal_semi import IDEALSemiSupervisedTrainer
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    pm, cm = _managers(n_stages=2)
    net = _net(n_stages=2)
    keys = list(net.state_dict())
    for prefix in ("encoder.", "decoder.", "decoder.encoder.", "decoder_b."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert not any(k.startswith("decoder_b.encoder.") for k in keys)
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in net.decoder_b.modules())
    assert all(isinstance(c, nn.Conv3d) and c.kernel_size == (1, 1, 1) for c in net.decoder_b.upconvs)  # cheap
    assert any(isinstance(m, nn.ConvTranspose3d) for m in net.decoder.modules())

    plain = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                   cm.network_arch_init_kwargs_req_import, 1, NUM_CLASSES, deep_supervision=True)
    assert {k for k in keys if not k.startswith("decoder_b.")} == set(plain.state_dict())

    # inference builds the network through the STATIC method and loads the checkpoint strictly
    net2 = IDEALSemiSupervisedTrainer.build_network_architecture(pm, cm, 1, NUM_CLASSES, False)
    assert isinstance(net2, TwoDecoderUNet) and list(net2.state_dict()) == keys
    net2.load_state_dict(net.state_dict())

    # a plain nnU-Net checkpoint loads by name into encoder + decoder A; decoder_b keeps its initialisation
    report = transfer_weights(net2, {"network_weights": plain.state_dict()})
    assert not any(k.startswith("decoder_b.") for k in report.loaded)
    b_keys = {k for k in keys if k.startswith("decoder_b.")}
    assert {k for k, _ in report.skipped if k.startswith("decoder_b.")} == b_keys
    assert torch.equal(net2.encoder.stages[0][0].convs[0].conv.weight, plain.encoder.stages[0][0].convs[0].conv.weight)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_eval_output_is_log_of_averaged_softmax(ndim, deep_supervision):
    net = _net(ndim=ndim, n_stages=3, deep_supervision=deep_supervision)
    x = torch.randn(2, 1, *[16] * ndim)
    net.eval()
    with torch.no_grad():
        out = net(x)
        a, b = net.forward_both(x)
    assert isinstance(out, list) == deep_supervision
    for o, oa, ob in zip(_as_list(out), _as_list(a), _as_list(b)):
        p = (torch.softmax(oa, 1) + torch.softmax(ob, 1)) / 2
        assert o.shape == oa.shape == ob.shape
        assert torch.allclose(torch.softmax(o, 1), p, atol=1e-6)
        assert torch.allclose(o, torch.log(p), atol=1e-5)
        assert not torch.allclose(torch.softmax(oa, 1), p, atol=1e-4)  # really both decoders


def test_training_forward_and_deep_supervision_flag():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    net = _net(n_stages=3, deep_supervision=True)
    x = torch.randn(2, 1, 16, 16, 16)
    net.train()
    a, b = net.forward_both(x)
    assert isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2
    assert [t.shape for t in a] == [t.shape for t in b] == [(2, NUM_CLASSES, 16, 16, 16), (2, NUM_CLASSES, 8, 8, 8)]
    out = net(x)  # training mode: what nnU-Net's loss expects, decoder A
    assert all(torch.equal(o, t) for o, t in zip(out, net.decoder(net.encoder(x))))

    # nnU-Net's own switch (sets network.decoder.deep_supervision); decoder_b follows
    fake_trainer = types.SimpleNamespace(is_ddp=False, network=net)
    nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, False)
    a, b = net.forward_both(x)
    assert torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape == (2, NUM_CLASSES, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.is_tensor(net(x))
    nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, True)
    with torch.no_grad():
        assert isinstance(net(x), list)


def test_predictor_averages_both_decoders():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    pm, cm = _managers(n_stages=3)
    net = build_two_decoder_unet(pm, cm, 1, NUM_CLASSES, False)
    # no Gaussian weighting: nnU-Net accumulates in float16, the Gaussian's tiny border weights would dominate
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=False, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(net, pm, cm, None, {"labels": {"background": 0, "a": 1, "b": 2},
                                                        "channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"},
                                    "IDEALSemiSupervisedTrainer", None)
    x = torch.randn(1, 16, 16, 16)  # exactly one tile
    logits = predictor.predict_sliding_window_return_logits(x)
    net.eval()
    with torch.no_grad():
        a, b = net.forward_both(x[None])
    p = (torch.softmax(a, 1) + torch.softmax(b, 1))[0] / 2
    assert torch.allclose(torch.softmax(logits.float(), 0), p, atol=2e-3)  # float16 accumulation


# ---------------------------------------------------------------- loss

def test_cps_targets_carry_no_gradient():
    torch.manual_seed(0)
    la = torch.randn(2, NUM_CLASSES, 4, 5, 6, requires_grad=True)
    lb = torch.randn(2, NUM_CLASSES, 4, 5, 6, requires_grad=True)
    CrossPseudoSupervisionLoss()(la, lb).backward()
    # reference: each decoder's logits get the gradient of their own CE against the OTHER's detached argmax only
    ra, rb = la.detach().clone().requires_grad_(), lb.detach().clone().requires_grad_()
    (F.cross_entropy(ra, rb.detach().argmax(1)) + F.cross_entropy(rb, ra.detach().argmax(1))).backward()
    assert torch.allclose(la.grad, ra.grad, atol=1e-7) and torch.allclose(lb.grad, rb.grad, atol=1e-7)
    # the teacher side of each term gets nothing: with la's term alone, lb receives no gradient at all
    la.grad = lb.grad = None
    cps = CrossPseudoSupervisionLoss()
    (cps(la, lb) - F.cross_entropy(lb, la.detach().argmax(1))).backward()
    assert torch.allclose(lb.grad, torch.zeros_like(lb.grad), atol=1e-7)


def _nnunet_loss(ds_weights):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, ds_weights)


def _grads(net, fn):
    net.zero_grad(set_to_none=True)
    fn().backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}


def test_weight_zero_step_equals_supervised_step_and_weight_adds_cps():
    net = _net(n_stages=3, deep_supervision=True)
    net.train()
    torch.manual_seed(1)
    data, data_u = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    full = torch.randint(0, NUM_CLASSES, (2, 1, 16, 16, 16))
    target = [full, full[:, :, ::2, ::2, ::2]]
    ds_weights = (2 / 3, 1 / 3)
    loss_fn, cps = _nnunet_loss(ds_weights), CrossPseudoSupervisionLoss()

    def supervised():
        a, b = net.forward_both(data)
        return loss_fn(a, target) + loss_fn(b, target)

    def semi(weight):
        return two_decoder_semi_supervised_loss(net.forward_both, loss_fn, cps, data, target, data_u, weight,
                                                ds_weights)[0]

    g_sup = _grads(net, supervised)
    g_zero = _grads(net, lambda: semi(0.0))
    assert all(torch.equal(g_sup[n], g_zero[n]) for n in g_sup)
    assert any(g.abs().sum() > 0 for n, g in g_sup.items() if n.startswith("decoder_b."))  # both decoders trained

    w = 0.7
    g_cps = _grads(net, lambda: cps(*net.forward_both(data_u), weights=ds_weights))
    g_semi = _grads(net, lambda: semi(w))
    for n in g_sup:
        assert torch.allclose(g_semi[n], g_sup[n] + w * g_cps[n], atol=1e-5, rtol=1e-4), n
    assert any(not torch.allclose(g_semi[n], g_sup[n]) for n in g_sup)


def test_rampup():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(50, 10) == 1.0 and sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(e, 10) for e in range(12)]
    assert all(x <= y for x, y in zip(values, values[1:]))
    assert consistency_weight_at(5, 2.0, 10) == pytest.approx(2.0 * math.exp(-5 * 0.25))


def test_default_rampup_epochs():
    assert default_rampup_epochs(1000, 250) == 100  # nnU-Net's schedule: 10 % of the epochs
    assert default_rampup_epochs(100, 250) == 10  # 10 % (2500 iterations) is above the 2000-iteration floor
    assert default_rampup_epochs(200, 5) == 100  # floor 400 epochs, capped at half the training
    assert default_rampup_epochs(16, 50) == 8  # the benchmark's quick schedule: the cap, not 1 epoch
    assert default_rampup_epochs(60, 100) == 20  # the floor: 2000 iterations
    assert default_rampup_epochs(60, 100, min_iterations=0) == 6
    assert default_rampup_epochs(1, 250) == 1 and default_rampup_epochs(3, 1) == 1
    with pytest.raises(ValueError):
        default_rampup_epochs(0, 250)


# ---------------------------------------------------------------- plans comparison

def test_plans_differences():
    a = tiny_plans()
    assert plans_differences(a, tiny_plans(), CONFIG) == []

    def changed(fn):
        b = tiny_plans()
        fn(b["configurations"][CONFIG], b)
        return plans_differences(a, b, CONFIG, names=("down", "unl"))

    d = changed(lambda c, p: c.__setitem__("spacing", [1.0, 1.0, 2.0]))
    assert len(d) == 1 and d[0].startswith("spacing:") and "[1.0, 1.0, 2.0] (unl)" in d[0]
    assert changed(lambda c, p: c.__setitem__("patch_size", [32, 16, 16]))[0].startswith("patch size:")
    assert changed(lambda c, p: c.__setitem__("normalization_schemes", ["CTNormalization"]))[0].startswith(
        "normalisation:")
    assert changed(lambda c, p: c.__setitem__("data_identifier", "other_3d"))[0].startswith("data_identifier:")
    d = changed(lambda c, p: c["architecture"]["arch_kwargs"].__setitem__("features_per_stage", [8, 8, 8]))
    assert d == ["architecture: arch_kwargs.features_per_stage: [4, 8, 8] (down) vs [8, 8, 8] (unl)"]
    assert changed(lambda c, p: p.__setitem__("transpose_forward", [2, 1, 0]))[0].startswith("transpose:")
    # the data-only comparison ignores patch size and architecture
    b = tiny_plans(features=(16, 16, 16), patch=[8, 8, 8])
    assert len(plans_differences(a, b, CONFIG)) == 2 and plans_differences(a, b, CONFIG, aspects=DATA_ASPECTS) == []
    assert plans_differences(a, tiny_plans(ndim=2), CONFIG)[0].startswith("configuration: '3d_fullres' is missing")
    # inherits_from is resolved
    b = tiny_plans()
    b["configurations"]["3d_child"] = {"inherits_from": CONFIG, "spacing": [2.0, 2.0, 2.0]}
    a2 = tiny_plans()
    a2["configurations"]["3d_child"] = {"inherits_from": CONFIG}
    assert [x.split(":")[0] for x in plans_differences(a2, b, "3d_child")] == ["spacing"]


# ---------------------------------------------------------------- trainer, unlabeled pool

@pytest.fixture()
def env(tiny_nnunet_env):
    return tiny_nnunet_env


def _ideal(env, settings=""):
    from nnunet_ssl_trainers.ideal_semi import IDEALSemiSupervisedTrainer
    env.mp.setenv("NNUNET_SSL_SETTINGS", settings)
    trainer = make_trainer(IDEALSemiSupervisedTrainer, env.plans, env.dataset_json)
    trainer.initialize()
    return trainer


def test_no_unlabeled_pool_is_a_clear_error(env):
    trainer = _ideal(env, "label_budget=3")
    with pytest.raises(UserInputError) as e:
        trainer.get_dataloaders()
    assert "NNUNET_SSL_UNLABELED_DATASET=" in str(e.value) and "budget_rest=unlabeled" in str(e.value)


def test_consistency_defaults_and_overrides(env):
    trainer = _ideal(env, "label_budget=3,num_epochs=16,num_iterations_per_epoch=50")
    assert trainer.cps_loss.confidence_threshold == 0.9 and trainer.consistency_rampup_epochs == 8
    assert trainer.cps_loss.dice is None  # pseudo-labels teach with CE only unless cps_dice is set
    trainer = _ideal(env, "label_budget=3,cps_confidence_threshold=0.0,consistency_rampup_epochs=3,cps_dice=true")
    assert trainer.cps_loss.confidence_threshold == 0.0 and trainer.consistency_rampup_epochs == 3
    dice = trainer.cps_loss.dice  # nnU-Net's soft Dice as its own loss uses it: no background, the plans' batch Dice
    assert type(dice).__name__ == "MemoryEfficientSoftDiceLoss" and not dice.do_bg
    assert dice.batch_dice == trainer.configuration_manager.batch_dice


def test_budget_rest_pool_and_train_step(env):
    trainer = _ideal(env, "label_budget=3,label_seed=2,budget_rest=unlabeled,batch_size=2,"
                          "consistency_rampup_epochs=0")
    np.random.seed(0)
    dl_tr, _ = trainer.get_dataloaders()
    labeled = set(trainer.do_split()[0])
    rest = set(env.train) - labeled
    assert len(labeled) == 3 and trainer.unlabeled_rest_keys() == sorted(rest)
    seen_l, seen_u = set(), set()
    for _ in range(12):
        seen_l |= set(next(dl_tr)["keys"])
        seen_u |= set(next(trainer.dataloader_unlabeled)["keys"])
    assert seen_l == labeled and seen_u <= rest and len(seen_u) >= 3 and not seen_u & set(env.val)

    trainer.network.train()
    trainer.set_deep_supervision_enabled(True)
    out = trainer.train_step(next(dl_tr))
    assert np.isfinite(out["loss"]) and np.isfinite(out["cps_loss"]) and out["consistency_weight"] == 1.0
    assert out["loss"] == pytest.approx(out["sup_loss"] + out["cps_loss"], rel=1e-5)
    trainer.cps_loss = CrossPseudoSupervisionLoss(0.0, dice=trainer.cps_dice_loss())  # cps_dice on 3d deep supervision
    out = trainer.train_step(next(dl_tr))
    assert np.isfinite(out["cps_loss"]) and out["loss"] == pytest.approx(out["sup_loss"] + out["cps_loss"], rel=1e-5)
    trainer.consistency_weight = 0.0
    out = trainer.train_step(next(dl_tr))
    assert math.isnan(out["cps_loss"]) and out["loss"] == pytest.approx(out["sup_loss"])


def test_external_unlabeled_dataset(env):
    write_tiny_dataset(env.pre, "Dataset951_FakeUnl", n_cases=4, labeled=False, with_splits=False,
                       case_prefix="unl", seed=3)
    env.mp.setenv("NNUNET_SSL_UNLABELED_DATASET", "951")
    trainer = _ideal(env, "label_budget=4,budget_rest=unlabeled")
    trainer.get_dataloaders()
    ids = trainer.unlabeled_pool.identifiers
    assert sum(i.startswith("Dataset951_FakeUnl:unl_") for i in ids) == 4 and len(ids) == 4 + 4
    keys = set()
    for _ in range(15):
        keys |= set(next(trainer.dataloader_unlabeled)["keys"])
    assert any(k.startswith("Dataset951_FakeUnl:") for k in keys)


def test_external_dataset_from_other_plans_name_is_accepted_if_data_match(env):
    # the unlabeled dataset was ingested with the full plans; training uses derived (smaller) plans
    write_tiny_dataset(env.pre, "Dataset952_FakeUnl", n_cases=3, labeled=False, with_splits=False,
                       plans=tiny_plans(features=(16, 16, 16)))
    env.plans = dict(env.plans, plans_name="nnUNetPlansTiny")
    env.mp.setenv("NNUNET_SSL_UNLABELED_DATASET", "Dataset952_FakeUnl")
    trainer = _ideal(env)
    trainer.get_dataloaders()
    assert len(trainer.unlabeled_pool.identifiers) == 3


def test_unlabeled_dataset_errors(env, tmp_path):
    import shutil
    from nnunet_ssl.data.unlabeled_pool import resolve_unlabeled_dataset

    def resolve(value):
        return resolve_unlabeled_dataset(value, env.plans, CONFIG, 1, "Dataset950_Fake")

    with pytest.raises(UserInputError, match="NNUNET_SSL_UNLABELED_DATASET=977: unlabeled dataset not found"):
        resolve("977")
    with pytest.raises(UserInputError, match="does not exist"):
        resolve("Dataset978_Nothing")
    with pytest.raises(UserInputError, match="names the training dataset itself"):
        resolve("950")

    bad = tiny_plans()
    bad["configurations"][CONFIG]["spacing"] = [2.0, 2.0, 2.0]
    bad["configurations"][CONFIG]["normalization_schemes"] = ["CTNormalization"]
    write_tiny_dataset(env.pre, "Dataset953_Other", n_cases=2, labeled=False, with_splits=False, plans=bad)
    with pytest.raises(UserInputError) as e:
        resolve("953")
    msg = str(e.value)
    assert "planned differently" in msg and "spacing: target spacing [1.0, 1.0, 1.0]" in msg
    assert "[2.0, 2.0, 2.0] (plans of Dataset953_Other)" in msg and "normalisation:" in msg

    write_tiny_dataset(env.pre, "Dataset954_NoData", n_cases=2, labeled=False, with_splits=False)
    shutil.rmtree(env.pre / "Dataset954_NoData" / "nnUNetPlans_3d_fullres")
    with pytest.raises(UserInputError, match=r"not preprocessed for configuration 3d_fullres: the folder .*"
                                             r"Dataset954_NoData/nnUNetPlans_3d_fullres is missing"):
        resolve("954")

    # through the trainer, the run stops with the message (no traceback)
    env.mp.setenv("NNUNET_SSL_UNLABELED_DATASET", "953")
    trainer = _ideal(env)
    with pytest.raises(SystemExit):
        trainer.on_train_start()


def test_regions_are_refused(env):
    from nnunet_ssl_trainers.ideal_semi import IDEALSemiSupervisedTrainer
    env.mp.setenv("NNUNET_SSL_SETTINGS", "")
    dj = dict(env.dataset_json, labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    trainer = make_trainer(IDEALSemiSupervisedTrainer, env.plans, dj)
    with pytest.raises(SystemExit):
        trainer.initialize()


def test_semi_supervised_step_skips_nonfinite_losses_and_stops_after_too_many(env):
    """The semi-supervised step goes through nnunet_ssl's one guarded optimizer step: a NaN loss leaves the
    weights alone and is counted, ``max_nonfinite_in_a_row`` in a row stop the run, a finite step resets."""
    from nnunet_ssl_trainers.optimizer_step import NonFiniteLossError
    trainer = _ideal(env, "label_budget=3,budget_rest=unlabeled,batch_size=2,consistency_rampup_epochs=0")
    dl_tr, _ = trainer.get_dataloaders()
    trainer.network.train()
    trainer.set_deep_supervision_enabled(True)
    batch = next(dl_tr)
    trainer.max_nonfinite_in_a_row = 2
    before = [p.detach().clone() for p in trainer.network.parameters()]
    finite = trainer.loss

    class NaNLoss(nn.Module):  # nnU-Net's loss (same deep-supervision weights) times NaN
        weight_factors = getattr(finite, "weight_factors", None)

        def forward(self, output, target):
            return finite(output, target) * float("nan")

    trainer.loss = NaNLoss()
    trainer.train_step(batch)
    assert trainer._nonfinite_in_a_row == 1
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))
    with pytest.raises(NonFiniteLossError, match="2 steps in a row had a NaN/Inf loss or gradient"):
        trainer.train_step(batch)
    trainer._nonfinite_in_a_row = 0
    trainer.loss = finite
    trainer.train_step(batch)
    assert trainer._nonfinite_in_a_row == 0
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))


def test_progress_png_shows_pseudo_dice_and_semi_supervised_curves(env, tmp_path):
    trainer = _ideal(env, "label_budget=3")
    values = dict(mean_fg_dice=0.3, ema_fg_dice=0.2, dice_per_class_or_region=[0.3], train_losses=-0.5,
                  val_losses=-0.4, lrs=0.01, epoch_start_timestamps=0.0, epoch_end_timestamps=5.0,
                  sup_loss=-0.6, cps_loss=0.1, consistency_weight=0.5)
    local = trainer.logger.local_logger
    assert local.figure() is None  # nothing completed yet
    for epoch in range(2):
        for k, v in values.items():
            trainer.logger.log(k, v, epoch)
    fig = local.figure()
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {"pseudo dice", "pseudo dice (mov. avg.)", "sup_loss", "cps_loss", "consistency_weight",
            "loss_tr", "learning rate"} <= labels
    trainer.logger.plot_progress_png(str(tmp_path))
    assert (tmp_path / "progress.png").stat().st_size > 1000
    # a checkpoint's log from before the curves were drawn (stock keys only) loads with empty curves
    stock = {k: [v, v] for k, v in values.items() if k not in trainer.curve_keys}
    local.load_checkpoint(stock)
    assert local.completed_epochs() == 0 and local.my_fantastic_logging["cps_loss"] == []


def test_decoder_warmup_variant_freezes_the_shared_encoder_first(env):
    from nnunet_ssl_trainers.ideal_semi import IDEALSemiSupervisedTrainer_decoderWarmup
    env.mp.setenv("NNUNET_SSL_SETTINGS", "label_budget=3,budget_rest=unlabeled,batch_size=2,num_epochs=20,"
                                         "consistency_rampup_epochs=0,encoder_lr_factor=0.1")
    trainer = make_trainer(IDEALSemiSupervisedTrainer_decoderWarmup, env.plans, env.dataset_json)
    trainer.initialize()
    assert trainer.warmup_duration_decoder == 2  # 100 of 1000 epochs, scaled
    np.random.seed(0)
    dl_tr, _ = trainer.get_dataloaders()
    trainer.network.train()
    trainer.set_deep_supervision_enabled(True)
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    net = trainer.network
    enc = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    dec_a, dec_b = (next(m.parameters()).clone() for m in (net.decoder.stages[-1], net.decoder_b))
    out = trainer.train_step(next(dl_tr))
    assert np.isfinite(out["loss"]) and np.isfinite(out["cps_loss"])
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in enc.items())  # encoder frozen
    assert not torch.equal(dec_a, next(net.decoder.stages[-1].parameters()))  # both decoders learn
    assert not torch.equal(dec_b, next(net.decoder_b.parameters()))
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    groups = trainer.optimizer.param_groups
    assert trainer.training_stage == "warmup_all" and groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    trainer.train_step(next(dl_tr))
    assert any(not torch.equal(v, net.encoder.state_dict()[k]) for k, v in enc.items())
