"""Stock nnU-Net on a shorter schedule: the benchmark's from-scratch baseline.

``nnUNetTrainer_schedule`` IS ``nnUNetTrainer`` (same network, plans, losses, augmentation, poly learning rate,
optimizer, final validation); the only things it lets ``NNUNET_SSL_SETTINGS`` change are the length of training
and the batch size, the three things a CPU benchmark has to shorten (and how often ``checkpoint_latest.pth`` is
written, which does not change training)::

    NNUNET_SSL_SETTINGS="num_epochs=100,num_iterations_per_epoch=50,batch_size=2" \\
        nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainer_schedule

With ``NNUNET_SSL_SETTINGS`` unset it trains exactly as ``nnUNetTrainer`` (1000 x 250 iterations, the plans'
batch size). Every fine-tuning arm of the benchmark gets the same values, so the arms differ only in their start.
"""
import torch

from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.settings import COMMON_SETTINGS, apply_env_settings
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

SCHEDULE_SETTINGS = {name: COMMON_SETTINGS[name] for name in ("num_epochs", "num_iterations_per_epoch",
                                                               "num_val_iterations_per_epoch", "batch_size",
                                                               "save_every")}


class nnUNetTrainer_schedule(nnUNetTrainer):
    tunable_settings = SCHEDULE_SETTINGS

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        try:  # before initialize() reads the batch size; the loop reads the epoch counts later
            apply_env_settings(self, self.tunable_settings)
        except UserInputError as e:
            exit_on_user_error(e)
