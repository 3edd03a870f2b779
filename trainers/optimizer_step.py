"""The one guarded optimizer step of every nnunet_ssl trainer that steps its optimizer itself.

Pre-training (:class:`~nnunet_ssl_trainers.ssl_base.nnUNetSSLTrainer`, ReFs' gradient matching included) and
IDEAL's semi-supervised fine-tuning share it: backward (through the AMP ``GradScaler`` when the trainer has one),
gradient clipping, a NaN/Inf guard on the loss and on the gradient norm, the optimizer step. A step whose loss or
gradient is not finite is skipped and counted; ``max_nonfinite_in_a_row`` in a row raise
:class:`NonFiniteLossError`, which the training loop turns into a message naming the last usable checkpoint.
Under DDP every rank takes the same decision.

:class:`GuardedOptimizerStep` is held by the trainer (composition, no mixin) and reads the trainer's
``optimizer``, ``grad_scaler``, ``is_ddp``, ``device``, ``grad_clip``, ``max_nonfinite_in_a_row``,
``current_epoch``, ``output_folder`` and ``print_to_log_file`` when it runs, so settings applied later
(``NNUNET_SSL_SETTINGS``) and optimizers replaced between stages (fine-tuning warm-up) are respected. The counter
of skipped steps in a row is the trainer's ``_nonfinite_in_a_row`` (pre-training stores it in its checkpoint).
"""
from typing import Callable, Iterable, Optional

import torch
from torch import distributed as dist

from nnunet_ssl.settings import Setting


#: the settings of the guarded step, for the trainers that hold one
GUARD_SETTINGS = {"max_nonfinite_in_a_row": Setting(int, min=1), "grad_clip": Setting(float, min=0, min_exclusive=True)}


class NonFiniteLossError(RuntimeError):
    pass


class GuardedOptimizerStep:
    def __init__(self, trainer, parameters: Callable[[], Iterable[torch.nn.Parameter]],
                 sync_gradients: Optional[Callable[[], None]] = None,
                 after_step: Optional[Callable[[], None]] = None):
        """``parameters``: the parameters to clip (and whose optimizer steps); ``sync_gradients``: called between
        backward and unscaling (gradients of modules outside the DDP wrapper); ``after_step``: called after every
        completed optimizer step (EMA teachers)."""
        self.trainer = trainer
        self.parameters = parameters
        self.sync_gradients = sync_gradients or (lambda: None)
        self.after_step = after_step or (lambda: None)

    def guard(self, finite: bool) -> bool:
        """Count a skipped step; raise once too many come in a row. Returns True if the step may proceed."""
        t = self.trainer
        if t.is_ddp:  # every rank must take the same decision
            flag = torch.tensor([0.0 if finite else 1.0], device=t.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        if finite:
            return True  # the counter is reset only by a completed step (step_with_current_gradients)
        t._nonfinite_in_a_row += 1
        t.print_to_log_file(f"WARNING: non-finite loss or gradient, step skipped "
                            f"({t._nonfinite_in_a_row} in a row)")
        if t._nonfinite_in_a_row >= t.max_nonfinite_in_a_row:
            raise NonFiniteLossError(
                f"{t._nonfinite_in_a_row} steps in a row had a NaN/Inf loss or gradient (max_nonfinite_in_a_row="
                f"{t.max_nonfinite_in_a_row}); training stopped at epoch {t.current_epoch}.")
        return False

    def __call__(self, loss: torch.Tensor) -> bool:
        """Backward, gradient clipping, NaN/Inf guard and optimizer step. Returns False if the step was skipped."""
        t = self.trainer
        if not self.guard(bool(torch.isfinite(loss.detach()).all())):
            t.optimizer.zero_grad(set_to_none=True)
            return False
        if t.grad_scaler is not None:
            t.grad_scaler.scale(loss).backward()
            self.sync_gradients()
            t.grad_scaler.unscale_(t.optimizer)
        else:
            loss.backward()
            self.sync_gradients()
        return self.step_with_current_gradients()

    def step_with_current_gradients(self, use_scaler: bool = True) -> bool:
        """Clip the gradients already in ``.grad``, check them, step the optimizer and call ``after_step``.

        ``use_scaler=False`` for gradients that did not come from ``grad_scaler.scale(loss).backward()``.
        """
        t = self.trainer
        scaler = t.grad_scaler if use_scaler else None
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.parameters()), t.grad_clip)
        if not self.guard(bool(torch.isfinite(grad_norm))):
            t.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            return False
        if scaler is not None:
            scaler.step(t.optimizer)
            scaler.update()
        else:
            t.optimizer.step()
        t._nonfinite_in_a_row = 0
        self.after_step()
        return True
