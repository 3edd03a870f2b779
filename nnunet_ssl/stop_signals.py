"""Scheduler signals (SIGTERM, SIGUSR1) turned into a request to stop at the next safe point.

SLURM preemption, ``timeout`` and most batch systems send SIGTERM (SLURM sends SIGUSR1 ahead of the time limit with
``--signal=USR1@90``). A training process must not die in the middle of a step: while :class:`StopSignals` is
active, the handler only records the signal; the training loop asks :meth:`StopSignals.requested` between steps,
writes a checkpoint and exits with ``128 + signal number`` (the shell's convention for "ended by a signal").

Under DDP every rank asks at the same points and all ranks get the same answer (the highest signal number any rank
received), so they stop together. Handlers are installed only in the main thread (Python allows no other) and the
previous ones are restored on exit.
"""
import signal
import threading
from typing import Optional

import torch
from torch import distributed as dist

STOP_SIGNAL_NAMES = ("SIGTERM", "SIGUSR1")


class StopSignals:
    """Context manager: records SIGTERM/SIGUSR1 instead of dying; ask :meth:`requested` between steps."""

    def __init__(self, names=STOP_SIGNAL_NAMES):
        self.signals = [getattr(signal, n) for n in names if hasattr(signal, n)]
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False

    def _record(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def requested(self, device: Optional[torch.device] = None) -> Optional[int]:
        """The signal number if this process (or, under DDP, any rank) received one; None otherwise."""
        received = self.received or 0
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([float(received)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            received = int(flag.item())
        return received or None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
