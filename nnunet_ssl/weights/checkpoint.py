"""Checkpoint files: atomic writing, CPU tensors, the nnssl adaptation plan, and safe loading.

A pre-training checkpoint written by nnunet_ssl is a regular nnU-Net checkpoint (``network_weights`` = the full
nnU-Net network, so stock ``-pretrained_weights`` loads it) with two additions:

* ``ssl_state``: state dicts of everything that lives outside ``self.network`` (heads, predictors, teachers),
  so ``--c`` resumes exactly;
* ``nnssl_adaptation_plan``: the block nnssl (MIC-DKFZ/nnssl) stores, so nnssl-style fine-tuning tools can
  read our checkpoints and our fine-tuning trainer can read theirs.
"""
import contextlib
import os
import pickle
import tempfile
import zipfile
from typing import Any, Dict

import torch

from nnunet_ssl.errors import UserInputError


def to_cpu(obj: Any) -> Any:
    """Copy every tensor of a nested dict/list structure to the CPU (detached)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


@contextlib.contextmanager
def atomic_file(filename: str):
    """Yield a temporary path in ``filename``'s folder; when the block succeeds the file is fsynced and renamed over
    ``filename``, otherwise removed. A process killed at any moment leaves either the previous file or the complete
    new one, never a torn one (a stray ``.tmp_*`` file at most)."""
    folder = os.path.dirname(os.path.abspath(filename))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(filename), dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, filename: str) -> None:
    """``torch.save`` through :func:`atomic_file`."""
    with atomic_file(filename) as tmp:
        torch.save(obj, tmp)


def adaptation_plan(network, plans: dict, configuration: str, num_input_channels: int) -> Dict[str, Any]:
    """The ``nnssl_adaptation_plan`` block describing a pre-trained nnU-Net network."""
    cfg = plans["configurations"][configuration]
    arch = cfg.get("architecture", {})
    return {
        "architecture_plans": {
            "arch_class_name": arch.get("network_class_name"),
            "arch_kwargs": arch.get("arch_kwargs"),
            "arch_kwargs_requiring_import": arch.get("_kw_requires_import"),
        },
        "pretrain_plan": plans,
        "pretrain_num_input_channels": int(num_input_channels),
        "recommended_downstream_patchsize": list(cfg.get("patch_size", [])),
        "key_to_encoder": getattr(network, "key_to_encoder", "encoder.stages"),
        "key_to_stem": getattr(network, "key_to_stem", "encoder.stages.0"),
        "keys_to_in_proj": list(getattr(network, "keys_to_in_proj", ())),
        "key_to_lpe": None,
    }


def load_checkpoint_file(filename: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint (ours, stock nnU-Net's or nnssl's) with a clear error for bad files.

    Always maps to ``map_location`` (CPU by default), so a CUDA-saved checkpoint loads on a CPU-only machine.
    """
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise UserInputError(f"Checkpoint file not found: {filename}. Pass the path of a checkpoint_final.pth "
                             f"(or checkpoint_latest.pth) written by nnU-Net, nnunet_ssl or nnssl.")
    try:
        ckpt = torch.load(filename, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserInputError(
            f"Could not read {filename} as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}). "
            f"The file is truncated or not a checkpoint: copy it again or point to another checkpoint.") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        keys = list(ckpt.keys())[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserInputError(
            f"{filename} is not an nnU-Net/nnssl checkpoint: it has no 'network_weights' entry (found: {keys}).")
    return ckpt
