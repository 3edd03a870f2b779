"""Make nnU-Net find the nnunet_ssl trainers, at interpreter start.

nnU-Net 2.8 looks up trainers it does not ship in the folders named by the environment variable
``nnUNet_extTrainer`` (``os.pathsep``-separated). The wheel installs ``nnunet_ssl_autoregister.pth`` into
site-packages; Python runs its import line at every interpreter start, which calls :func:`register` below.

* The folder we add (``nnunet_ssl/nnunet_ext_trainers``) holds only thin re-export modules; the real classes
  live in the ``nnunet_ssl_trainers`` package, so nnU-Net's import clean-up never drops them.
* An existing ``nnUNet_extTrainer`` value is kept: our folder is appended, never replacing the user's.
* Opt out with ``NNUNET_SSL_NO_AUTOREGISTER=1`` (then set ``nnUNet_extTrainer`` yourself, see ``nnunet_ssl doctor``).

This module must stay import-light (only ``os``): it runs in every Python process of the environment.
"""
import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNET_SSL_NO_AUTOREGISTER"


def ext_trainer_folder() -> str:
    """The folder nnU-Net must search to find our trainers."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext_trainers")


def opted_out(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT_VAR, "0").strip().lower() in ("1", "true", "yes", "on")


def register(environ=None) -> bool:
    """Append our folder to ``nnUNet_extTrainer`` unless opted out or already present. Returns True if set."""
    environ = os.environ if environ is None else environ
    if opted_out(environ):
        return False
    folder = ext_trainer_folder()
    current = environ.get(ENV_VAR, "")
    entries = [p for p in current.split(os.pathsep) if p.strip()]
    if any(os.path.abspath(p) == folder for p in entries):
        return True
    environ[ENV_VAR] = os.pathsep.join(entries + [folder])
    return True
