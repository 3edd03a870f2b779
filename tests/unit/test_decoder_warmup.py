"""Decoder-first warm-up: EncoderFreeze on a real nnU-Net network, and SSLFinetuneTrainer's three stages
(learning rates, optimizer contents, encoder untouched while frozen, resume, defaults equal to nnU-Net's
warm-up trainer)."""
import os

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ssl.weights.encoder_freeze import EncoderFreeze, non_encoder_parameters

from tiny_nnunet_data import make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet():
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 2, 3, 1, True, nn.InstanceNorm3d,
                         {"affine": True}, nonlin=nn.LeakyReLU)


def _loss(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 8, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 8, 8, 8), generator=g)
    return nn.functional.cross_entropy(net(x), y)


def _encoder_state(net):
    return {k: v.clone() for k, v in net.encoder.state_dict().items()}


def test_non_encoder_parameters_exclude_the_encoder_the_decoder_references():
    net = _unet()
    enc = {id(p) for p in net.encoder.parameters()}
    rest = non_encoder_parameters(net)
    assert enc and rest and not enc & {id(p) for p in rest}
    assert len(rest) + len(enc) == len(list(net.parameters()))
    # nnU-Net's decoder holds the encoder: its parameters() alone would not do
    assert enc & {id(p) for p in net.decoder.parameters()}


def test_freeze_keeps_the_encoder_still_and_release_lets_it_train():
    net = _unet()
    freeze = EncoderFreeze(net)
    freeze.freeze()
    freeze.freeze()  # idempotent: one hook per parameter
    assert freeze.frozen and len(freeze._handles) == len(list(net.encoder.parameters()))
    opt = torch.optim.SGD(non_encoder_parameters(net), 0.1, momentum=0.99, weight_decay=3e-5, nesterov=True)
    before, dec_before = _encoder_state(net), net.decoder.seg_layers[-1].weight.clone()
    for step in range(3):
        opt.zero_grad()
        _loss(net, step).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None or not p.grad.any() for p in net.encoder.parameters())
    assert not torch.equal(dec_before, net.decoder.seg_layers[-1].weight)
    freeze.release()
    assert not freeze.frozen
    net.zero_grad()
    _loss(net).backward()
    assert any(p.grad.abs().sum() > 0 for p in net.encoder.parameters())


# ---------------------------------------------------------------- the trainer

@pytest.fixture()
def env(tiny_nnunet_env):
    return tiny_nnunet_env


def _trainer(env, settings, cls=None):
    from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer
    env.mp.setenv("NNUNET_SSL_SETTINGS", settings)
    trainer = make_trainer(cls or SSLFinetuneTrainer, env.plans, env.dataset_json)
    trainer.initialize()
    return trainer


def _epoch_start(trainer, epoch):
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()
    return trainer.training_stage, trainer.optimizer.param_groups[0]["lr"], trainer.optimizer


def test_stages_learning_rates_and_optimizer_contents(env):
    t = _trainer(env, "num_epochs=20,warmup_duration_decoder=3,warmup_duration_whole_net=2")
    n_rest, n_all = len(non_encoder_parameters(t.network)), len(list(t.network.parameters()))
    seen = [_epoch_start(t, e) for e in range(20)]
    lr0 = t.initial_lr
    for e, (stage, lr, opt) in enumerate(seen):
        n = len(opt.param_groups[0]["params"])
        if e < 3:
            assert (stage, n) == ("warmup_decoder", n_rest) and lr == pytest.approx(lr0 * (e + 1) / 3)
            assert t._encoder_freeze is not None
        elif e < 5:
            assert (stage, n) == ("warmup_all", n_all) and lr == pytest.approx(lr0 * (e - 3 + 1) / 2)
        else:
            assert (stage, n) == ("train", n_all) and lr == pytest.approx(lr0 * (1 - (e - 5) / 15) ** 0.9)
    assert seen[3][2] is not seen[2][2]  # whole-net warm-up: a new optimizer with every parameter
    assert seen[5][2] is seen[4][2]  # train keeps the warm-up's optimizer (its momentum)
    assert not t._encoder_freeze.frozen
    log = open(t.log_file).read()
    assert "train decoder only (encoder frozen), warmup" in log and "Initialized train optimizer" in log


