"""``nnunet_ssl doctor``: is this environment ready to pre-train and fine-tune with nnunet_ssl?

Prints versions, the nnU-Net environment variables, whether every trainer of the project is found by nnU-Net's
own lookup (the one ``nnUNetv2_train -tr NAME`` and ``nnUNetv2_predict`` use), and what to fix. Exit status 0
when everything is in order, 1 otherwise.
"""
import contextlib
import io
import os
import platform
import sys
from typing import List, Tuple

from nnunet_ssl import __version__
from nnunet_ssl import autoregister
from nnunet_ssl.trainer_names import ALL_TRAINER_NAMES, TRAINER_NAMES


def project_trainer_names() -> List[str]:
    """Every trainer class our nnUNet_extTrainer folder exports (:data:`nnunet_ssl.trainer_names.ALL_TRAINER_NAMES`)."""
    return list(ALL_TRAINER_NAMES)


def runnable_trainer_names() -> List[str]:
    """The trainers a user can run with ``nnUNetv2_train -tr NAME`` (abstract bases left out)."""
    return sorted(TRAINER_NAMES)


def find_trainer_quietly(name: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    with contextlib.redirect_stdout(io.StringIO()):
        return recursive_find_trainer_class_by_name(name)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return "not installed"


def diagnose() -> Tuple[List[str], List[str]]:
    """Return (report lines, problems with their fixes)."""
    lines, problems = [], []
    lines.append(f"nnunet_ssl {__version__} on Python {platform.python_version()} ({sys.executable})")
    for dist in ("nnunetv2", "torch", "dynamic_network_architectures", "batchgeneratorsv2", "batchgenerators",
                 "SimpleITK"):
        lines.append(f"  {dist:32s} {_version(dist)}")
    try:
        import torch
        lines.append(f"  CUDA available: {torch.cuda.is_available()} ({torch.cuda.device_count()} devices)")
    except ImportError:
        problems.append("torch is not importable: reinstall with `pip install torch` (see README).")

    nnunet_version = _version("nnunetv2")
    if nnunet_version == "not installed":
        problems.append("nnunetv2 is not installed: `pip install 'nnunetv2>=2.8'`.")
    else:
        major_minor = tuple(int(p) for p in nnunet_version.split(".")[:2] if p.isdigit())
        if major_minor < (2, 8):
            problems.append(f"nnunetv2 {nnunet_version} is too old: nnUNet_extTrainer exists from 2.8.0 on. "
                            f"`pip install -U 'nnunetv2>=2.8'`.")

    lines.append("nnU-Net environment variables:")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        value = os.environ.get(var)
        state = "NOT SET" if value is None else (value if os.path.isdir(value) else f"{value} (folder missing)")
        lines.append(f"  {var:22s} {state}")
        if value is None:
            problems.append(f"{var} is not set: export {var}=/path/to/{var} (nnU-Net's "
                            f"documentation/setting_up_paths.md).")
        elif not os.path.isdir(value):
            problems.append(f"{var} points to a missing folder: mkdir -p {value}")
    ext = os.environ.get(autoregister.ENV_VAR, "")
    folder = autoregister.ext_trainer_folder()
    registered = any(os.path.abspath(p) == folder for p in ext.split(os.pathsep) if p.strip())
    lines.append(f"  {autoregister.ENV_VAR:22s} {ext or 'NOT SET'}")
    if autoregister.opted_out():
        lines.append(f"  automatic registration: off ({autoregister.OPT_OUT_VAR} is set)")
    if not registered:
        problems.append(f"our trainer folder is not in {autoregister.ENV_VAR}: "
                        + (f"you opted out, so export {autoregister.ENV_VAR}=\"${autoregister.ENV_VAR}"
                           f"{os.pathsep}{folder}\"" if autoregister.opted_out() else
                           "the nnunet_ssl_autoregister.pth file is missing from site-packages; reinstall with "
                           "`pip install .` (or `pip install -e .`)."))

    lines.append("Trainers you can run (nnUNetv2_train -tr NAME; found by nnU-Net's own lookup?):")
    missing, shadowed, broken = [], [], {}
    for name in runnable_trainer_names():
        try:
            cls = find_trainer_quietly(name)
            ok = cls.__module__.startswith(autoregister.TRAINER_PACKAGE)
            lines.append(f"  {'ok     ' if ok else 'SHADOWED'} {name}")
            if not ok:
                shadowed.append(f"{name} ({cls.__module__})")
        except RuntimeError:  # nnU-Net's "Could not find requested nnunet trainer"
            lines.append(f"  MISSING {name}")
            missing.append(name)
        except Exception as e:  # an import error in our trainers: say so, do not crash
            lines.append(f"  MISSING {name}")
            broken.setdefault(f"{type(e).__name__}: {e}", []).append(name)
    if missing:
        problems.append(f"{len(missing)} trainer(s) not found by nnUNetv2_train ({_names(missing)}): "
                        f"{autoregister.ENV_VAR} does not reach {folder}.")
    if shadowed:
        problems.append(f"built-in nnU-Net trainers have the name of {_names(shadowed)}: nnU-Net runs theirs.")
    for error, names in broken.items():
        problems.append(f"the trainer package does not import ({_names(names)}): {error}")
    return lines, problems


def _names(names: List[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run_doctor() -> int:
    lines, problems = diagnose()
    print("\n".join(lines))
    if problems:
        print("\nWhat to fix:")
        for p in dict.fromkeys(problems):
            print(f"  - {p}")
        return 1
    print("\nAll good: every nnunet_ssl trainer is found by nnUNetv2_train and nnUNetv2_predict.")
    return 0
