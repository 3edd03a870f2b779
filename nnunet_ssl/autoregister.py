"""Make nnU-Net find the nnunet_ssl trainers, at interpreter start.

nnU-Net 2.8 looks up trainers it does not ship in the folders named by the environment variable
``nnUNet_extTrainer`` (``os.pathsep``-separated). The wheel installs ``nnunet_ssl_autoregister.pth`` into
site-packages; Python runs its import line at every interpreter start, which calls :func:`register` below.

* The folder we add (``nnunet_ext`` inside the installed ``nnunet_ssl_trainers`` package, the repository's
  ``trainers/nnunet_ext``) holds only a thin re-export module; the real classes live in the ``nnunet_ssl_trainers``
  package itself, so nnU-Net's import clean-up (it drops every module under the folder) never drops them.
* The folder is located with ``importlib.util.find_spec``, which finds the package without importing it (so no
  torch, nnunetv2 or trainer import here) and works for ``pip install .`` (site-packages) and ``pip install -e .``
  (setuptools' editable finder maps the package to the repository's ``trainers/`` folder) alike.
* An existing ``nnUNet_extTrainer`` value is kept: our folder is appended, never replacing the user's.
* Opt out with ``NNUNET_SSL_NO_AUTOREGISTER=1`` (then set ``nnUNet_extTrainer`` yourself, see ``nnunet_ssl doctor``).

This module must stay import-light (only ``os`` and ``importlib.util``): it runs in every Python process of the environment.
"""
import importlib.util
import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNET_SSL_NO_AUTOREGISTER"


TRAINER_PACKAGE = "nnunet_ssl_trainers"
EXT_FOLDER = "nnunet_ext"


def ext_trainer_folder() -> str:
    """The folder nnU-Net must search to find our trainers (``<nnunet_ssl_trainers>/nnunet_ext``).

    Found without importing the trainer package. If the package cannot be found at all (a broken install), the
    place it would have next to ``nnunet_ssl`` in site-packages; ``nnunet_ssl doctor`` then reports the trainers
    as missing.
    """
    try:
        spec = importlib.util.find_spec(TRAINER_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if locations:
        package_dir = locations[0]
    else:
        package_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), TRAINER_PACKAGE)
    return os.path.join(os.path.abspath(package_dir), EXT_FOLDER)


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
