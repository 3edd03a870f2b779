"""Checkpoint hardening (issue 24 items 1, 5, 8; issue 23 item 3): no code runs while loading, clear messages for
missing modules and full disks, stale temporaries cleaned, umask honoured."""
import errno
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.weights import checkpoint as ck
from nnunet_ssl.weights.checkpoint import atomic_file, atomic_torch_save, load_checkpoint_file

TRUST_ENV = getattr(ck, "TRUST_ENV", "NNUNET_SSL_TRUSTED_CHECKPOINTS")


class _Payload:
    """Unpickling this calls ``open(marker, 'w')``: a harmless stand-in for code a hostile file would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _nnunet_like(**extra):
    """What stock nnU-Net 2.8 and nnssl put in a checkpoint (numpy scalars in the logs, a numpy array, a device)."""
    return dict({"network_weights": {"w": torch.ones(2)}, "optimizer_state": {"state": {}, "param_groups": []},
                 "grad_scaler_state": None,
                 "logging": {"train_losses": [np.float32(0.5), np.float64(0.4)], "lrs": [0.01],
                             "dice_per_class_or_region": [[np.float32(0.1), np.float32(0.2)]],
                             "counts": np.arange(3, dtype=np.int64), "flag": np.bool_(True)},
                 "_best_ema": np.float32(0.2), "current_epoch": 3,
                 "init_args": {"plans": {"a": 1}, "configuration": "3d_fullres", "fold": 0,
                               "dataset_json": {}, "device": torch.device("cpu")},
                 "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
                 "nnssl_adaptation_plan": {"key_to_encoder": "encoder.stages", "key_to_lpe": None}}, **extra)


def test_nnunet_and_nnssl_checkpoint_contents_load_without_opting_in(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path = tmp_path / "ok.pth"
    torch.save(_nnunet_like(), path)
    ckpt = load_checkpoint_file(path)
    assert ckpt["_best_ema"] == np.float32(0.2) and ckpt["logging"]["counts"].tolist() == [0, 1, 2]


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "evil.pth"
    torch.save(_nnunet_like(extra=_Payload(str(marker))), path)
    with pytest.raises(UserInputError) as e:
        load_checkpoint_file(path)
    assert not marker.exists(), "the payload ran inside torch.load"
    msg = str(e.value)
    assert "io.open" in msg and TRUST_ENV in msg and str(path) in msg
    # the user trusts this one file: full unpickling for it (and only for it)
    other = tmp_path / "evil2.pth"
    torch.save(_nnunet_like(extra=_Payload(str(marker) + "2")), other)
    monkeypatch.setenv(TRUST_ENV, str(path))
    load_checkpoint_file(path)
    assert marker.exists()
    with pytest.raises(UserInputError, match="io.open"):
        load_checkpoint_file(other)
    assert not (tmp_path / "EXECUTED2").exists()


def test_a_checkpoint_that_needs_a_module_that_is_not_installed_says_so(tmp_path, monkeypatch):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "nnssl_fake_plugin_xyz.py").write_text("class Extra:\n    def __init__(self):\n        self.v = 1\n")
    path = tmp_path / "needs_module.pth"
    code = (f"import sys, torch; sys.path.insert(0, {str(mod_dir)!r}); import nnssl_fake_plugin_xyz as m; "
            f"torch.save({{'network_weights': {{}}, 'extra': m.Extra()}}, {str(path)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UserInputError, match="nnssl_fake_plugin_xyz.Extra.*not installed"):
        load_checkpoint_file(path)
    monkeypatch.setenv(TRUST_ENV, str(path))
    with pytest.raises(UserInputError, match="needs the Python module 'nnssl_fake_plugin_xyz'.*not installed"):
        load_checkpoint_file(path)


def test_atomic_save_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_torch_save({"network_weights": {}}, str(tmp_path / "a.pth"))
        with atomic_file(str(tmp_path / "b.txt")) as tmp:
            open(tmp, "w").write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
    old = os.umask(0o077)
    try:
        atomic_torch_save({"network_weights": {}}, str(tmp_path / "c.pth"))
    finally:
        os.umask(old)
    assert (tmp_path / "c.pth").stat().st_mode & 0o777 == 0o600


def test_full_disk_during_a_save_is_a_plain_message_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint_latest.pth"
    atomic_torch_save({"network_weights": {"w": torch.zeros(1)}}, str(target))

    def full_disk_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ck.torch, "save", full_disk_save)
    with pytest.raises(UserInputError) as e:
        atomic_torch_save({"network_weights": {"w": torch.ones(1)}}, str(target))
    msg = str(e.value)
    assert "no space left on device" in msg.lower() and str(tmp_path) in msg
    monkeypatch.undo()
    assert torch.equal(load_checkpoint_file(target)["network_weights"]["w"], torch.zeros(1))
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_cleaned_on_the_next_save(tmp_path):
    host = socket.gethostname()
    dead = _dead_pid()
    stale = tmp_path / ck.temp_name("checkpoint_latest.pth", host=host, pid=dead)
    stale.write_bytes(b"")
    alive = tmp_path / ck.temp_name("checkpoint_latest.pth", host=host, pid=os.getppid())
    alive.write_bytes(b"")
    other_host = tmp_path / ck.temp_name("checkpoint_latest.pth", host="elsewhere", pid=dead)
    other_host.write_bytes(b"")
    legacy = tmp_path / ".tmp_checkpoint_final.pthab12cd_x"  # mkstemp name of earlier versions, written before us
    legacy.write_bytes(b"")
    os.utime(legacy, (time.time() - 3600, time.time() - 3600))
    user_file = tmp_path / ".tmp_notes.txt"
    user_file.write_text("mine")
    os.utime(user_file, (time.time() - 3600, time.time() - 3600))
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "keep.pth"
    victim.write_bytes(b"")
    link = tmp_path / ck.temp_name("checkpoint_best.pth", host=host, pid=dead)
    link.symlink_to(victim)

    atomic_torch_save({"network_weights": {}}, str(tmp_path / "checkpoint_latest.pth"))
    left = set(os.listdir(tmp_path))
    assert stale.name not in left and legacy.name not in left
    assert {alive.name, other_host.name, user_file.name, link.name} <= left
    assert victim.exists()
