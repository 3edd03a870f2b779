"""Small helpers of the integration tests: nnU-Net commands as subprocesses, checkpoints, training logs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

# the unlabeled + reference datasets of the ``ssl_datasets`` fixture (conftest.py), tiny plans
TINY = "nnUNetPlansTiny"
SSL_ID, REF_ID = 512, 513
SSL_NAME, REF_NAME = "Dataset512_HippoUnlabeled", "Dataset513_HippoRef"


def nnunet_bin(name: str) -> str:
    """An entry point (nnUNetv2_train, nnunet_ssl, ...) of the environment running the tests (next to the
    interpreter, else on PATH); skips the test with the fix when it is not installed."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(candidate):
        return candidate
    found = shutil.which(name)
    if found is None:
        import pytest
        pytest.skip(f"{name} not found next to {sys.executable} or on PATH: install nnunetv2 in this environment")
    return found


def run(cmd, env, expect_ok: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def load_ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def training_logs(folder) -> str:
    folder = Path(folder)
    return "".join(p.read_text() for p in sorted(folder.glob("training_log*.txt")))
