"""What the cost benchmark measures of one trainer: the time and memory of one ``train_step``, and its state.

* :func:`timed_step`: seconds of one step (CUDA events + ``torch.cuda.synchronize()`` on a GPU,
  ``time.perf_counter`` on CPU), its extra GPU memory (``max_memory_allocated`` minus ``memory_allocated`` before),
  and the loss;
* :func:`memory_step`: on CPU, the peak increase of the process RSS during one untimed step (:class:`RSSSampler`,
  after :func:`malloc_trim`): an estimate;
* :func:`state_bytes`: the unique tensor storage a trainer keeps between steps; :func:`batch_bytes`: of a batch.

A "bench" is a :class:`nnunet_ssl.benchmark.cost_trainers.Bench` (a built trainer with its prefetched batches).
"""
from __future__ import annotations

import ctypes
import gc
import itertools
import os
import threading
import time
from typing import Optional

_LIBC = None


def malloc_trim():
    """Return freed heap memory to the OS (glibc), so an RSS increase reflects new allocations."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def rss_bytes() -> Optional[int]:
    """Resident set size of this process (``/proc/self/statm``); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RSSSampler:
    """Peak RSS increase over the block, sampled by a background thread."""

    def __init__(self, interval_s: float):
        self.interval = max(1e-4, interval_s)
        self.base = self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def _loop(self):
        while not self._stop.is_set():
            v = rss_bytes()
            if v is not None and v > self.peak:
                self.peak = v
            time.sleep(self.interval)

    def __enter__(self):
        self.base = rss_bytes()
        if self.base is None:
            return self
        self.peak = self.base
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            v = rss_bytes()
            if v is not None:
                self.peak = max(self.peak, v)
        return False

    @property
    def increase(self) -> Optional[int]:
        return None if self.base is None else self.peak - self.base


def state_bytes(trainer) -> int:
    """Unique tensor storage held by the trainer between steps: network, heads/teachers (ssl_modules), optimizer
    state, and nn.Modules in its attributes or one level below (e.g. the ReFs fish matcher's cached clone)."""
    import torch
    from torch import nn
    seen = set()
    total = 0

    def add_tensor(t):
        nonlocal total
        if not isinstance(t, torch.Tensor):
            return
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.device.type)
            size = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(t), t.numel() * t.element_size()
        if key in seen or key[0] == 0:
            return
        seen.add(key)
        total += size
        if t.grad is not None:
            add_tensor(t.grad)

    def add_module(m):
        for t in itertools.chain(m.parameters(), m.buffers()):
            add_tensor(t)

    def visit(obj, depth):
        if isinstance(obj, nn.Module):
            add_module(obj)
        elif isinstance(obj, torch.Tensor):
            add_tensor(obj)
        elif isinstance(obj, dict) and depth > 0:
            for v in obj.values():
                visit(v, depth - 1)
        elif isinstance(obj, (list, tuple)) and depth > 0 and len(obj) < 1000:
            for v in obj:
                visit(v, depth - 1)
        elif hasattr(obj, "__dict__") and depth > 0 and not isinstance(obj, type):
            mod = type(obj).__module__ or ""
            if mod.startswith(("nnunet_ssl", "torch.optim")):
                for v in vars(obj).values():
                    visit(v, depth - 1)

    for v in vars(trainer).values():
        if v is trainer.dataloader_train or v is trainer.dataloader_val:
            continue
        visit(v, 2)
    opt = getattr(trainer, "optimizer", None)
    if opt is not None:
        for st in opt.state.values():
            for v in st.values():
                add_tensor(v)
    return total


def batch_bytes(batch) -> int:
    import torch
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, dict):
        return sum(batch_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(batch_bytes(v) for v in batch)
    return 0


def _loss_value(out) -> float:
    try:
        return float(out.get("loss"))
    except (TypeError, ValueError, AttributeError):
        return float("nan")


def timed_step(b, device) -> tuple:
    """(seconds, step memory bytes or None on CPU, loss)"""
    import torch
    batch = b.next_batch()
    if device.type == "cuda":
        b.trainer.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = b.trainer.train_step(batch)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0, torch.cuda.max_memory_allocated() - before, _loss_value(out)
    t0 = time.perf_counter()
    out = b.trainer.train_step(batch)
    return time.perf_counter() - t0, None, _loss_value(out)


def memory_step(b, interval_s: float) -> Optional[int]:
    """CPU: the peak RSS increase (bytes) during one untimed step, or None where RSS cannot be read."""
    b.trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    malloc_trim()
    with RSSSampler(interval_s) as s:
        b.trainer.train_step(b.next_batch())
    return s.increase
