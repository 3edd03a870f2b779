"""Base class of every nnunet_ssl pre-training trainer.

What it changes in ``nnUNetTrainer`` (and nothing else):

* trains on an unlabeled dataset (made by ``nnunet_ssl ingest``): labels are never read for the loss; validation
  is the SSL loss on the fold's held-out cases; no pseudo Dice, no final sliding-window validation;
* the method is an objective (:class:`nnunet_ssl.methods.objective.Objective`) the trainer composes: a method
  trainer only names it (``objective_class = PGLObjective``); its settings (with their defaults) become trainer
  attributes and ``NNUNET_SSL_SETTINGS`` names, its data choice picks the loader (nnU-Net's own for one view, the
  two-view loader for two views or a second crop), its per-step curves go to the training log and progress.png;
* the objective's heads, predictors and teachers live in ``self.ssl_modules`` (outside ``self.network``, so the
  saved ``network_weights`` is exactly the nnU-Net network); they are saved in and restored from the checkpoint, so
  ``--c`` resumes exactly (teachers, optimizer, epoch);
* one step counter (:meth:`global_step`), one guarded optimizer step (:mod:`nnunet_ssl_trainers.optimizer_step`),
  one way to build extra data loaders (:meth:`extra_loader`, finished at the end of training);
* checkpoints are written atomically with CPU tensors plus an ``nnssl_adaptation_plan`` block;
* a step whose loss or gradient is NaN/Inf is skipped and counted; ``max_nonfinite_in_a_row`` in a row stop the
  run with a message naming the last usable checkpoint; a checkpoint is never written over with diverged weights
  (:mod:`nnunet_ssl.weights.health`);
* SIGTERM/SIGUSR1 write ``checkpoint_latest.pth`` mid-epoch and exit; ``--c`` resumes at the next step
  (:mod:`nnunet_ssl_trainers.pretraining_loop`);
* ``NNUNET_SSL_SETTINGS`` overrides hyperparameters (see :mod:`nnunet_ssl.settings`).
"""
import math
from collections import defaultdict
from time import time
from typing import Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch import autocast, nn
from torch import distributed as dist

from nnunet_ssl.data.augmenter import finish_augmenter, make_augmenter
from nnunet_ssl.data.two_view_loader import TwoViewDataLoader, intensity_only_transforms
from nnunet_ssl.distributed import mean_over_ranks
from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.methods.objective import NetworkInfo, Objective
from nnunet_ssl.methods.views import ViewSamplingConfig
from nnunet_ssl.settings import COMMON_SETTINGS, apply_env_settings
from nnunet_ssl.ssl_logging import SSLLocalLogger
from nnunet_ssl.weights.checkpoint import atomic_torch_save
from nnunet_ssl.weights.health import DIVERGENCE_FACTOR, global_weight_norm, is_diverged
from nnunet_ssl.weights.network_parts import unwrap
from nnunet_ssl_trainers.distributed_mixin import CPUDistributedMixin
from nnunet_ssl_trainers.optimizer_step import GUARD_SETTINGS, GuardedOptimizerStep, NonFiniteLossError  # noqa: F401
from nnunet_ssl_trainers.pretraining_checkpoint import pretraining_checkpoint, restore_pretraining_checkpoint
from nnunet_ssl_trainers.pretraining_loop import run_pretraining
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context


