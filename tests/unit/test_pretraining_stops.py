"""How a pre-training run stops: diverged (too many NaN/Inf steps) or signalled (SIGTERM / SIGUSR1).

Whole runs of the real training loop (``run_training``) on a tiny preprocessed dataset, in-process.
"""
import os
import signal

import pytest

from test_refs_randomness import refs_env  # noqa: F401 (fixture: an unlabeled dataset and a ReFs reference)
from tiny_nnunet_data import make_trainer

SHORT = "num_iterations_per_epoch=3,num_val_iterations_per_epoch=1"


def _trainer(env, settings, name="MAETrainer"):
    import nnunet_ssl_trainers.index as index
    env.mp.setenv("NNUNET_SSL_SETTINGS", settings)
    return make_trainer(getattr(index, name), env.plans, env.dataset_json)


def _norm(ckpt):
    from nnunet_ssl.weights.health import state_dict_norm
    return state_dict_norm(ckpt["network_weights"])


def _load(path):
    from nnunet_ssl.weights.checkpoint import load_checkpoint_file
    return load_checkpoint_file(str(path), map_location="cpu")


def test_a_run_diverged_from_the_start_says_no_checkpoint_is_usable_and_writes_none(refs_env, capsys):
    t = _trainer(refs_env, f"{SHORT},num_epochs=20,save_every=1,initial_lr=1e6,max_nonfinite_in_a_row=4")
    with pytest.raises(SystemExit) as e:
        t.run_training()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "4 steps in a row had a NaN/Inf loss or gradient" in err
    assert "none is usable" in err and "without --c" in err and "initial_lr is 1e+06" in err
    assert "Traceback" not in err
    # no checkpoint holds the diverged weights (the old code wrote checkpoint_latest/best of 10^7 x the start)
    for f in os.listdir(t.output_folder):
        assert not f.startswith("checkpoint"), f"{f} was written with diverged weights"


def test_a_run_that_diverges_later_points_to_the_checkpoint_from_before(refs_env, capsys):
    t = _trainer(refs_env, f"{SHORT},num_epochs=20,save_every=1,max_nonfinite_in_a_row=4")
    start_epoch = t.on_train_epoch_start

    def blow_up_at_epoch_2():
        start_epoch()
        if t.current_epoch >= 2:
            for group in t.optimizer.param_groups:
                group["lr"] = 1e6

    t.on_train_epoch_start = blow_up_at_epoch_2
    with pytest.raises(SystemExit) as e:
        t.run_training()
    assert e.value.code == 2
    err = capsys.readouterr().err
    latest = os.path.join(t.output_folder, "checkpoint_latest.pth")
    assert f"The last usable checkpoint (written before the weights diverged) is {latest} (epoch 2)" in err
    assert "continue with --c" in err
    ckpt = _load(latest)
    assert ckpt["current_epoch"] == 2
    initial = ckpt["nnunet_ssl"]["initial_weight_norm"]
    assert initial > 0 and _norm(ckpt) < 2 * initial  # the weights of epoch 2's start, not the diverged ones
    best = _load(os.path.join(t.output_folder, "checkpoint_best.pth"))
    assert _norm(best) < 2 * initial


