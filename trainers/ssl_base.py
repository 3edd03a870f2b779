"""Base class of every nnunet_ssl pre-training trainer.

What it changes in ``nnUNetTrainer`` (and nothing else):

* trains on an unlabeled dataset (made by ``nnunet_ssl ingest``): labels are never read for the loss; validation
  is the SSL loss on the fold's held-out cases; no pseudo Dice, no final sliding-window validation;
* subclasses implement :meth:`ssl_loss` (and optionally :meth:`build_ssl_modules`, :meth:`after_optimizer_step`,
  :meth:`get_dataloaders`); per-epoch SSL curves named in ``ssl_curve_keys`` go to the training log and progress.png;
* heads, predictors and teachers live in ``self.ssl_modules`` (outside ``self.network``, so the saved
  ``network_weights`` is exactly the nnU-Net network); they are saved in and restored from the checkpoint, so
  ``--c`` resumes exactly (teachers, optimizer, epoch);
* checkpoints are written atomically with CPU tensors plus an ``nnssl_adaptation_plan`` block;
* a step whose loss or gradient is NaN/Inf is skipped and counted; ``max_nonfinite_in_a_row`` in a row stop the
  run with a clear message (the last good checkpoint stays on disk);
* ``NNUNET_SSL_SETTINGS`` overrides hyperparameters (see :mod:`nnunet_ssl.settings`).
"""
import math
from collections import defaultdict
from time import time
from typing import Dict, List, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch import autocast, nn
from torch import distributed as dist

from nnunet_ssl.distributed import mean_over_ranks
from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.weights.checkpoint import adaptation_plan, atomic_torch_save, load_checkpoint_file, to_cpu
from nnunet_ssl.weights.network_parts import unwrap
from nnunet_ssl.settings import COMMON_SETTINGS, apply_env_settings
from nnunet_ssl.ssl_logging import SSLLocalLogger
from nnunet_ssl_trainers.distributed_mixin import CPUDistributedMixin
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context


class NonFiniteLossError(RuntimeError):
    pass


