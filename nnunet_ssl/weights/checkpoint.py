"""Checkpoint files: atomic writing, CPU tensors, the nnssl adaptation plan, and safe loading.

A pre-training checkpoint written by nnunet_ssl is a regular nnU-Net checkpoint (``network_weights`` = the full
nnU-Net network, so stock ``-pretrained_weights`` loads it) with two additions:

* ``ssl_state``: state dicts of everything that lives outside ``self.network`` (heads, predictors, teachers),
  so ``--c`` resumes exactly;
* ``nnssl_adaptation_plan``: the block nnssl (MIC-DKFZ/nnssl) stores, so nnssl-style fine-tuning tools can
  read our checkpoints and our fine-tuning trainer can read theirs.
"""
import contextlib
import errno
import importlib.util
import os
import pickle
import re
import secrets
import socket
import time
import zipfile
from typing import Any, Dict, List, Optional

import torch

from nnunet_ssl.errors import UserInputError, file_system_error

#: ``NNUNET_SSL_TRUSTED_CHECKPOINTS=/path/a.pth:/path/b.pth`` (``os.pathsep``-separated): checkpoint files the user
#: trusts, loaded with full unpickling (which can run code stored in the file). Every other file is loaded with
#: ``torch.load(weights_only=True)`` plus the few numpy types nnU-Net's and nnssl's checkpoints hold.
TRUST_ENV = "NNUNET_SSL_TRUSTED_CHECKPOINTS"

_PROCESS_START = time.time()


def to_cpu(obj: Any) -> Any:
    """Copy every tensor of a nested dict/list structure to the CPU (detached)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# Temporaries of atomic writes: ``.tmp_<name>.<host>.<pid>.<random>.part``; host and writer PID let the next start
# tell a stale file (writer dead) from one being written right now. Earlier versions used ``mkstemp`` names
# (``.tmp_<name><8 random chars>``, no PID): those are removed when older than this process.
_TEMP_RE = re.compile(r"^\.tmp_(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.part$")
_LEGACY_TEMP_RE = re.compile(r"^\.tmp_.+\.(pth|json|pkl)[a-z0-9_]{8}$")


def _host() -> str:
    return socket.gethostname().split(".")[0].replace(".", "_") or "host"


def temp_name(filename: str, host: Optional[str] = None, pid: Optional[int] = None) -> str:
    """The name of an atomic-write temporary of ``filename`` (in the same folder)."""
    return (f".tmp_{os.path.basename(filename)}.{host or _host()}.{os.getpid() if pid is None else pid}."
            f"{secrets.token_hex(4)}.part")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def clean_stale_temporaries(folder: str) -> List[str]:
    """Remove leftovers of atomic writes in ``folder`` whose writer is gone (killed during a save): regular files
    with our temporary naming written on this host by a dead PID, or with the earlier ``mkstemp`` naming and older
    than this process. Symlinks, folders and any other name are never touched. Returns the removed paths."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".tmp_"):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            m = _TEMP_RE.match(entry.name)
            if m:
                pid = int(m.group("pid"))
                stale = m.group("host") == _host() and pid != os.getpid() and not _pid_alive(pid)
            else:
                stale = bool(_LEGACY_TEMP_RE.match(entry.name)) and \
                    entry.stat(follow_symlinks=False).st_mtime < _PROCESS_START
            if stale:
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            continue
    return removed


def _disk_full_error(filename: str, error: OSError) -> UserInputError:
    folder = os.path.dirname(os.path.abspath(filename))
    return UserInputError(
        f"No space left on device while writing {os.path.basename(filename)} in {folder} ({error.strerror}). "
        f"The previous {os.path.basename(filename)} (if any) is unchanged. Free space on that disk (or point "
        f"nnUNet_results to a disk with room) and continue the run with --c.")


@contextlib.contextmanager
def atomic_file(filename: str):
    """Yield a temporary path in ``filename``'s folder; when the block succeeds the file is fsynced and renamed over
    ``filename``, otherwise removed. A process killed at any moment leaves either the previous file or the complete
    new one, never a torn one (a stray temporary at most, removed by the next write into that folder once its
    writer is dead). The file gets the mode a plain ``open`` gives (0666 minus the umask), so other users and
    containers can read what the umask allows. A full disk or an unwritable folder is a :class:`UserInputError`
    naming the folder."""
    folder = os.path.dirname(os.path.abspath(filename))
    tmp = os.path.join(folder, temp_name(filename))
    try:
        try:
            os.makedirs(folder, exist_ok=True)
            clean_stale_temporaries(folder)
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, filename)
        except OSError as e:
            if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise _disk_full_error(filename, e) from None
            explained = file_system_error(e)  # read-only, not permitted
            if explained is not None:
                raise explained from None
            raise
    finally:
        if os.path.lexists(tmp):
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