class nnUNetSSLTrainer(CPUDistributedMixin, nnUNetTrainer):
    """Pre-training on unlabeled data. Not usable by itself: subclasses name the objective."""

    objective_class: Optional[Type[Objective]] = None
    # pre-training leaves some parameters unused (e.g. the lower-resolution output layers while deep supervision is
    # off); DDP must be told, or the first backward fails
    ddp_find_unused_parameters = True
    # whether fine-tuning should load this method's decoder (nnunet_ssl.weights.transfer.recommended_load_decoder);
    # stored in the checkpoint; the objective's unless a class says otherwise
    decoder_transfers = True
    # the settings of the trainer itself; tunable_settings adds the objective's (__init_subclass__)
    trainer_settings: Dict[str, type] = dict(COMMON_SETTINGS, **GUARD_SETTINGS)
    tunable_settings: Dict[str, type] = trainer_settings

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        objective = cls.objective_class
        cls.tunable_settings = dict(cls.trainer_settings, **(objective.settings if objective else {}))
        if objective is not None and "decoder_transfers" not in cls.__dict__:
            cls.decoder_transfers = objective.decoder_transfers

    @classmethod
    def method_defaults(cls) -> Dict[str, object]:
        """The method's settings as this class trains without ``NNUNET_SSL_SETTINGS``, by name: the objective's and
        the trainer's own (not the schedule's or the guard's), a variant's values where it sets them. They tell apart
        two pre-trainings run with the same settings text by different code (e.g. ``IDEALTrainer`` before and after
        a change of its default levels)."""
        objective = cls.objective_class
        own = set(cls.trainer_settings) - set(COMMON_SETTINGS) - set(GUARD_SETTINGS)
        names = sorted(own | set(objective.settings if objective is not None else ()))
        return {name: getattr(cls, name, getattr(objective, name, None)) for name in names}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0
        self.num_epochs = 100
        self.save_every = 5
        self.grad_clip = 12.0
        self.max_nonfinite_in_a_row = 20
        self.ssl_modules = nn.ModuleDict()
        self._nonfinite_in_a_row = 0
        self._best_val_loss = None
        self._iteration_in_epoch = 0  # training steps taken in this epoch: see global_step / advance_step
        self.full_forward = None  # objective's online forward through the wrapped network: None = under DDP only
        self.objective: Optional[Objective] = None  # built by initialize (build_ssl_modules)
        self._extra_loaders = []
        self.initial_weight_norm: Optional[float] = None  # the network's weight norm when the run started (health)
        self._epoch_progress = None  # (steps_done, step_outputs) of a checkpoint written mid-epoch by a signal
        self.step_guard = GuardedOptimizerStep(self, self.trainable_parameters, lambda: self._sync_head_gradients(),
                                               self.after_optimizer_step)
        # the objective's settings with their defaults, unless a (variant) class sets them
        objective = self.objective_class
        for name in (objective.settings if objective is not None else ()):
            if not hasattr(self, name):
                setattr(self, name, getattr(objective, name))
        self.logger.local_logger = SSLLocalLogger(self.all_curve_keys())

    # ------------------------------------------------------------------ the objective
    def build_ssl_modules(self) -> None:
        """Build the objective on the network; its heads/predictors/teachers go into ``self.ssl_modules``."""
        objective = self.objective_class
        info = NetworkInfo.of(self.network, self.configuration_manager.patch_size, self.num_input_channels)
        full = self.is_ddp if self.full_forward is None else bool(self.full_forward)
        self.objective = objective(self.network, info, clock=lambda: (self.global_step(), self.total_steps()),
                                   full_forward=full, device=self.device, owner=type(self).__name__,
                                   **{name: getattr(self, name) for name in objective.settings})
        for name, module in self.objective.modules.items():
            self.ssl_modules[name] = module
        # nothing is logged before initialize, so the logger can be rebuilt with the curves of the settings
        self.logger.local_logger = SSLLocalLogger(self.all_curve_keys())
        for line in self.objective.describe():
            self.print_to_log_file(line)

    def ssl_loss(self, batch: dict, train: bool) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The SSL loss of a batch and the per-step values of the objective's curves."""
        return self.objective.loss(batch, self.network, train)

    def after_optimizer_step(self) -> None:
        """Called after every completed optimizer step: the objective's EMA teacher updates."""
        self.objective.after_step(self.global_step(), self.total_steps())

    def all_curve_keys(self) -> Tuple[str, ...]:
        """Per-epoch curves logged besides the losses (an instance method: some depend on settings)."""
        if self.objective is not None:
            keys = self.objective.all_curve_keys()
        else:  # before initialize: the objective class's (per-level curves are added once the settings are known)
            keys = getattr(self.objective_class, "curve_keys", ())
        return tuple(keys) + ("skipped_steps",)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        # masked modeling: the output layer reconstructs the input channels
        if cls.objective_class is not None and cls.objective_class.reconstructs_input:
            num_output_channels = num_input_channels
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)

    # ------------------------------------------------------------------ setup
    def initialize(self):
        if self.was_initialized:
            raise RuntimeError("initialize called twice")
        try:
            apply_env_settings(self, self.tunable_settings)
            super().initialize()  # wraps DDP once, with find_unused_parameters (CPUDistributedMixin)
            self.build_ssl_modules()
        except UserInputError as e:
            exit_on_user_error(e)
        self.ssl_modules.to(self.device)
        if self.is_ddp:
            # DDP broadcasts the network from rank 0, but heads/teachers live outside it: every rank must start
            # from rank 0's, or the randomly initialised heads differ between ranks for the whole run
            for t in list(self.ssl_modules.parameters()) + list(self.ssl_modules.buffers()):
                dist.broadcast(t.data, src=0)
        # the optimizer must see the heads as well
        self.optimizer, self.lr_scheduler = self.configure_optimizers()

    def _do_i_compile(self):
        """torch.compile is opt-in for pre-training (``nnUNet_compile=1``): forward hooks (GMIM's hierarchical
        masks, feature taps) and the fish clone need the plain module."""
        import os
        return os.environ.get("nnUNet_compile", "").lower() in ("1", "true", "t") and super()._do_i_compile()

    def trainable_parameters(self) -> List[nn.Parameter]:
        params = list(self.network.parameters())
        params += [p for p in self.ssl_modules.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self):
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
        optimizer = torch.optim.SGD(self.trainable_parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self):
        return None  # the segmentation loss is never used in pre-training

    # ------------------------------------------------------------------ steps
    def _sync_head_gradients(self):
        """DDP averages gradients of ``self.network``; heads live outside it, so average theirs here."""
        if not self.is_ddp:
            return
        world = dist.get_world_size()
        for p in self.ssl_modules.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= world

    def optimizer_step(self, loss: torch.Tensor) -> bool:
        """The one guarded step: backward, gradient clipping, NaN/Inf guard, optimizer step, teacher updates.
        Returns False if the step was skipped (:class:`~nnunet_ssl_trainers.optimizer_step.GuardedOptimizerStep`)."""
        return self.step_guard(loss)

    def autocast_context(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    # ------------------------------------------------------------------ the one step counter
    def global_step(self) -> int:
        """Training steps since the start of training (skipped ones included): the clock of every per-step
        schedule (e.g. EMA momentum). Derived from ``current_epoch``, so a resumed run (which restarts at an epoch
        boundary) continues the schedule with nothing extra in the checkpoint."""
        return int(self.current_epoch) * int(self.num_iterations_per_epoch) + self._iteration_in_epoch

    def advance_step(self) -> None:
        """Call once at the end of every training step (after the optimizer and teacher updates): this class's
        ``train_step`` does, and so must every ``train_step`` that does not call it (ReFs)."""
        self._iteration_in_epoch += 1

    def on_train_epoch_start(self):
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()

    def total_steps(self) -> int:
        """Training steps of the whole run: the length of every per-step schedule."""
        return max(1, int(self.num_epochs) * int(self.num_iterations_per_epoch))

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            loss, curves = self.ssl_loss(batch, train=True)
        done = self.optimizer_step(loss)
        self.advance_step()
        return {"loss": loss.detach().cpu().numpy(), "skipped_steps": 0.0 if done else 1.0, **curves}

    def validation_step(self, batch: dict) -> dict:
        with self.autocast_context():
            loss, curves = self.ssl_loss(batch, train=False)
        return {"loss": loss.detach().cpu().numpy(), **curves}

    # ------------------------------------------------------------------ data
    def view_sampling_config(self) -> ViewSamplingConfig:
        return ViewSamplingConfig(placement=self.objective.view_placement)

    def make_two_view_loader(self, dataset, train: bool) -> TwoViewDataLoader:
        """Two views per case with their geometry (:mod:`nnunet_ssl.data.two_view_loader`): random boxes and flips
        (``data == "two_views"``) or a second crop shifted by the objective's ``target_crop_shift`` without flips
        (``"second_crop"``); nnU-Net's intensity augmentations per view while training."""
        spatial = self.objective.data == "two_views"
        transforms = intensity_only_transforms() if train else None
        return TwoViewDataLoader(dataset, self.batch_size, self.configuration_manager.patch_size,
                                 self.view_sampling_config(), intensity_transforms=transforms, spatial=spatial,
                                 crop_shift=0.0 if spatial else self.objective.target_crop_shift)

    def get_dataloaders(self):
        if self.objective.data == "one_view":
            return super().get_dataloaders()  # nnU-Net's own loader and augmentation
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        # nnU-Net's training pipeline sets inference_allowed_mirroring_axes here; keep that side effect
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        n_proc = get_allowed_n_proc_DA()
        pin = self.device.type == "cuda"
        dl_tr = make_augmenter(self.make_two_view_loader(dataset_tr, True), n_proc, pin)
        dl_val = make_augmenter(self.make_two_view_loader(dataset_val, False), max(1, n_proc // 2)
                                if n_proc > 0 else 0, pin)
        _ = next(dl_tr)
        _ = next(dl_val)
        return dl_tr, dl_val

    def extra_loader(self, loader, num_processes: int, num_cached: Optional[int] = None):
        """The one way to add a data loader besides nnU-Net's two (e.g. ReFs' reference batches): wrapped like
        them (:func:`nnunet_ssl.data.augmenter.make_augmenter`) and finished at the end of training."""
        augmenter = make_augmenter(loader, num_processes, self.device.type == "cuda", num_cached)
        self._extra_loaders.append(augmenter)
        return augmenter

    def shutdown_data_loaders(self) -> None:
        for augmenter in [self.dataloader_train, self.dataloader_val] + self._extra_loaders:
            if augmenter is not None:
                finish_augmenter(augmenter)

    def on_train_end(self):
        super().on_train_end()
        for augmenter in self._extra_loaders:
            finish_augmenter(augmenter)

    # ------------------------------------------------------------------ the loop
    def run_training(self):
        run_pretraining(self)  # nnU-Net's loop plus SIGTERM/SIGUSR1 checkpoints and a clear stop after NaN/Inf

    def on_train_start(self):
        super().on_train_start()
        if self.initial_weight_norm is None:  # a fresh run (a resumed one restores it from its checkpoint)
            self.initial_weight_norm = global_weight_norm(unwrap(self.network).state_dict().values())

    def resume_progress(self) -> Tuple[int, List[dict]]:
        """Steps already done in the current epoch and their outputs (a checkpoint written mid-epoch), else 0."""
        steps, outputs = self._epoch_progress or (0, [])
        self._epoch_progress = None
        self._iteration_in_epoch = steps  # the global step continues where the signal stopped it
        return steps, outputs

    def weights_diverged(self) -> bool:
        norm = global_weight_norm(unwrap(self.network).state_dict().values())
        if not is_diverged(norm, self.initial_weight_norm):
            return False
        self.print_to_log_file(f"WARNING: the weights diverged (norm {norm:.3g}, more than {DIVERGENCE_FACTOR:g} "
                               f"times the initial {self.initial_weight_norm:.3g}): no checkpoint is written over "
                               f"with them. Lower the learning rate (initial_lr={self.initial_lr:g}).")
        return True

    def save_progress_checkpoint(self, steps_done: int, step_outputs: List[dict]) -> None:
        """``checkpoint_latest.pth`` of the epoch in progress (after ``steps_done`` steps): ``--c`` resumes there."""
        if self.weights_diverged():
            return
        outputs = [{k: float(np.mean(v)) for k, v in o.items()} for o in step_outputs]
        self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"), progress=(steps_done, outputs))

    # ------------------------------------------------------------------ epoch bookkeeping
    def on_train_epoch_end(self, train_outputs: List[dict]):
        per_key = defaultdict(list)
        for out in train_outputs:
            for k, v in out.items():
                per_key[k].append(v)
        self.logger.log("train_losses", mean_over_ranks(per_key["loss"]), self.current_epoch)
        for k in self.all_curve_keys():
            values = per_key.get(k, [])
            value = mean_over_ranks(values) if k != "skipped_steps" else float(np.sum(values))
            self.logger.log(k, value, self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self.logger.log("val_losses", mean_over_ranks([o["loss"] for o in val_outputs]), self.current_epoch)

    def on_epoch_end(self):
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        get = self.logger.get_value
        self.print_to_log_file("train_loss", np.round(get("train_losses", step=-1), decimals=4))
        self.print_to_log_file("val_loss", np.round(get("val_losses", step=-1), decimals=4))
        for k in self.all_curve_keys():
            self.print_to_log_file(k, np.round(get(k, step=-1), decimals=4))
        self.print_to_log_file(f"Epoch time: {np.round(get('epoch_end_timestamps', step=-1) - get('epoch_start_timestamps', step=-1), decimals=2)} s")

        diverged = self.weights_diverged()
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1) \
                and not diverged:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        val = get("val_losses", step=-1)
        if math.isfinite(val) and (self._best_val_loss is None or val < self._best_val_loss) and not diverged:
            self._best_val_loss = val
            self.print_to_log_file(f"New best validation SSL loss: {np.round(val, decimals=4)}")
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Pre-training (nnunet_ssl): no segmentation validation. Fine-tune "
                               f"{join(self.output_folder, 'checkpoint_final.pth')} on a labeled dataset.")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dict(self, progress: Optional[Tuple[int, List[dict]]] = None) -> dict:
        """The checkpoint at the end of the current epoch, or (``progress``: steps done and their outputs) in the
        middle of it (:mod:`nnunet_ssl_trainers.pretraining_checkpoint`)."""
        return pretraining_checkpoint(self, progress)

    def save_checkpoint(self, filename: str, progress: Optional[Tuple[int, List[dict]]] = None) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        atomic_torch_save(self.checkpoint_dict(progress), filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        try:
            restore_pretraining_checkpoint(self, filename_or_checkpoint)
        except UserInputError as e:
            exit_on_user_error(e)
