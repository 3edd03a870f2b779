"""Fine-tuning a pre-trained checkpoint (ours or nnssl's) on a labeled nnU-Net dataset.

    NNUNET_SSL_PRETRAINED=/path/checkpoint_final.pth nnUNetv2_train DATASET 3d_fullres 0 -tr SSLFinetuneTrainer

(``nnunet_ssl finetune DATASET 3d_fullres 0 -w CKPT`` sets the variable for you.) Differences to stock
``-pretrained_weights``:

* the encoder is loaded, the decoder where shapes match, segmentation layers never; the training log lists every
  key as loaded / adapted / skipped with the reason (:mod:`nnunet_ssl.weights.transfer`). Exception: a decoder trained to
  reconstruct the input (MAE, GMIM, ReFs on MAE) is left at its initialisation, because it blocks the gradient to
  the encoder (``recommended_load_decoder``); ``load_decoder=True`` / ``False`` in ``NNUNET_SSL_SETTINGS`` decides
  explicitly;
* ``reinit_encoder_stages=N`` keeps the first N encoder stages at their random initialisation (pre-training can
  collapse early-stage features; ``scripts/probe_finetune_start.py`` measures it);
* a different input-channel count adapts the stem as nnssl does; a truly incompatible checkpoint is refused
  naming the first mismatching layer and both shapes;
* CUDA-saved checkpoints load on CPU-only machines; checkpoints are written atomically (temp file + rename);
* the whole network warms up linearly (nnU-Net's ``nnUNetTrainer_warmup`` schedule) before the normal poly
  schedule: ``warmup_duration_whole_net`` epochs (default 50 of 1000, scaled down for short runs);
* optionally the decoder warms up alone first, the encoder frozen (``warmup_duration_decoder`` epochs, default 0;
  the variant ``SSLFinetuneTrainer_decoderWarmup`` uses 100 of 1000, the same share of shorter schedules):
  stages ``warmup_decoder`` -> ``warmup_all`` -> ``train``, each named in the log when it starts;
* ``encoder_lr_factor=F`` (default 1.0) trains the encoder at F x the schedule's learning rate once it trains
  (discriminative fine-tuning: a pre-trained encoder moves less from what pre-training taught it).

Without ``NNUNET_SSL_PRETRAINED`` it trains from scratch with exactly the same schedule (the fair baseline);
``SSLScratchTrainer`` is that baseline under its own name (it refuses ``NNUNET_SSL_PRETRAINED``).
Resuming with ``--c`` never reloads the pre-trained weights.

Both honour a label budget (:class:`nnunet_ssl_trainers.fold_label_budget.FoldLabelBudget`)::

    NNUNET_SSL_SETTINGS="label_budget=10,label_seed=0" nnUNetv2_train DATASET 3d_fullres 0 -tr SSLScratchTrainer
"""
import os

import torch

from nnunet_ssl.weights.checkpoint import atomic_file, load_checkpoint_file, load_checkpoint_for_resume
from nnunet_ssl.weights.encoder_freeze import EncoderFreeze, non_encoder_parameters
from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.data.label_budget import LABEL_BUDGET_SETTINGS
from nnunet_ssl.weights.network_parts import encoder_parameters, unwrap
from nnunet_ssl.settings import COMMON_SETTINGS, Setting, apply_env_settings
from nnunet_ssl.trainer_names import PRETRAINED_ENV, PRETRAINING_DECODER_TRANSFERS
from nnunet_ssl.weights.transfer import recommended_load_decoder, transfer_weights
from nnunet_ssl_trainers.distributed_mixin import CPUDistributedMixin
from nnunet_ssl_trainers.fold_label_budget import FoldLabelBudget
from nnunetv2.training.lr_scheduler.warmup import (Lin_incr_LRScheduler, Lin_incr_offset_LRScheduler,
                                                   PolyLRScheduler_offset)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import empty_cache



def _decoder_transfers_of(trainer_name: str):
    """``decoder_transfers`` of one of our pre-training trainers (checkpoints written before it was stored), from
    the table the workflow's route recommendation reads too (tests/unit/test_package_layout.py keeps it equal to the
    classes' attribute); None for any other trainer."""
    return PRETRAINING_DECODER_TRANSFERS.get(trainer_name)