def _numpy_safe_globals() -> list:
    """The numpy objects nnU-Net's and nnssl's checkpoints legitimately hold: scalars in the logs (``np.float32``
    losses, Dice, ``_best_ema``), their dtypes, and small arrays. Names for both numpy 1 (``numpy.core``) and
    numpy 2 (``numpy._core``) pickles."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    out = [np.dtype, np.ndarray]
    for mod in ("numpy.core", "numpy._core"):
        out += [(scalar, f"{mod}.multiarray.scalar"), (reconstruct, f"{mod}.multiarray._reconstruct")]
    for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
              np.float16, np.float32, np.float64, np.complex64, np.complex128, np.str_):
        dtype_class = type(np.dtype(t))
        if dtype_class is not np.dtype:  # numpy >= 1.25: numpy.dtypes.Float32DType etc.
            out.append(dtype_class)
    return out


def _safe_names(safe: list) -> set:
    return {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}" for entry in safe}


def _trusted(filename: str) -> bool:
    listed = [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p.strip()]
    real = os.path.realpath(filename)
    return any(os.path.realpath(os.path.expanduser(p.strip())) == real for p in listed)


def _offending_globals(filename: str, error: Exception, safe: list) -> List[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:
        found = re.findall(r"GLOBAL ([\w.]+)", str(error))
    allowed = _safe_names(safe)
    return [g for g in found if g not in allowed] or re.findall(r"GLOBAL ([\w.]+)", str(error))


def _module_missing(name: str) -> Optional[str]:
    """The top-level module of a dotted global name, if it cannot be imported here."""
    top = name.split(".")[0]
    try:
        return None if importlib.util.find_spec(top) is not None else top
    except (ImportError, ValueError):
        return top


def _load(filename: str, map_location) -> Any:
    safe = _numpy_safe_globals()
    if _trusted(filename):
        try:
            return torch.load(filename, map_location=map_location, weights_only=False)
        except (ModuleNotFoundError, AttributeError) as e:
            what = f"the Python module '{e.name}'" if isinstance(e, ModuleNotFoundError) and e.name else str(e)
            raise UserInputError(
                f"{filename} needs {what}, which is not installed in this environment ({type(e).__name__}: "
                f"{e}). Install the package that wrote the checkpoint (for example nnssl or the trainer's "
                f"package) in this environment, or re-save the checkpoint there with plain tensors and dicts.") \
                from None
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower() and "weights_only" not in str(e):
            raise
        offending = _offending_globals(filename, e, safe)
        if not offending:  # no global to name: not a pickle of objects at all (text, garbage): unreadable
            raise
        missing = sorted({m for m in map(_module_missing, offending) if m})
        note = (f" (and the module{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not installed here)") if missing else ""
        raise UserInputError(
            f"{filename} holds objects a nnU-Net/nnssl checkpoint does not contain: "
            f"{', '.join(offending) or 'unknown globals'}{note}. Loading it in full would run code stored in the "
            f"file, so it was refused. If you trust this file (you or a colleague wrote it), allow full loading of "
            f"it alone with {TRUST_ENV}={os.path.abspath(filename)} (several files: separated by "
            f"'{os.pathsep}'), or re-save it with plain tensors, numbers and dicts.") from None


def load_checkpoint_file(filename: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint (ours, stock nnU-Net's or nnssl's) with a clear error for bad files.

    Always maps to ``map_location`` (CPU by default), so a CUDA-saved checkpoint loads on a CPU-only machine.
    Loads with ``weights_only=True`` plus the numpy types of nnU-Net/nnssl checkpoints: a file holding anything
    else (a pickle that would run code on load) is refused with the offending names, unless the user lists it in
    ``NNUNET_SSL_TRUSTED_CHECKPOINTS``.
    """
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise UserInputError(f"Checkpoint file not found: {filename}. Pass the path of a checkpoint_final.pth "
                             f"(or checkpoint_latest.pth) written by nnU-Net, nnunet_ssl or nnssl.")
    try:
        ckpt = _load(filename, map_location)
    except UserInputError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError) as e:  # (a text file fed to the weights-only unpickler ends in a KeyError)
        raise UserInputError(
            f"Could not read {filename} as a PyTorch checkpoint ({type(e).__name__}: "
            f"{(str(e).splitlines() or ['empty file'])[0]}). "
            f"The file is truncated or not a checkpoint: copy it again or point to another checkpoint.") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        keys = list(ckpt.keys())[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserInputError(
            f"{filename} is not an nnU-Net/nnssl checkpoint: it has no 'network_weights' entry (found: {keys}).")
    return ckpt


def load_checkpoint_for_resume(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint ``--c`` picked; if it is damaged, say which intact checkpoint of its folder to use."""
    try:
        return load_checkpoint_file(path, map_location=map_location)
    except UserInputError as e:
        folder, name = os.path.split(os.path.abspath(path))
        best = os.path.join(folder, "checkpoint_best.pth")
        if name != "checkpoint_latest.pth" or not os.path.isfile(best):
            raise
        try:
            epoch = load_checkpoint_file(best, map_location="cpu").get("current_epoch")
        except UserInputError:
            raise UserInputError(f"{e} checkpoint_best.pth in the same folder is damaged as well: start the run "
                                 f"again without --c.") from None
        raise UserInputError(
            f"{e} checkpoint_best.pth in the same folder is intact (it continues at epoch {epoch}): move the "
            f"damaged file away (mv {path} {path}.damaged) and run the same command with --c again; nnU-Net then "
            f"continues from checkpoint_best.pth.") from None
