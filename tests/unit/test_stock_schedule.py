"""nnUNetTrainer_schedule is stock nnUNetTrainer: only the schedule settings change, nothing else is accepted."""
import pytest

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tiny_nnunet_data import make_trainer


def _schedule_trainer(env, settings):
    from nnunet_ssl_trainers.stock_schedule import nnUNetTrainer_schedule
    env.mp.setenv("NNUNET_SSL_SETTINGS", settings)
    return make_trainer(nnUNetTrainer_schedule, env.plans, env.dataset_json)


def test_overrides_only_the_schedule(tiny_nnunet_env):
    stock = make_trainer(nnUNetTrainer, tiny_nnunet_env.plans, tiny_nnunet_env.dataset_json)
    t = _schedule_trainer(tiny_nnunet_env, "num_epochs=3,num_iterations_per_epoch=4,num_val_iterations_per_epoch=2,"
                                           "batch_size=2,save_every=1")
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch, t.save_every) == (3, 4, 2, 1)
    assert t.configuration_manager.batch_size == 2
    # everything else is nnUNetTrainer's
    for name in ("initial_lr", "weight_decay", "oversample_foreground_percent", "enable_deep_supervision",
                 "probabilistic_oversampling"):
        assert getattr(t, name) == getattr(stock, name), name
    assert type(t).__mro__[1] is nnUNetTrainer
    for hook in ("train_step", "validation_step", "configure_optimizers", "_build_loss", "get_dataloaders",
                 "build_network_architecture", "on_epoch_end", "perform_actual_validation"):
        assert getattr(type(t), hook) is getattr(nnUNetTrainer, hook), hook


def test_unset_settings_train_like_nnunet(tiny_nnunet_env):
    stock = make_trainer(nnUNetTrainer, tiny_nnunet_env.plans, tiny_nnunet_env.dataset_json)
    t = _schedule_trainer(tiny_nnunet_env, "")
    assert (t.num_epochs, t.num_iterations_per_epoch, t.save_every) == (stock.num_epochs,
                                                                       stock.num_iterations_per_epoch, stock.save_every)
    assert t.configuration_manager.batch_size == stock.configuration_manager.batch_size


@pytest.mark.parametrize("settings", ["initial_lr=0.1", "load_decoder=True", "num_epochs=abc"])
def test_refuses_anything_but_the_schedule(tiny_nnunet_env, settings, capsys):
    with pytest.raises(SystemExit) as e:
        _schedule_trainer(tiny_nnunet_env, settings)
    assert e.value.code == 2
    assert "NNUNET_SSL_SETTINGS" in capsys.readouterr().err
