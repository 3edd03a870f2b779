"""The pre-training loop: nnU-Net's epochs with the same hooks in the same order, plus two ways to stop cleanly.

* **SIGTERM / SIGUSR1** (scheduler preemption, ``timeout``, SLURM's ``--signal=USR1@90``): the signal is recorded
  (:class:`nnunet_ssl.stop_signals.StopSignals`); at the next step boundary ``checkpoint_latest.pth`` is written with
  the epoch in progress, the steps it has done and their per-step values, the data loaders are stopped and the
  process exits with ``128 + signal``. ``nnUNetv2_train ... --c`` continues that epoch at its next step, so no step
  is lost or repeated (the global step and every schedule continue exactly).
* **Too many NaN/Inf steps in a row** (:class:`~nnunet_ssl_trainers.optimizer_step.NonFiniteLossError`): a message
  instead of a traceback, naming the last checkpoint whose weights are still usable
  (:mod:`nnunet_ssl.weights.health`) or saying plainly that none is; exit status 2. So does any
  :class:`~nnunet_ssl.errors.UserInputError` of the run (a checkpoint that cannot be written: disk full, read-only).

Trainers call :func:`run_pretraining` from ``run_training``; they provide ``save_progress_checkpoint(steps_done,
step_outputs)``, ``resume_progress()`` and ``shutdown_data_loaders()``.
"""
import os
from typing import List

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_ssl.errors import UserInputError, exit_on_user_error
from nnunet_ssl.stop_signals import StopSignals, signal_name
from nnunet_ssl.weights.checkpoint import load_checkpoint_file
from nnunet_ssl.weights.health import is_diverged, state_dict_norm
from nnunet_ssl_trainers.optimizer_step import NonFiniteLossError


def run_pretraining(trainer) -> None:
    t = trainer
    with StopSignals() as stop:
        try:
            t.on_train_start()  # data loader workers start here and inherit the recording handler
            while t.current_epoch < t.num_epochs:
                t.on_epoch_start()
                t.on_train_epoch_start()
                steps_done, outputs = t.resume_progress()
                if steps_done:
                    t.print_to_log_file(f"Continuing epoch {t.current_epoch} at step {steps_done} of "
                                        f"{t.num_iterations_per_epoch} (stopped there by a signal)")
                for _ in range(steps_done, t.num_iterations_per_epoch):
                    _stop_if_signalled(t, stop, outputs)
                    outputs.append(t.train_step(next(t.dataloader_train)))
                t.on_train_epoch_end(outputs)
                with torch.no_grad():
                    t.on_validation_epoch_start()
                    val_outputs = [t.validation_step(next(t.dataloader_val))
                                   for _ in range(t.num_val_iterations_per_epoch)]
                    t.on_validation_epoch_end(val_outputs)
                t.on_epoch_end()
                _stop_if_signalled(t, stop, [])
            t.on_train_end()
        except NonFiniteLossError as e:
            exit_after_nonfinite(t, e, t.shutdown_data_loaders)
        except UserInputError as e:  # e.g. a checkpoint that cannot be written (disk full, read-only folder)
            t.shutdown_data_loaders()
            exit_on_user_error(e)


def _stop_if_signalled(t, stop: StopSignals, outputs: List[dict]) -> None:
    signum = stop.requested(t.device)
    if signum is None:
        return
    t.save_progress_checkpoint(len(outputs), outputs)
    t.shutdown_data_loaders()
    where = f"epoch {t.current_epoch}, step {len(outputs)} of {t.num_iterations_per_epoch}"
    t.print_to_log_file(f"Stopped by {signal_name(signum)} at {where}: saved "
                        f"{join(t.output_folder, 'checkpoint_latest.pth')}. Continue with the same nnUNetv2_train "
                        f"command plus --c (it resumes at this step).")
    raise SystemExit(128 + signum)


def exit_after_nonfinite(t, error: NonFiniteLossError, shutdown_data_loaders) -> None:
    """Stop the loaders, log and print the NaN/Inf stop with :func:`usable_checkpoint_advice`, exit status 2."""
    shutdown_data_loaders()
    message = f"{error} {usable_checkpoint_advice(t)}"
    t.print_to_log_file(message)
    exit_on_user_error(UserInputError(message))


def usable_checkpoint_advice(t) -> str:
    """Which checkpoint of the output folder a user can continue from after the run diverged, and how."""
    lr = f"initial_lr is {t.initial_lr:g}; lower it with NNUNET_SSL_SETTINGS=initial_lr=..."
    usable = []
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):
        path = join(t.output_folder, name)
        if not os.path.isfile(path):
            continue
        try:
            ckpt = load_checkpoint_file(path, map_location="cpu")
        except UserInputError:
            continue
        norm = state_dict_norm(ckpt.get("network_weights", {}))
        if not is_diverged(norm, getattr(t, "initial_weight_norm", None)):
            usable.append((name, ckpt.get("current_epoch")))
    if not usable:
        return (f"No checkpoint in {t.output_folder} was written before the weights diverged (none holds finite "
                f"weights of a sane size), so none is usable: start again without --c, with a lower learning rate "
                f"({lr}), or check the input data for NaN/Inf values.")
    name, epoch = usable[0]
    how = "continue with --c" if name == "checkpoint_latest.pth" else \
        "delete or move checkpoint_latest.pth, then continue with --c (it falls back to checkpoint_best.pth)"
    return (f"The last usable checkpoint (written before the weights diverged) is {join(t.output_folder, name)} "
            f"(epoch {epoch}): lower the learning rate ({lr}) and {how}.")
