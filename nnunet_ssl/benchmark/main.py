"""Command line of the low-label benchmark (``scripts/benchmark_low_label.py`` calls :func:`main`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import List

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.arms import ARMS, DEFAULT_ARMS
from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.benchmark.driver import (Run, Runner, do_run, prepare_dataset, run_is_done, run_pretraining,
                                         settings_text)
from nnunet_ssl.errors import UserInputError

PROFILES = {
    "cpu": dict(about="2 CPU cores: default plans, each dataset's shortened schedule (same for every arm), test "
                      "without mirroring; one pre-training per method and dataset",
                pretrain={"num_epochs": 100, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 5},
                tta=False, gpu=False),
    "full": dict(about="GPUs: default plans, nnU-Net's 1000 x 250 schedule for pre-training and every arm, "
                       "test-time mirroring", pretrain={}, tta=True, gpu=True),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="benchmark_low_label.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Few labels: does pre-training beat stock nnU-Net? Runs every arm on every (budget, seed) of "
                    "the chosen datasets, skipping finished work, and writes the report.",
        epilog="Profiles:\n" + "\n".join(f"  {k}: {v['about']}" for k, v in PROFILES.items()))
    p.add_argument("--profile", choices=list(PROFILES), default="cpu")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    p.add_argument("--budgets", nargs="+", type=int, default=None,
                   help="labeled cases (hippocampus) or patients (ACDC); default: every budget of the dataset")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="label subsets (default 0 1 2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed test/validation split")
    p.add_argument("--work-dir", default="./low_label_work/stock", help="working folder (resumable)")
    p.add_argument("--stage", choices=["setup", "runs", "report", "all"], default="all")
    p.add_argument("--order", choices=["budget", "arm"], default="budget",
                   help="budget: smallest budget of every dataset first; arm: one arm after the other")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the profile's)")
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's output instead of log files")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    return p.parse_args(argv)


def schedule_of(args, ds) -> str:
    return "" if args.profile == "full" else settings_text(ds.cpu_schedule)


def make_runs(args) -> List[Run]:
    runs = []
    for key in args.datasets:
        ds = DATASETS[key]
        for budget in (args.budgets or ds.budgets):
            if budget not in ds.budgets:
                raise UserInputError(f"{key}: budget {budget} is not one of {list(ds.budgets)}")
            for seed in args.seeds:
                for arm in args.arms:
                    runs.append(Run(key, ARMS[arm], budget, seed))
    if args.order == "budget":
        runs.sort(key=lambda r: (DATASETS[r.dataset].budgets.index(r.budget), r.seed, args.datasets.index(r.dataset),
                                 args.arms.index(r.arm.name)))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    prof = PROFILES[args.profile]
    device = args.device or ("cuda" if prof["gpu"] else "cpu")
    work = Path(args.work_dir).expanduser().resolve()
    runs = make_runs(args)
    todo = [r for r in runs if not run_is_done(work, r)]
    bc.log(f"low-label benchmark, profile {args.profile}: {len(runs)} runs, {len(todo)} to do, work dir {work}")
    for r in todo:
        print(f"  {r.name}: {r.arm.trainer}" + (f" from {r.arm.pretrain}" if r.arm.pretrain else ""))
    if args.dry_run:
        return 0
    work.mkdir(parents=True, exist_ok=True)
    folders = bc.setup_nnunet_folders(str(work), results_name="nnUNet_results_unused")
    if not prof["gpu"]:
        os.environ.setdefault("nnUNet_n_proc_DA", "2")
        os.environ.setdefault("nnUNet_def_n_proc", "1")
    runner = Runner(work, {k: folders[k] for k in ("nnUNet_raw", "nnUNet_preprocessed")}, args.verbose)
    setups = {}
    for key in args.datasets:
        arms = [ARMS[a] for a in args.arms]
        setups[key] = prepare_dataset(work, DATASETS[key], args.split_seed, args.num_processes,
                                      need_unlabeled=any(a.pretrain or a.uses_unlabeled for a in arms),
                                      need_reference=any(a.pretrain == "refs" for a in arms))
    if args.stage in ("runs", "all"):
        for r in todo:
            s = setups[r.dataset]
            if r.arm.pretrain:
                run_pretraining(work, s, r.arm.pretrain, settings_text(prof["pretrain"]), runner, device)
            do_run(work, s, r, schedule_of(args, s.ds), runner, device, prof["tta"])
            bc.log(f"{r.name}: done")
    if args.stage in ("report", "all"):
        from nnunet_ssl.benchmark.report import write_report
        write_report(work, args, setups)
    return 0


if __name__ == "__main__":
    bc.run_main(main)
