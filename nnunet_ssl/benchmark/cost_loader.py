"""Throughput of PGL's two-view loader, for the cost benchmark: can it keep up with PGL's training steps?

:func:`loader_benchmark` measures batches/s of ``TwoViewDataLoader`` in one process and inside nnU-Net's augmenter
with ``workers`` processes (after draining what the workers prepared during startup: the steady state), then
times a few PGL steps that draw from the augmenter (end to end). The verdict against PGL's consumption is
:func:`nnunet_ssl.benchmark.cost_report.loader_verdict`.
"""
from __future__ import annotations

import statistics
import time

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.cost_trainers import Bench, finish_loader


def _batches_per_s(next_batch, n_batches: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next_batch()
    return n_batches / (time.perf_counter() - t0)


def _e2e_step_times(trainer, aug, steps: int, device) -> list:
    import torch
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(next(aug))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def loader_benchmark(pgl: Bench, workers: int, n_batches: int, e2e_steps: int, device) -> dict:
    """Loader throughput of the built PGL trainer ``pgl`` (see the module doc); a dict for the results."""
    from nnunet_ssl.data.two_view_loader import make_two_view_augmenter
    t = pgl.trainer
    dataset_tr, _ = t.get_tr_and_val_datasets()
    res = {"workers": workers, "batches": n_batches, "batch_size": t.batch_size,
           "patch_size": list(t.configuration_manager.patch_size)}
    loader = t.make_two_view_loader(dataset_tr, True)
    loader.generate_train_batch()
    res["single_process_batches_per_s"] = _batches_per_s(loader.generate_train_batch, n_batches)
    bc.log(f"  two-view loader, single process: {res['single_process_batches_per_s']:.2f} batches/s")
    aug = make_two_view_augmenter(t.make_two_view_loader(dataset_tr, True), workers, device.type == "cuda")
    try:
        t0 = time.perf_counter()
        next(aug)
        res["startup_s"] = time.perf_counter() - t0
        cached = getattr(aug, "num_cached", 0) if workers > 0 else 0
        for _ in range(cached):  # drain what was prepared while we waited: measure the steady state
            next(aug)
        res["augmenter_batches_per_s"] = _batches_per_s(lambda: next(aug), n_batches)
        bc.log(f"  two-view loader in nnU-Net's augmenter, {workers} worker(s): "
               f"{res['augmenter_batches_per_s']:.2f} batches/s")
        if e2e_steps > 0:
            res["e2e_step_s"] = statistics.median(_e2e_step_times(t, aug, e2e_steps, device))
            res["e2e_steps"] = e2e_steps
            bc.log(f"  PGL steps drawing from the augmenter: median {res['e2e_step_s']:.3f} s/step")
    finally:
        finish_loader(aug)
    return res