def test_train_steps_leave_the_encoder_alone_only_while_frozen(env):
    t = _trainer(env, "num_epochs=10,warmup_duration_decoder=1,warmup_duration_whole_net=1,batch_size=2")
    np.random.seed(0)
    dl_tr, _ = t.get_dataloaders()
    _epoch_start(t, 0)
    enc, seg = _encoder_state(t.network), t.network.decoder.seg_layers[-1].weight.clone()
    for _ in range(2):
        t.train_step(next(dl_tr))
    assert all(torch.equal(v, t.network.encoder.state_dict()[k]) for k, v in enc.items())
    assert not torch.equal(seg, t.network.decoder.seg_layers[-1].weight)
    _epoch_start(t, 1)
    for _ in range(2):
        t.train_step(next(dl_tr))
    assert any(not torch.equal(v, t.network.encoder.state_dict()[k]) for k, v in enc.items())


def test_default_is_nnunets_warmup_schedule(env):
    from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainer_warmup import nnUNetTrainer_warmup
    ours = _trainer(env, "num_epochs=40")
    stock = make_trainer(nnUNetTrainer_warmup, env.plans, env.dataset_json)
    stock.num_epochs, stock.warmup_duration_whole_net = 40, ours.warmup_duration_whole_net
    stock.initialize()
    assert ours.warmup_duration_decoder == 0 and ours.warmup_duration_whole_net == 2
    for e in range(40):
        s_ours, lr_ours, _ = _epoch_start(ours, e)
        s_stock, lr_stock, _ = _epoch_start(stock, e)
        assert (s_ours, lr_ours) == (s_stock, pytest.approx(lr_stock)), e


def test_variant_scaling_explicit_lengths_and_errors(env, capsys):
    from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer_decoderWarmup
    t = _trainer(env, "num_epochs=40", SSLFinetuneTrainer_decoderWarmup)
    assert (t.warmup_duration_decoder, t.warmup_duration_whole_net) == (4, 2) and t.training_stage == "warmup_decoder"
    assert _trainer(env, "num_epochs=5", SSLFinetuneTrainer_decoderWarmup).warmup_duration_decoder == 1
    assert _trainer(env, "num_epochs=2", SSLFinetuneTrainer_decoderWarmup).warmup_duration_decoder == 0  # no room
    t = _trainer(env, "num_epochs=40,warmup_duration_decoder=6", SSLFinetuneTrainer_decoderWarmup)
    assert t.warmup_duration_decoder == 6
    with pytest.raises(SystemExit) as e:
        _trainer(env, "num_epochs=10,warmup_duration_decoder=-1")
    assert e.value.code == 2 and "warmup_duration_decoder must be int >= 0" in capsys.readouterr().err
    # explicitly longer than the run: decoder-only training throughout, said in the log
    t = _trainer(env, "num_epochs=3,warmup_duration_decoder=3")
    assert [_epoch_start(t, e)[0] for e in range(3)] == ["warmup_decoder"] * 3 and t._encoder_freeze.frozen
    assert "the encoder stays frozen for the whole run" in open(t.log_file).read()


@pytest.mark.parametrize("epoch", [0, 2, 3, 5])  # 2: the decoder warm-up's last epoch, resumed into warmup_all
def test_resume_restores_the_stage_and_its_optimizer(env, epoch):
    settings = "num_epochs=10,warmup_duration_decoder=3,warmup_duration_whole_net=2,batch_size=2"
    t = _trainer(env, settings)
    np.random.seed(0)
    dl_tr, _ = t.get_dataloaders()
    _epoch_start(t, epoch)
    t.train_step(next(dl_tr))
    path = os.path.join(str(env.tmp), f"ckpt_{epoch}.pth")
    t.save_checkpoint(path)  # as nnU-Net at the end of the epoch: current_epoch + 1 stored
    r = _trainer(env, settings)
    r.load_checkpoint(path)
    assert r.current_epoch == epoch + 1 and r.training_stage == t.training_stage == r.stage_at(epoch)
    assert r._encoder_freeze.frozen == (r.stage_at(epoch) == "warmup_decoder")
    assert len(r.optimizer.param_groups[0]["params"]) == len(t.optimizer.param_groups[0]["params"])
    momentum = [s["momentum_buffer"] for s in r.optimizer.state.values()]
    assert momentum and any(m.abs().sum() > 0 for m in momentum)
    stage, lr, _ = _epoch_start(r, epoch + 1)  # the next epoch continues in its own stage
    assert stage == r.stage_at(epoch + 1) and r._encoder_freeze.frozen == (stage == "warmup_decoder")
    r.train_step(next(dl_tr))


@pytest.mark.parametrize("settings,hint", [("load_decoder=False", True), ("load_decoder=True", False),
                                           ("load_decoder=False,warmup_duration_decoder=2", False)])
