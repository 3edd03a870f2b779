"""Running a function on CPU processes joined by a gloo process group (unit tests of DDP logic).

Not a test module: imported by ``test_gradient_matching_ddp.py`` and ``test_encoder_freeze_ddp.py``.
"""
import multiprocessing
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank, body, world, tmpdir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmpdir, "rendezvous"), rank=rank,
                            world_size=world)
    try:
        torch.save(body(rank), os.path.join(tmpdir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_gloo_ranks(body, world: int = 2, preload=()):
    """``body(rank)`` (a module-level function) runs in ``world`` processes inside one process group; returns
    what each rank's call returned (saved with torch.save), rank 0 first."""
    with tempfile.TemporaryDirectory() as tmpdir:
        # forkserver (spawn's clean start, but torch is imported once in the server instead of once per rank)
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        if method == "forkserver":
            multiprocessing.set_forkserver_preload(["torch", __name__, *preload])
        mp.start_processes(_rank_main, args=(body, world, tmpdir), nprocs=world, join=True, start_method=method)
        return [torch.load(os.path.join(tmpdir, f"rank{r}.pt")) for r in range(world)]
