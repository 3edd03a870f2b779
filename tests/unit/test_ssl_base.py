"""The SSL trainer base on a tiny preprocessed dataset: NaN/Inf guard, checkpoint round trip, settings errors."""
import os

import pytest
import torch

from tiny_nnunet_data import make_trainer, write_tiny_dataset


@pytest.fixture
def unlabeled_env(tmp_path, monkeypatch):
    pre, res = tmp_path / "pre", tmp_path / "res"
    pre.mkdir()
    res.mkdir()
    for k, v in {"nnUNet_preprocessed": pre, "nnUNet_results": res, "nnUNet_raw": tmp_path / "raw",
                 "nnUNet_n_proc_DA": "0", "nnUNet_compile": "0"}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("NNUNET_SSL_SETTINGS", raising=False)
    plans, dataset_json, _, _ = write_tiny_dataset(pre, labeled=False)
    return dict(plans=plans, dataset_json=dataset_json, res=res, monkeypatch=monkeypatch)


def _trainer(env, cls_name="MAETrainer"):
    import nnunet_ssl_trainers.index as index
    return make_trainer(getattr(index, cls_name), env["plans"], env["dataset_json"])


def _params(trainer):
    return [p.detach().clone() for p in trainer.trainable_parameters()]


def test_nonfinite_loss_and_gradient_skip_the_step_and_stop_after_too_many(unlabeled_env):
    from nnunet_ssl_trainers.ssl_base import NonFiniteLossError
    trainer = _trainer(unlabeled_env)
    trainer.initialize()
    trainer.max_nonfinite_in_a_row = 3
    before = _params(trainer)
    p0 = next(trainer.network.parameters())
    trainer.ssl_loss = lambda batch, train: (p0.sum() * float("nan"), {})
    out = trainer.train_step({})
    assert out["skipped_steps"] == 1.0
    x = p0.sum()
    trainer.ssl_loss = lambda batch, train: (torch.sqrt(p0.sum() - x.detach() + 0.0 * x), {})  # loss 0, grad inf
    assert trainer.train_step({})["skipped_steps"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _params(trainer)))
    with pytest.raises(NonFiniteLossError, match="3 steps in a row had a NaN/Inf loss or gradient"):
        trainer.train_step({})
    # a finite step resets the counter
    trainer._nonfinite_in_a_row = 0
    trainer.ssl_loss = lambda batch, train: ((p0 ** 2).sum(), {})
    assert trainer.train_step({})["skipped_steps"] == 0.0
    assert not torch.equal(before[0], _params(trainer)[0])


def test_checkpoint_round_trip_restores_heads_teachers_optimizer_and_epoch(unlabeled_env, tmp_path):
    trainer = _trainer(unlabeled_env, "GMIMTrainer")
    trainer.initialize()
    trainer.current_epoch = 4
    p0 = next(trainer.network.parameters())
    trainer.ssl_loss = lambda batch, train: ((p0 ** 2).sum() + sum((p ** 2).sum() for p in
                                             trainer.ssl_modules["online_projector"].parameters()), {})
    trainer.train_step({})
    for m in trainer.ssl_modules["target_encoder"].parameters():
        m.data.add_(0.5)  # make the teacher differ from a fresh copy
    for key in trainer.logger.local_logger.my_fantastic_logging:
        trainer.logger.local_logger.my_fantastic_logging[key] = [0.0] * 5
    path = str(tmp_path / "ckpt.pth")
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert all(v.device.type == "cpu" for v in ckpt["network_weights"].values())
    assert set(ckpt["ssl_state"]) == {"target_encoder", "online_projector", "target_projector"}

    other = _trainer(unlabeled_env, "GMIMTrainer")
    other.load_checkpoint(path)
    assert other.current_epoch == 5
    for name in ("target_encoder", "online_projector", "target_projector"):
        a, b = trainer.ssl_modules[name].state_dict(), other.ssl_modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = trainer.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
                                          for k in sa)


def test_unknown_setting_stops_before_training_with_the_accepted_names(unlabeled_env, capsys):
    unlabeled_env["monkeypatch"].setenv("NNUNET_SSL_SETTINGS", "num_epochs=2,mask_ratoi=0.5")
    trainer = _trainer(unlabeled_env)
    with pytest.raises(SystemExit) as e:
        trainer.initialize()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown setting 'mask_ratoi'" in err and "mask_ratio" in err


@pytest.mark.parametrize("setting, shown", [("save_every=0", "save_every must be int >= 1"),
                                            ("batch_size=0", "batch_size must be int >= 1"),
                                            ("initial_lr=-1", "initial_lr must be float >= 0 and finite"),
                                            ("num_epochs=0", "num_epochs must be int >= 1"),
                                            ("weight_decay=nan", "weight_decay must be float >= 0 and finite")])
def test_out_of_range_setting_stops_before_training_with_the_accepted_range(unlabeled_env, capsys, setting, shown):
    unlabeled_env["monkeypatch"].setenv("NNUNET_SSL_SETTINGS", setting)
    trainer = _trainer(unlabeled_env)
    with pytest.raises(SystemExit) as e:
        trainer.initialize()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"'{setting}' is out of range" in err and shown in err


def test_trainers_declare_ranges_alongside_plain_types():
    from nnunet_ssl.errors import UserInputError
    from nnunet_ssl.settings import COMMON_SETTINGS, Setting, parse_settings
    allowed = dict(COMMON_SETTINGS, mask_ratio=Setting(float, min=0, max=1, max_exclusive=True), grad_clip=float,
                   mode=Setting(str, choices=("a", "b")), stock_epochs=int)
    assert parse_settings("mask_ratio=0.5,grad_clip=-1,mode=b,stock_epochs=-3", allowed) == \
        {"mask_ratio": 0.5, "grad_clip": -1.0, "mode": "b", "stock_epochs": -3}
    with pytest.raises(UserInputError, match=r"mask_ratio must be float >= 0 and < 1 and finite"):
        parse_settings("mask_ratio=1", allowed)
    with pytest.raises(UserInputError, match="mode must be str one of a, b"):
        parse_settings("mode=c", allowed)
    # a trainer listing a common name with a plain type (stock_schedule's dict) still gets the common range
    with pytest.raises(UserInputError, match="num_epochs must be int >= 1"):
        parse_settings("num_epochs=0", {"num_epochs": int})
