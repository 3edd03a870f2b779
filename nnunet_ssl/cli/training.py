"""Pre-training and fine-tuning from Python scripts: the stock ``nnUNetv2_train`` command with our environment.

Both run ``nnUNetv2_train`` in a subprocess (the same command a user types, so nnU-Net's own process handling,
logging and ``--c`` apply) and return the run's output folder ``<nnUNet_results>/<Dataset>/<trainer>__<plans>__<cfg>
/fold_<fold>``. Settings (``NNUNET_SSL_SETTINGS``) are given as a dict.
"""
import os
from typing import Dict, Optional, Union

from nnunet_ssl.cli.commands import run_nnunet
from nnunet_ssl.trainer_names import FINETUNE_TRAINER, METHOD_TRAINERS, PRETRAINED_ENV, SETTINGS_ENV


def settings_text(settings: Optional[Union[str, Dict[str, object]]]) -> str:
    """``{"num_epochs": 2, "label_budget": 10}`` -> ``"num_epochs=2,label_budget=10"`` (a string is kept)."""
    if not settings:
        return ""
    if isinstance(settings, str):
        return settings
    return ",".join(f"{k}={v}" for k, v in settings.items())


def _output_folder(dataset: str, trainer: str, plans: str, configuration: str, fold: str) -> str:
    from nnunet_ssl.paths import dataset_name_from_id, require_env_folder
    return os.path.join(require_env_folder("nnUNet_results"), dataset_name_from_id(dataset),
                        f"{trainer}__{plans}__{configuration}", f"fold_{fold}")


def pretrain(dataset: Union[int, str], method: str = "mae", configuration: str = "3d_fullres",
             plans: str = "nnUNetPlans", settings=None, device: str = "cuda", continue_training: bool = False,
             env: Optional[Dict[str, str]] = None) -> str:
    """Pre-train on an ingested unlabeled ``dataset`` (fold ``all``) with ``method`` (mae, gmim, pgl, ideal, refs
    or a pre-training trainer class name). Returns the output folder; its ``checkpoint_final.pth`` is the
    checkpoint to fine-tune."""
    trainer = METHOD_TRAINERS.get(method.lower(), method)
    run_nnunet("nnUNetv2_train", [dataset, configuration, "all", "-tr", trainer, "-p", plans, "-device", device]
               + (["--c"] if continue_training else []),
               env=dict(env or {}, **{SETTINGS_ENV: settings_text(settings)}))
    return _output_folder(str(dataset), trainer, plans, configuration, "all")


def finetune(dataset: Union[int, str], checkpoint: Optional[str], fold: Union[int, str] = 0,
             configuration: str = "3d_fullres", trainer: str = FINETUNE_TRAINER, plans: str = "nnUNetPlans",
             settings=None, device: str = "cuda", continue_training: bool = False,
             env: Optional[Dict[str, str]] = None) -> str:
    """Fine-tune ``checkpoint`` (ours, stock nnU-Net's or nnssl's; None: from scratch with the same schedule) on the
    labeled ``dataset``. For MAE, GMIM and ReFs checkpoints use ``trainer="SSLFinetuneTrainer_decoderWarmup"``.
    Returns the output folder (pass its parent to :func:`nnunet_ssl.export_model` for stock nnU-Net)."""
    run_env = dict(env or {}, **{SETTINGS_ENV: settings_text(settings)})
    if checkpoint is not None and not continue_training:
        from nnunet_ssl.weights.checkpoint import load_checkpoint_file
        load_checkpoint_file(checkpoint)  # fail early, with a clear message, on a bad file
        run_env[PRETRAINED_ENV] = os.path.abspath(checkpoint)
    run_nnunet("nnUNetv2_train", [dataset, configuration, fold, "-tr", trainer, "-p", plans, "-device", device]
               + (["--c"] if continue_training else []), env=run_env)
    return _output_folder(str(dataset), trainer, plans, configuration, str(fold))
