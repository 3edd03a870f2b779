"""Run an nnunet_ssl trainer under DDP on CPU processes (gloo): nnU-Net's ``run_ddp`` without CUDA.

    python -m nnunet_ssl.cpu_ddp DATASET 3d_fullres FOLD -tr PGLTrainer -p nnUNetPlans -num_procs 2 [--c]

``nnUNetv2_train -num_gpus N`` needs N GPUs (NCCL). This launcher does what nnU-Net's ``run_ddp`` does - one
process per rank, :func:`~nnunetv2.run.run_training.get_trainer_from_args`, ``maybe_load_checkpoint``,
``run_training`` - with the ``gloo`` backend and ``device=cpu``; our trainers then stay on the CPU
(:class:`nnunet_ssl_trainers.distributed_mixin.CPUDistributedMixin`). It exists to exercise the distributed logic (EMA
teachers, gradient averaging, gradient matching, per-rank sampling) on machines without GPUs; it is not a way to
train fast. Each rank uses ``--threads`` torch threads (default 1).

``--record DIR`` writes, for every rank, ``DIR/rank<r>.pt`` at the end: the rank's network weights, the state of
its SSL modules (teachers, heads) and the case keys of every training batch it drew (to check that ranks stay in
sync and see different data).
"""
import argparse
import os
import socket
import sys
from typing import List, Optional

import torch
import torch.multiprocessing as mp
from torch import distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_batches(trainer, keys: List[list]) -> None:
    original = trainer.train_step

    def train_step(batch):
        keys.append([str(k) for k in batch.get("keys", [])])
        return original(batch)

    trainer.train_step = train_step


def _rank_main(rank: int, world_size: int, port: int, dataset: str, configuration: str, fold: str, trainer_name: str,
               plans: str, continue_training: bool, record_dir: Optional[str], threads: int) -> None:
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from nnunet_ssl.weights.network_parts import unwrap
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fold_value = fold if fold == "all" else int(fold)
        trainer = get_trainer_from_args(dataset, configuration, fold_value, trainer_name, plans, continue_training,
                                        device=torch.device("cpu"))
        if trainer.device.type != "cpu":
            raise SystemExit(f"{trainer_name} does not support DDP on CPU (it moved itself to {trainer.device}); "
                             f"nnunet_ssl trainers do.")
        keys: List[list] = []
        if record_dir:
            _record_batches(trainer, keys)
        maybe_load_checkpoint(trainer, continue_training, False, None)
        trainer.run_training()
        if record_dir:
            ssl_modules = getattr(trainer, "ssl_modules", None)
            torch.save({"rank": rank, "world_size": world_size, "batch_keys": keys,
                        "batch_size": trainer.batch_size,
                        "network_weights": {k: v.detach().cpu() for k, v in
                                            unwrap(trainer.network).state_dict().items()},
                        "ssl_state": {} if ssl_modules is None else
                        {k: v.detach().cpu() for k, v in ssl_modules.state_dict().items()}},
                       os.path.join(record_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_cpu_ddp(dataset: str, configuration: str, fold: str, trainer: str, plans: str = "nnUNetPlans",
                num_procs: int = 2, continue_training: bool = False, record_dir: Optional[str] = None,
                threads: int = 1) -> None:
    if record_dir:
        os.makedirs(record_dir, exist_ok=True)
    mp.spawn(_rank_main, args=(num_procs, _free_port(), str(dataset), configuration, str(fold), trainer, plans,
                               continue_training, record_dir, threads), nprocs=num_procs, join=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run an nnunet_ssl trainer under DDP on CPU processes (gloo), the way "
                                            "nnUNetv2_train -num_gpus N does on GPUs. For testing the distributed "
                                            "logic, not for speed.")
    p.add_argument("dataset")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-tr", default="nnUNetTrainer")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("-num_procs", type=int, default=2)
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--record", default=None, help="write every rank's final state and batch keys here")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    a = p.parse_args(argv)
    if a.num_procs < 1:
        p.error("-num_procs must be >= 1")
    run_cpu_ddp(a.dataset, a.configuration, a.fold, a.tr, a.p, a.num_procs, a.c, a.record, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
