"""Every trainer of the project survives SIGKILL: real `nnUNetv2_train` killed at a random moment, then `--c`.

Per trainer: start `nnUNetv2_train` (its own process group, checkpoint every epoch, a schedule far longer than the
test), wait for the first `checkpoint_latest.pth`, kill the whole process group with SIGKILL at a random moment of
the following epochs (as a cluster scheduler does), then
* every checkpoint file on disk must load (atomic writes: never half-written);
* `nnUNetv2_train ... --c` with `num_epochs` = the checkpoint's epoch continues from that checkpoint and, having
  no epoch left, writes `checkpoint_final.pth` straight away: it must hold exactly the state of the checkpoint the
  kill left behind - epoch, network, optimizer (momentum buffers), SSL modules (EMA teachers, heads), logs.

The kill delay is random (seeded by ``NNUNET_SSL_KILL_SEED``, default: time; printed for reproduction).
"""
import math
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch

from helpers import SSL_ID, SSL_NAME, TINY, load_ckpt, nnunet_bin, run

LONG = "num_epochs=200,num_iterations_per_epoch=2,num_val_iterations_per_epoch=1,save_every=1"
DOWNSTREAM = "downstream"
# trainer -> (dataset, fold, extra settings, extra environment)
CASES = {
    "MAETrainer": (SSL_ID, "all", "", {}),
    "GMIMTrainer": (SSL_ID, "all", "", {}),
    "PGLTrainer": (SSL_ID, "all", "", {}),
    "IDEALTrainer": (SSL_ID, "all", "", {}),
    "ReFsTrainer": (SSL_ID, "all", "", {}),
    "SSLFinetuneTrainer": (DOWNSTREAM, "0", ",final_validation=False,label_budget=4", {}),
    "IDEALSemiSupervisedTrainer": (DOWNSTREAM, "0", ",final_validation=False,label_budget=4",
                                   {"NNUNET_SSL_UNLABELED_DATASET": str(SSL_ID)}),
}