class nnUNetSSLTrainer(CPUDistributedMixin, nnUNetTrainer):
    """Pre-training on unlabeled data. Not usable by itself: subclasses define the SSL objective."""

    ssl_curve_keys: Tuple[str, ...] = ()
    # pre-training leaves some parameters unused (e.g. the lower-resolution output layers while deep supervision is
    # off); DDP must be told, or the first backward fails
    ddp_find_unused_parameters = True
    # whether fine-tuning should load this method's decoder (nnunet_ssl.weights.transfer.recommended_load_decoder); stored
    # in the checkpoint
    decoder_transfers = True
    tunable_settings: Dict[str, type] = dict(COMMON_SETTINGS, max_nonfinite_in_a_row=int, grad_clip=float)

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
        self.logger.local_logger = SSLLocalLogger(self.all_curve_keys())

    # ------------------------------------------------------------------ hooks for subclasses
    def build_ssl_modules(self) -> None:
        """Create heads/predictors/teachers in ``self.ssl_modules`` (called once the network exists)."""

    def ssl_loss(self, batch: dict, train: bool) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Return the SSL loss of a batch and the per-step values of ``ssl_curve_keys``."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every successful optimizer step (EMA teacher updates go here)."""

    def all_curve_keys(self) -> Tuple[str, ...]:
        """Per-epoch curves logged besides the losses (an instance method: some depend on settings)."""
        return tuple(self.ssl_curve_keys) + ("skipped_steps",)

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

    def _nonfinite_guard(self, finite: bool) -> bool:
        """Count a skipped step; raise once too many come in a row. Returns True if the step may proceed."""
        if self.is_ddp:  # every rank must take the same decision
            flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        if finite:
            return True  # the counter is reset only by a completed step (step_with_current_gradients)
        self._nonfinite_in_a_row += 1
        self.print_to_log_file(f"WARNING: non-finite loss or gradient, step skipped "
                               f"({self._nonfinite_in_a_row} in a row)")
        if self._nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
            raise NonFiniteLossError(
                f"{self._nonfinite_in_a_row} steps in a row had a NaN/Inf loss or gradient; training stopped at "
                f"epoch {self.current_epoch}. The last good checkpoint is in {self.output_folder}. Lower the "
                f"learning rate (NNUNET_SSL_SETTINGS=initial_lr=...) or check the input data for NaN/Inf values, "
                f"then continue with --c.")
        return False

    def apply_update(self, loss: torch.Tensor) -> bool:
        """Backward, gradient clipping, NaN/Inf guard and optimizer step. Returns False if the step was skipped."""
        if not self._nonfinite_guard(bool(torch.isfinite(loss.detach()).all())):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self._sync_head_gradients()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            loss.backward()
            self._sync_head_gradients()
        return self.step_with_current_gradients()

    def step_with_current_gradients(self, use_scaler: bool = True) -> bool:
        """Clip the gradients already in ``.grad``, check them, step the optimizer and the teachers.

        ``use_scaler=False`` for gradients that did not come from ``grad_scaler.scale(loss).backward()``.
        """
        scaler = self.grad_scaler if use_scaler else None
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.grad_clip)
        if not self._nonfinite_guard(bool(torch.isfinite(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            return False
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self._nonfinite_in_a_row = 0
        self.after_optimizer_step()
        return True

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

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            loss, curves = self.ssl_loss(batch, train=True)
        done = self.apply_update(loss)
        self.advance_step()
        return {"loss": loss.detach().cpu().numpy(), "skipped_steps": 0.0 if done else 1.0, **curves}

    def validation_step(self, batch: dict) -> dict:
        with self.autocast_context():
            loss, curves = self.ssl_loss(batch, train=False)
        return {"loss": loss.detach().cpu().numpy(), **curves}

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

        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
        val = get("val_losses", step=-1)
        if math.isfinite(val) and (self._best_val_loss is None or val < self._best_val_loss):
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
    def checkpoint_dict(self) -> dict:
        net = unwrap(self.network)
        return {
            "network_weights": to_cpu(net.state_dict()),
            "optimizer_state": to_cpu(self.optimizer.state_dict()),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "ssl_state": to_cpu({k: unwrap(m).state_dict() for k, m in self.ssl_modules.items()}),
            "nnunet_ssl": {"best_val_loss": self._best_val_loss, "kind": "pretraining",
                           "configuration": self.configuration_name,
                           "nonfinite_in_a_row": self._nonfinite_in_a_row,
                           "transfer_decoder": self.decoder_transfers},
            "nnssl_adaptation_plan": adaptation_plan(net, self.plans_manager.plans, self.configuration_name,
                                                     self.num_input_channels),
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        atomic_torch_save(self.checkpoint_dict(), filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        ckpt = load_checkpoint_file(filename_or_checkpoint, map_location=self.device) \
            if not isinstance(filename_or_checkpoint, dict) else filename_or_checkpoint
        weights = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt["network_weights"].items()}
        unwrap(self.network).load_state_dict(weights)
        for name, state in ckpt.get("ssl_state", {}).items():
            if name in self.ssl_modules:
                unwrap(self.ssl_modules[name]).load_state_dict(state)
        self.my_init_kwargs = ckpt["init_args"]
        self.current_epoch = ckpt["current_epoch"]
        self.logger.load_checkpoint(ckpt["logging"])
        self._best_ema = ckpt.get("_best_ema")
        meta = ckpt.get("nnunet_ssl", {})
        self._best_val_loss = meta.get("best_val_loss")
        self._nonfinite_in_a_row = meta.get("nonfinite_in_a_row", 0)
        self.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                         self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.grad_scaler is not None and ckpt.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(ckpt["grad_scaler_state"])