def test_random_decoder_start_logs_the_warmup_hint(env, settings, hint):
    t = _trainer(env, "num_epochs=10," + settings)
    path = os.path.join(str(env.tmp), "pretrained.pth")
    torch.save({"network_weights": t.network.state_dict(), "trainer_name": "MAETrainer"}, path)
    t.load_pretrained(path)
    assert ("Hint: the decoder starts random" in open(t.log_file).read()) == hint


@pytest.mark.parametrize("epochs,note", [(2, True), (3, False)])
def test_warmup_trainer_on_a_schedule_too_short_for_its_warmup_says_so_instead_of_recommending_itself(env, epochs,
                                                                                                      note):
    from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer_decoderWarmup
    t = _trainer(env, f"num_epochs={epochs},load_decoder=False", SSLFinetuneTrainer_decoderWarmup)
    path = os.path.join(str(env.tmp), "pretrained.pth")
    torch.save({"network_weights": t.network.state_dict(), "trainer_name": "MAETrainer"}, path)
    t.load_pretrained(path)
    log = open(t.log_file).read()
    assert "Hint: the decoder starts random" not in log
    assert (f"decoder-only warm-up does not fit a {epochs}-epoch schedule (it needs at least 3 epochs)" in log) == note
    assert t.warmup_duration_decoder == (0 if note else 1)


def test_transfer_report_console_gets_one_line_the_log_every_tensor(env, capsys):
    t = _trainer(env, "num_epochs=10")
    path = os.path.join(str(env.tmp), "pretrained.pth")
    torch.save({"network_weights": t.network.state_dict(), "trainer_name": "MAETrainer"}, path)
    capsys.readouterr()
    report = t.load_pretrained(path)
    out = capsys.readouterr().out
    assert out.count("nnunet_ssl weight transfer:") == 1 and "  loaded   " not in out
    assert t.log_file in out
    log = open(t.log_file).read()
    assert log.count("  loaded   ") == len(report.loaded) > 10


def test_encoder_lr_factor_scales_the_encoder_once_it_trains_and_survives_resume(env):
    settings = "num_epochs=20,warmup_duration_decoder=2,warmup_duration_whole_net=2,encoder_lr_factor=0.1,batch_size=2"
    t = _trainer(env, settings)
    plain = _trainer(env, settings.replace("encoder_lr_factor=0.1", "encoder_lr_factor=1.0"))
    encoder = {id(p) for p in t.network.encoder.parameters()}
    for e in range(20):
        stage, lr, opt = _epoch_start(t, e)
        assert lr == pytest.approx(_epoch_start(plain, e)[1])  # the rest follows nnU-Net's schedule unchanged
        groups = opt.param_groups
        if stage == "warmup_decoder":
            assert len(groups) == 1 and not encoder & {id(p) for p in groups[0]["params"]}
            continue
        assert len(groups) == 2 and {id(p) for p in groups[1]["params"]} == encoder
        assert not encoder & {id(p) for p in groups[0]["params"]}
        assert groups[1]["lr"] == pytest.approx(0.1 * lr) and lr > 0
    assert len(plain.optimizer.param_groups) == 1  # factor 1: nnU-Net's single group
    assert "encoder at 0.1 x the learning rate" in open(t.log_file).read()
    t = _trainer(env, settings)
    np.random.seed(0)
    dl_tr, _ = t.get_dataloaders()
    _epoch_start(t, 5)
    t.train_step(next(dl_tr))
    path = os.path.join(str(env.tmp), "ckpt_lr.pth")
    t.save_checkpoint(path)
    r = _trainer(env, settings)
    r.load_checkpoint(path)
    stage, lr, opt = _epoch_start(r, 6)
    assert stage == "train" and opt.param_groups[1]["lr"] == pytest.approx(0.1 * lr)


def test_slow_encoder_variant_is_the_decoder_warmup_with_the_encoder_at_a_tenth(env):
    from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer_decoderWarmupSlowEncoder
    t = _trainer(env, "num_epochs=20", SSLFinetuneTrainer_decoderWarmupSlowEncoder)
    assert (t.warmup_duration_decoder, t.encoder_lr_factor) == (2, 0.1)
    stage, lr, opt = _epoch_start(t, 10)
    assert stage == "train" and opt.param_groups[1]["lr"] == pytest.approx(0.1 * lr)
    assert _trainer(env, "num_epochs=20,encoder_lr_factor=0.5", SSLFinetuneTrainer_decoderWarmupSlowEncoder
                    ).encoder_lr_factor == 0.5  # a setting overrides the class default