@pytest.mark.parametrize("name, sig", [("MAETrainer", signal.SIGTERM), ("ReFsTrainer", signal.SIGUSR1), ("PGLTrainer", signal.SIGTERM)])
def test_a_signal_mid_epoch_saves_and_continue_resumes_at_the_next_step(refs_env, capsys, name, sig):
    settings = "num_iterations_per_epoch=5,num_val_iterations_per_epoch=1,num_epochs=3,save_every=50"
    t = _trainer(refs_env, settings, name)
    steps, losses = [], []
    train_step = t.train_step

    def record(trainer, step, send_at=None):
        def wrapped(batch):
            steps.append(trainer.global_step())
            out = step(batch)
            losses.append(float(out["loss"]))
            if send_at is not None and trainer.global_step() == send_at:
                os.kill(os.getpid(), sig)  # as a scheduler would, between two steps of epoch 1
            return out
        return wrapped

    t.train_step = record(t, train_step, send_at=8)
    handler_before = signal.getsignal(sig)
    with pytest.raises(SystemExit) as e:
        t.run_training()
    assert e.value.code == 128 + sig
    assert steps == list(range(8))
    log = open(t.log_file).read()
    assert f"Stopped by {signal.Signals(sig).name} at epoch 1, step 3 of 5" in log
    ckpt = _load(os.path.join(t.output_folder, "checkpoint_latest.pth"))  # save_every=50: only the signal wrote it
    assert ckpt["current_epoch"] == 1 and ckpt["nnunet_ssl"]["epoch_progress"]["steps_done"] == 3
    assert signal.getsignal(sig) == handler_before  # the previous handler is back after the run

    resumed = _trainer(refs_env, settings, name)
    resumed.load_checkpoint(os.path.join(t.output_folder, "checkpoint_latest.pth"))
    resumed.train_step = record(resumed, resumed.train_step)
    resumed.run_training()
    assert steps == list(range(15)), "every step exactly once: none lost, none repeated"
    assert "Continuing epoch 1 at step 3 of 5" in open(resumed.log_file).read()
    train_losses = resumed.logger.get_checkpoint()["train_losses"]
    assert len(train_losses) == 3
    assert train_losses[1] == pytest.approx(sum(losses[5:10]) / 5, rel=1e-5)  # epoch 1 = 3 steps before + 2 after
    final = _load(os.path.join(resumed.output_folder, "checkpoint_final.pth"))
    assert final["current_epoch"] == 3 and not final["nnunet_ssl"]["epoch_progress"]


def test_continue_from_a_damaged_latest_checkpoint_names_the_intact_best_one(refs_env, capsys):
    t = _trainer(refs_env, f"{SHORT},num_epochs=2,save_every=1")
    t.run_training()
    final = os.path.join(t.output_folder, "checkpoint_final.pth")
    latest = os.path.join(t.output_folder, "checkpoint_latest.pth")
    with open(final, "rb") as src, open(latest, "wb") as dst:
        dst.write(src.read()[:5000])  # a checkpoint cut short (disk full, copied half)
    resumed = _trainer(refs_env, f"{SHORT},num_epochs=4,save_every=1")
    with pytest.raises(SystemExit) as e:
        resumed.load_checkpoint(latest)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint_best.pth in the same folder is intact" in err and f"mv {latest}" in err
    assert "Traceback" not in err


def _unwritable_root():
    """A folder nobody may create (sysfs); running as root defeats chmod-based read-only folders."""
    path = "/sys/nnunet_ssl_results_probe"
    try:
        os.mkdir(path)
    except OSError:
        return path
    os.rmdir(path)
    return None


@pytest.mark.parametrize("name", ["MAETrainer", "SSLFinetuneTrainer"])
def test_an_unwritable_results_folder_is_a_message(refs_env, capsys, name):
    root = _unwritable_root()
    if root is None:
        pytest.skip("no unwritable folder on this machine (/sys accepted a new folder)")
    refs_env.mp.setenv("nnUNet_results", root)
    with pytest.raises(SystemExit) as e:
        _trainer(refs_env, SHORT, name)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"Cannot write {root}" in err and "nnUNet_results" in err


def test_a_full_disk_while_saving_stops_with_a_message(refs_env, capsys, monkeypatch):
    import errno
    import torch
    t = _trainer(refs_env, f"{SHORT},num_epochs=3,save_every=1")

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as e:
        t.run_training()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device while writing checkpoint_" in err and "--c" in err
    assert not [f for f in os.listdir(t.output_folder) if f.startswith((".tmp", "checkpoint"))]


@pytest.mark.parametrize("name", ["MAETrainer", "SSLFinetuneTrainer"])
def test_a_new_start_removes_checkpoint_temporaries_of_a_killed_save(refs_env, name):
    from nnunet_ssl.weights.checkpoint import temp_name
    first = _trainer(refs_env, SHORT, name)
    dead_pid = 2 ** 22 + 12345  # above Linux's default pid_max: no such process
    stale = os.path.join(first.output_folder, temp_name("checkpoint_latest.pth", pid=dead_pid))
    mine = os.path.join(first.output_folder, temp_name("checkpoint_latest.pth"))  # a live writer's: kept
    kept = os.path.join(first.output_folder, ".tmp_notes.txt")  # not our naming: kept
    for path in (stale, mine, kept):
        open(path, "wb").close()
    _trainer(refs_env, SHORT, name)
    assert not os.path.exists(stale) and os.path.exists(mine) and os.path.exists(kept)
