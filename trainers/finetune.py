"""Fine-tuning a pre-trained checkpoint (ours or nnssl's) on a labeled nnU-Net dataset.

    NNUNET_SSL_PRETRAINED=/path/checkpoint_final.pth nnUNetv2_train DATASET 3d_fullres 0 -tr SSLFinetuneTrainer

(``nnunet_ssl finetune DATASET 3d_fullres 0 -w CKPT`` sets the variable for you.) Differences to stock
``-pretrained_weights``:

* the encoder is loaded, the decoder where shapes match, segmentation layers never; the training log lists every
  key as loaded / adapted / skipped with the reason (:mod:`nnunet_ssl.transfer`). Exception: a decoder trained to
  reconstruct the input (MAE, GMIM, ReFs on MAE) is left at its initialisation, because it blocks the gradient to
  the encoder (``recommended_load_decoder``); ``load_decoder=True`` / ``False`` in ``NNUNET_SSL_SETTINGS`` decides
  explicitly;
* a different input-channel count adapts the stem as nnssl does; a truly incompatible checkpoint is refused
  naming the first mismatching layer and both shapes;
* CUDA-saved checkpoints load on CPU-only machines; checkpoints are written atomically (temp file + rename);
* the whole network warms up linearly (nnU-Net's ``nnUNetTrainer_warmup`` schedule) before the normal poly
  schedule: ``warmup_duration_whole_net`` epochs (default 50 of 1000, scaled down for short runs).

Without ``NNUNET_SSL_PRETRAINED`` it trains from scratch with exactly the same schedule (the fair baseline);
``SSLScratchTrainer`` is that baseline under its own name (it refuses ``NNUNET_SSL_PRETRAINED``).
Resuming with ``--c`` never reloads the pre-trained weights.

Both honour a label budget (:class:`nnunet_ssl_trainers.label_budget.LabelBudgetMixin`)::

    NNUNET_SSL_SETTINGS="label_budget=10,label_seed=0" nnUNetv2_train DATASET 3d_fullres 0 -tr SSLScratchTrainer
"""
import os

import torch

from nnunet_ssl.checkpoint import atomic_file, load_checkpoint_file
from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.label_budget import LABEL_BUDGET_SETTINGS
from nnunet_ssl.settings import COMMON_SETTINGS, apply_env_settings
from nnunet_ssl.transfer import recommended_load_decoder, transfer_weights
from nnunet_ssl_trainers.cpu_ddp import CPUDistributedMixin
from nnunet_ssl_trainers.label_budget import LabelBudgetMixin
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainer_warmup import nnUNetTrainer_warmup

PRETRAINED_ENV = "NNUNET_SSL_PRETRAINED"


def _decoder_transfers_of(trainer_name: str):
    """``decoder_transfers`` of one of our pre-training trainers (checkpoints written before it was stored)."""
    from nnunet_ssl_trainers import index
    return getattr(getattr(index, trainer_name, None), "decoder_transfers", None)


class SSLFinetuneTrainer(LabelBudgetMixin, CPUDistributedMixin, nnUNetTrainer_warmup):
    tunable_settings = dict(COMMON_SETTINGS, warmup_duration_whole_net=int, load_decoder=bool,
                            final_validation=bool, **LABEL_BUDGET_SETTINGS)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.load_decoder = None  # None: as the pre-training recommends (recommended_load_decoder)
        self.final_validation = True  # False: skip nnU-Net's sliding-window validation of the fold (demo, benchmarks)
        self.transfer_report = None
        self._resumed = False

    def initialize(self):
        try:
            applied = apply_env_settings(self, self.tunable_settings)
        except UserInputError as e:
            exit_on_user_error(e)
        if "warmup_duration_whole_net" not in applied:
            # keep nnU-Net's 5 % warm-up ratio for shortened schedules
            self.warmup_duration_whole_net = max(1, min(self.warmup_duration_whole_net, self.num_epochs // 20))
        super().initialize()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.final_validation:
            self.print_to_log_file("final_validation=False: nnU-Net's validation of the fold is skipped.")
            return
        super().perform_actual_validation(save_probabilities)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written atomically: a kill during the write leaves the previous file intact."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        with atomic_file(filename) as tmp:
            super().save_checkpoint(tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """``--c``: nnU-Net 2.8's warm-up trainer reads checkpoints with ``torch.load``'s default
        ``weights_only=True``, which refuses nnU-Net's own checkpoints (numpy scalars in the logs) on torch >= 2.6.
        Here the optimizer of the checkpoint's stage (warm-up or poly) is set up first, then nnU-Net's base loader
        (``weights_only=False``) restores network, optimizer, epoch and logs."""
        self._resumed = True
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            raise TypeError("SSLFinetuneTrainer.load_checkpoint expects the path of a checkpoint file")
        # read here for the epoch, and again by nnU-Net's loader: nnU-Net 2.8's load_checkpoint takes only a path
        # (given a dict it fails with UnboundLocalError, found by tests/integration/test_interruption.py)
        path = os.fspath(filename_or_checkpoint)
        epoch = load_checkpoint_file(path, map_location="cpu")["current_epoch"]
        # (no epoch left - e.g. --c of a finished run: nnU-Net's poly scheduler would divide by zero; both stages
        # use the same SGD, so the optimizer state loads either way)
        stage = "train" if self.warmup_duration_whole_net <= epoch < self.num_epochs else "warmup_all"
        self.optimizer, self.lr_scheduler = self.configure_optimizers(stage)
        nnUNetTrainer.load_checkpoint(self, path)

    def pretrained_checkpoint_path(self):
        path = os.environ.get(PRETRAINED_ENV, "").strip()
        return path or None

    def load_pretrained(self, path: str):
        ckpt = load_checkpoint_file(path, map_location="cpu")
        load_decoder, why = recommended_load_decoder(ckpt, _decoder_transfers_of)
        if self.load_decoder is not None:
            load_decoder, why = self.load_decoder, f"load_decoder={self.load_decoder} (NNUNET_SSL_SETTINGS)"
        report = transfer_weights(self.network, ckpt, load_decoder=load_decoder)
        self.transfer_report = report
        self.print_to_log_file(f"Pre-trained weights from {path}")
        self.print_to_log_file(f"Decoder: {why}")
        self.print_to_log_file(report.summary())
        return report

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        try:
            path = self.pretrained_checkpoint_path()
            if path is not None and not self._resumed and self.current_epoch == 0:
                self.load_pretrained(path)
            elif path is None and not self._resumed:
                self.print_to_log_file(f"{PRETRAINED_ENV} not set: training from scratch with the fine-tuning "
                                       f"schedule.")
            # builds the dataloaders: label budget and unlabeled-pool problems surface here
            super().on_train_start()
        except UserInputError as e:
            exit_on_user_error(e)


class SSLScratchTrainer(SSLFinetuneTrainer):
    """The from-scratch baseline: the schedule of :class:`SSLFinetuneTrainer` (warm-up, label budget), random
    initialisation. Never loads pre-trained weights: ``NNUNET_SSL_PRETRAINED`` is refused."""

    def pretrained_checkpoint_path(self):
        path = os.environ.get(PRETRAINED_ENV, "").strip()
        if path:
            raise UserInputError(
                f"{self.__class__.__name__} is the from-scratch baseline and never loads pre-trained weights, but "
                f"{PRETRAINED_ENV}={path} is set. Fix: unset it (unset {PRETRAINED_ENV}) for the baseline, or "
                f"fine-tune the checkpoint with -tr SSLFinetuneTrainer.")
        return None