class SSLFinetuneTrainer(CPUDistributedMixin, nnUNetTrainer):
    """nnU-Net training from a pre-trained start with nnU-Net's warm-up schedule (``nnUNetTrainer_warmup``'s stages
    and schedulers, re-implemented in :meth:`configure_optimizers` with an optional decoder-only stage in front)."""

    tunable_settings = dict(COMMON_SETTINGS, warmup_duration_whole_net=Setting(int, min=1),
                            warmup_duration_decoder=Setting(int, min=0),
                            load_decoder=bool, final_validation=bool, reinit_encoder_stages=Setting(int, min=0),
                            encoder_lr_factor=Setting(float, min=0), **LABEL_BUDGET_SETTINGS)
    STAGES = ("warmup_decoder", "warmup_all", "train")
    # label budget defaults (nnunet_ssl.data.label_budget); NNUNET_SSL_SETTINGS overrides them per instance
    label_budget = None
    label_seed = 0
    labeled_cases_file = None
    budget_rest = "unused"
    #: trainers that train on an unlabeled pool set this to True (then budget_rest=unlabeled is allowed)
    uses_unlabeled_pool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_duration_whole_net = 50  # nnUNetTrainer_warmup's linear whole-net warm-up (epochs of 1000)
        self.training_stage = None  # warmup_decoder / warmup_all / train (STAGES)
        self.load_decoder = None  # None: as the pre-training recommends (recommended_load_decoder)
        self.reinit_encoder_stages = 0  # N > 0: the first N encoder stages keep their random initialisation
        self.warmup_duration_decoder = 0  # epochs with the encoder frozen before the whole-net warm-up
        # the encoder's learning rate relative to nnU-Net's schedule once it trains (1.0: the same as the rest)
        self.encoder_lr_factor = 1.0
        self._encoder_freeze = None
        self.final_validation = True  # False: skip nnU-Net's sliding-window validation of the fold (demo, benchmarks)
        self.transfer_report = None
        self._resumed = False
        self._dropped_decoder_warmup = False
        self.fold_label_budget = FoldLabelBudget(self)

    def initialize(self):
        try:
            applied = apply_env_settings(self, self.tunable_settings)
        except UserInputError as e:
            exit_on_user_error(e)
        # keep nnU-Net's 5 % warm-up ratio for shortened schedules
        if "warmup_duration_whole_net" not in applied:
            self.warmup_duration_whole_net = max(1, min(self.warmup_duration_whole_net, self.num_epochs // 20))
        if "warmup_duration_decoder" not in applied and 0 < self.num_epochs < 1000:
            # a class default (of 1000 epochs) keeps its share of a shorter schedule
            class_default = self.warmup_duration_decoder
            d = max(int(class_default > 0), class_default * self.num_epochs // 1000)
            self.warmup_duration_decoder = min(d, max(0, self.num_epochs - self.warmup_duration_whole_net - 1))
            # the class's decoder warm-up did not fit this short schedule (said when the weights load)
            self._dropped_decoder_warmup = class_default > 0 and self.warmup_duration_decoder == 0
        try:
            self._check_warmup()
        except UserInputError as e:
            exit_on_user_error(e)
        super().initialize()

    def _check_warmup(self):
        d, w = self.warmup_duration_decoder, self.warmup_duration_whole_net
        if d < 0 or w < 1:
            raise UserInputError(f"warmup_duration_decoder must be >= 0 and warmup_duration_whole_net >= 1 epochs, "
                                 f"got {d} and {w}. Fix: change them in NNUNET_SSL_SETTINGS.")
        if d >= self.num_epochs:
            self.print_to_log_file(f"warmup_duration_decoder={d} >= num_epochs={self.num_epochs}: the encoder stays "
                                   f"frozen for the whole run (decoder-only training).")

    def do_split(self):
        return self.fold_label_budget.labeled_keys(*super().do_split())

    def unlabeled_rest_keys(self):
        """Training cases of the fold outside the label budget (``budget_rest=unlabeled``: the unlabeled pool)."""
        return self.fold_label_budget.unlabeled_rest()

    def stage_at(self, epoch: int) -> str:
        """``warmup_decoder`` (encoder frozen), ``warmup_all`` (nnU-Net's whole-net warm-up) or ``train`` (poly)."""
        if epoch < self.warmup_duration_decoder:
            return "warmup_decoder"
        if epoch < self.warmup_duration_decoder + self.warmup_duration_whole_net:
            return "warmup_all"
        return "train"

    def _sgd(self, params):
        """nnU-Net's SGD over ``params`` (parameters or parameter groups)."""
        return torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99, nesterov=True)

    def _sgd_whole_net(self):
        """SGD over every parameter; with ``encoder_lr_factor`` != 1 the encoder is a second parameter group whose
        ``lr_factor`` :meth:`on_train_epoch_start` applies after nnU-Net's scheduler set every group's rate."""
        if self.encoder_lr_factor == 1.0:
            return self._sgd(unwrap(self.network).parameters())
        encoder = [p for _, p in encoder_parameters(self.network)]
        return self._sgd([{"params": non_encoder_parameters(self.network)},
                          {"params": encoder, "lr_factor": self.encoder_lr_factor}])

    def configure_optimizers(self, stage: str = None):
        """nnU-Net's warm-up stages with the decoder-only stage in front; the learning rate of each stage comes from
        nnU-Net's schedulers, offset by the stages before it. A stage keeps its optimizer when asked again; ``train``
        continues the whole-net warm-up's optimizer (momentum), as in ``nnUNetTrainer_warmup``."""
        stage = self.stage_at(self.current_epoch) if stage is None else stage
        assert stage in self.STAGES, stage
        if self.training_stage == stage:
            return self.optimizer, self.lr_scheduler
        if self._encoder_freeze is None:
            self._encoder_freeze = EncoderFreeze(self.network)
        d, w = self.warmup_duration_decoder, self.warmup_duration_whole_net
        if stage == "warmup_decoder":
            self._encoder_freeze.freeze()
            optimizer = self._sgd(non_encoder_parameters(self.network))
            lr_scheduler = Lin_incr_LRScheduler(optimizer, self.initial_lr, d)
            what = "train decoder only (encoder frozen), warmup"
        else:
            self._encoder_freeze.release()
            if stage == "warmup_all":
                optimizer = self._sgd_whole_net()
                lr_scheduler = Lin_incr_offset_LRScheduler(optimizer, self.initial_lr, w, d)
                what = "train whole net, warmup"
            else:
                keep = self.training_stage == "warmup_all"
                optimizer = self.optimizer if keep else self._sgd_whole_net()
                lr_scheduler = PolyLRScheduler_offset(optimizer, self.initial_lr, self.num_epochs, d + w)
                what = "train whole net, default schedule"
        if stage != "warmup_decoder" and self.encoder_lr_factor != 1.0:
            what += f"; encoder at {self.encoder_lr_factor} x the learning rate"
        self.print_to_log_file(what)
        self.print_to_log_file(f"Initialized {stage} optimizer and lr_scheduler at epoch {self.current_epoch}")
        self.training_stage = stage
        empty_cache(self.device)
        return optimizer, lr_scheduler

    def on_train_epoch_start(self):
        # replaces nnUNetTrainer_warmup's two-stage switch
        self.optimizer, self.lr_scheduler = self.configure_optimizers(self.stage_at(self.current_epoch))
        nnUNetTrainer.on_train_epoch_start(self)  # steps the scheduler: every group at the schedule's rate
        for group in self.optimizer.param_groups:
            group["lr"] *= group.get("lr_factor", 1.0)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.final_validation:
            self.print_to_log_file("final_validation=False: nnU-Net's validation of the fold is skipped.")
            return
        super().perform_actual_validation(save_probabilities)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written atomically: a kill during the write leaves the previous file intact."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        try:
            with atomic_file(filename) as tmp:
                super().save_checkpoint(tmp)
        except UserInputError as e:  # disk full, read-only folder
            exit_on_user_error(e)

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
        try:  # a damaged or unsafe file stops here with a message (naming an intact checkpoint_best.pth if any)
            epoch = load_checkpoint_for_resume(path, map_location="cpu")["current_epoch"]
        except UserInputError as e:
            exit_on_user_error(e)
        # the checkpoint's optimizer is that of the last finished epoch's stage (after the decoder warm-up's last
        # epoch it holds the decoder only); the next on_train_epoch_start moves on to the stage of `epoch`.
        # (A finished run, --c: its last epoch's stage; warmup_all and train share the whole-net SGD)
        stage = self.stage_at(max(min(epoch, self.num_epochs) - 1, 0))
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
        report = transfer_weights(self.network, ckpt, load_decoder=load_decoder,
                                  reinit_encoder_stages=self.reinit_encoder_stages)
        self.transfer_report = report
        self.print_to_log_file(f"Pre-trained weights from {path}")
        self.print_to_log_file(f"Decoder: {why}")
        if not load_decoder and self._dropped_decoder_warmup:
            self.print_to_log_file(
                f"Note: the decoder starts random and this trainer's decoder-only warm-up does not fit a "
                f"{self.num_epochs}-epoch schedule (it needs at least {self.warmup_duration_whole_net + 2} epochs): "
                f"the whole net trains from the first epoch.")
        elif not load_decoder and self.warmup_duration_decoder == 0:
            self.print_to_log_file(
                "Hint: the decoder starts random. With few labels, a decoder-only warm-up first (-tr "
                "SSLFinetuneTrainer_decoderWarmup, or warmup_duration_decoder=N in NNUNET_SSL_SETTINGS) turned "
                "losses against training from scratch into a match in our benchmark (README, item 10).")
        # the console gets the headline, the training log every tensor (hundreds of lines)
        self.print_to_log_file(report.summary(), also_print_to_console=False)
        if self.local_rank == 0:
            print(f"{report.headline()} Per-tensor list: {self.log_file}")
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


#: epochs (of nnU-Net's 1000) of the decoder-first warm-up of the ``_decoderWarmup`` variants, the same share of
#: shorter schedules
DECODER_WARMUP_EPOCHS = 100


class SSLFinetuneTrainer_decoderWarmup(SSLFinetuneTrainer):
    """Decoder-first warm-up: 100 of 1000 epochs (the same share of shorter runs) train the decoder with the encoder
    frozen, then nnU-Net's whole-net warm-up and poly schedule."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_duration_decoder = DECODER_WARMUP_EPOCHS


class SSLFinetuneTrainer_decoderWarmupSlowEncoder(SSLFinetuneTrainer_decoderWarmup):
    """The route recommended for IDEAL and PGL checkpoints, whose losses train the encoder but not the decoder stages
    the output layer sees: the decoder-first warm-up, then the whole net with the encoder at 0.1x the learning rate
    (``encoder_lr_factor``; linear-probe-then-fine-tune, docs/benchmarks.md "What a frozen representation knows")."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.encoder_lr_factor = 0.1