def _equal(a, b, where="") -> None:
    """Exact recursive equality of checkpoint contents (tensors bitwise, NaN == NaN in logs)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _wait_for(path, proc, timeout=900):
    start = time.time()
    while not path.is_file():
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before writing {path.name}")
        if time.time() - start > timeout:
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.2)


@pytest.mark.parametrize("trainer", list(CASES))
def test_sigkill_then_continue_restores_the_exact_checkpoint_state(trainer, ssl_datasets, planned_downstream,
                                                                   nnunet_env, tmp_path):
    dataset, fold, extra, extra_env = CASES[trainer]
    dataset = planned_downstream.dataset_name if dataset == DOWNSTREAM else dataset
    name = planned_downstream.dataset_name if dataset == planned_downstream.dataset_name else SSL_NAME
    folder = nnunet_env.results / name / f"{trainer}__{TINY}__3d_fullres" / f"fold_{fold}"
    env = dict(ssl_datasets.env, **extra_env)
    env.pop("NNUNET_SSL_PRETRAINED", None)
    cmd = [nnunet_bin("nnUNetv2_train"), str(dataset), "3d_fullres", fold, "-tr", trainer, "-p", TINY,
           "-device", "cpu"]

    seed = int(os.environ.get("NNUNET_SSL_KILL_SEED", time.time_ns() % 2 ** 31))
    delay = random.Random(seed).uniform(0.0, 4.0)
    print(f"{trainer}: SIGKILL {delay:.2f} s after the first checkpoint_latest.pth (NNUNET_SSL_KILL_SEED={seed})")
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], env=dict(env, NNUNET_SSL_SETTINGS=LONG + extra), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(folder / "checkpoint_latest.pth", proc)
            time.sleep(delay)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "train.log").read_text()[-3000:]

    # nothing half-written: every checkpoint the kill left behind loads
    for ckpt_file in folder.glob("checkpoint_*.pth"):
        load_ckpt(ckpt_file)
    left = load_ckpt(folder / "checkpoint_latest.pth")
    epoch = left["current_epoch"]
    assert epoch >= 1
    snapshot = tmp_path / "latest_at_kill.pth"
    shutil.copyfile(folder / "checkpoint_latest.pth", snapshot)

    # --c with no epoch left: nnU-Net loads the latest checkpoint and saves it again as checkpoint_final.pth. For the
    # fine-tuning trainer a pre-trained checkpoint that does not exist is set: --c must not try to load it
    resume_env = dict(env, NNUNET_SSL_SETTINGS=LONG.replace("num_epochs=200", f"num_epochs={epoch}") + extra)
    if trainer == "SSLFinetuneTrainer":
        resume_env["NNUNET_SSL_PRETRAINED"] = str(tmp_path / "does_not_exist.pth")
    run(cmd + ["--c"], resume_env)
    final = load_ckpt(folder / "checkpoint_final.pth")
    saved = load_ckpt(snapshot)
    assert final["current_epoch"] == saved["current_epoch"] == epoch
    keys = ("network_weights", "optimizer_state", "logging", "ssl_state", "grad_scaler_state")
    for key in keys:
        _equal(final.get(key), saved.get(key), key)
    assert saved["optimizer_state"]["state"], "the optimizer state (momentum) must be in the checkpoint"
    if trainer in ("PGLTrainer", "IDEALTrainer", "ReFsTrainer", "GMIMTrainer"):
        assert saved["ssl_state"], f"{trainer}: SSL modules (teachers, heads) must be in the checkpoint"


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_sigterm_saves_mid_epoch_and_continue_finishes_that_epoch(sig, ssl_datasets, nnunet_env, tmp_path):
    """A scheduler's SIGTERM to the whole process group (data loader workers included): the run writes
    checkpoint_latest.pth although no periodic save was due, exits 128+15 without a traceback, and --c continues the
    epoch at the step where it stopped."""
    trainer = "PGLTrainer"
    folder = nnunet_env.results / SSL_NAME / f"{trainer}__{TINY}__3d_fullres" / "fold_all"
    settings = "num_epochs=200,num_iterations_per_epoch=6,num_val_iterations_per_epoch=1,save_every=100"
    # the SIGKILL test of the same trainer leaves checkpoint_final.pth in this folder, and --c prefers it
    shutil.rmtree(folder, ignore_errors=True)
    env = dict(ssl_datasets.env, nnUNet_n_proc_DA="1")
    env.pop("NNUNET_SSL_PRETRAINED", None)
    cmd = [nnunet_bin("nnUNetv2_train"), str(SSL_ID), "3d_fullres", "all", "-tr", trainer, "-p", TINY,
           "-device", "cpu"]
    seed = int(os.environ.get("NNUNET_SSL_KILL_SEED", time.time_ns() % 2 ** 31))
    delay = random.Random(seed).uniform(0.0, 2.0)
    print(f"{signal.Signals(sig).name} {delay:.2f} s after epoch 1 started (NNUNET_SSL_KILL_SEED={seed})")
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], env=dict(env, NNUNET_SSL_SETTINGS=settings), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            start = time.time()
            while "Epoch 1\n" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() - start < 900, "epoch 1 never started"
                time.sleep(0.2)
            time.sleep(delay)
            os.killpg(proc.pid, sig)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = log_path.read_text()
    assert proc.returncode == 128 + sig, out[-3000:]
    assert f"Stopped by {signal.Signals(sig).name} at epoch" in out and "Traceback" not in out, out[-3000:]
    left = load_ckpt(folder / "checkpoint_latest.pth")  # save_every=100: only the signal can have written it
    epoch, steps = left["current_epoch"], (left["nnunet_ssl"]["epoch_progress"] or {}).get("steps_done", 0)
    assert epoch >= 1

    resume = run(cmd + ["--c"], dict(env, NNUNET_SSL_SETTINGS=settings.replace("num_epochs=200",
                                                                                f"num_epochs={epoch + 1}")))
    if steps:
        assert f"Continuing epoch {epoch} at step {steps} of 6" in resume.stdout, resume.stdout[-5000:]
    final = load_ckpt(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == epoch + 1
    assert len(final["logging"]["train_losses"]) == epoch + 1
