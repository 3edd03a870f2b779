"""Command line of the low-label benchmark (``scripts/benchmark_low_label.py`` calls :func:`main`)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.arms import (ARMS, DEFAULT_ARMS, PRETRAIN_TRAINERS, arm_schedule,
                                       headline_pretrained_arms, needs_reference, pretrain_schedule)
from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.best_arms import best_arms
from nnunet_ssl.benchmark.check_gate import held_runs
from nnunet_ssl.benchmark.datasets import DATASETS, BenchDataset
from nnunet_ssl.benchmark.pace import Estimate, Pace, parse_deadline
from nnunet_ssl.benchmark.driver import (Run, Runner, do_run, prepare_dataset, run_is_done, run_of_name,
                                         run_pretraining, settings_text, stale_runs)
from nnunet_ssl.benchmark.record import commit as commit_record
from nnunet_ssl.benchmark.record import default_record_dir
from nnunet_ssl.benchmark.record import sync as sync_record
from nnunet_ssl.benchmark.report import DEFAULT_OUT, write_report
from nnunet_ssl.errors import UserInputError

PROFILES = {
    "cpu": dict(about="2 CPU cores: default plans, each dataset's shortened schedule (same for every arm), test "
                      "without mirroring; one pre-training per method and dataset",
                pretrain={"num_epochs": 100, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 5,
                          "batch_size": 2},
                tta=False, gpu=False),
    "full": dict(about="GPUs: default plans, nnU-Net's 1000 x 250 schedule for pre-training and every arm, "
                       "test-time mirroring", pretrain={}, tta=True, gpu=True),
    "smoke": dict(about="minutes, checks the whole pipeline (numbers meaningless): tiny plans (features <= 16, batch "
                        "2), the fewest groups the split needs (3 test cases / 2 test patients, 1 validation group), "
                        "1 x 2 pre-training and 2 x 2 fine-tuning iterations",
                  pretrain={"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1},
                  finetune={"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1,
                            "batch_size": 2},
                  tta=False, gpu=False, n_proc_da="0", tiny={"max_features": 16, "batch_size": 2},
                  max_groups="fewest", seeds=(0,), num_budgets=1,
                  split={"hippocampus": dict(num_test_groups=3, num_val_groups=1, num_reference_cases=4),
                         "acdc": dict(num_test_groups=2, num_val_groups=1, num_reference_cases=4)}),
}
WORK_DIRS = {"smoke": "./low_label_work/smoke"}  # every other profile: ./low_label_work/stock


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="benchmark_low_label.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Few labels: does pre-training beat stock nnU-Net? Runs every arm on every (budget, seed) of "
                    "the chosen datasets, skipping finished work, and writes the report.",
        epilog="Profiles:\n" + "\n".join(f"  {k}: {v['about']}" for k, v in PROFILES.items()))
    p.add_argument("--profile", choices=list(PROFILES), default="cpu")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=None,
                   help="default: every headline arm (with --best-arms: none besides those)")
    p.add_argument("--best-arms", type=int, default=0, metavar="N",
                   help="also run the N best headline pre-trained arms of each dataset at its smallest budget, "
                        "ranked as the report ranks them, with their pre-trainings' weights recorded; a dataset "
                        "starts them only once every such arm has its seeds there (the issue's plan: the other "
                        "budgets with scratch and the two best arms)")
    p.add_argument("--best-arms-without", nargs="+", default=[], metavar="ARM",
                   help="with --best-arms: leave these headline arms out of the ranking and do not wait for their "
                        "seeds (an arm that cannot run where the campaign runs, e.g. ideal-semi on ACDC on 2 CPU "
                        "cores: about 5 hours a run)")
    p.add_argument("--budgets", nargs="+", type=int, default=None,
                   help="labeled cases (hippocampus) or patients (ACDC); default: every budget of the dataset "
                        "(smoke: the smallest)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="label subsets, run in this order (default 0 1 2; smoke: 0)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fixed test/validation split")
    p.add_argument("--work-dir", default=None,
                   help="working folder (resumable; default ./low_label_work/stock, smoke: ./low_label_work/smoke)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="report folder (default: %(default)s); files low_label_<profile>*")
    p.add_argument("--record-dir", default=None,
                   help="where finished runs are recorded for git (run.json, summary.json, training logs; default: "
                        "OUT/low_label_<profile>_runs); runs recorded there are not run again")
    p.add_argument("--record-weights", nargs="*", default=[], choices=list(PRETRAIN_TRAINERS), metavar="METHOD",
                   help="also record these methods' pre-trained weights (half precision, tens of MB each on default "
                        "plans), so later machines fine-tune from them instead of pre-training again; choices: "
                        + ", ".join(PRETRAIN_TRAINERS))
    p.add_argument("--commit-record", action="store_true",
                   help="git-commit the record folder (alone) after every run and pre-training it records, so a "
                        "session or machine that stops loses at most the run in progress")
    p.add_argument("--max-groups", type=int, default=None,
                   help="use only this many cases/patients of each dataset (seeded by --split-seed; default: all, "
                        "smoke: the fewest its split needs)")
    p.add_argument("--stage", choices=["setup", "runs", "report", "all"], default="all",
                   help="report: only rebuild the report from whatever has finished in the work dir (no setup)")
    p.add_argument("--order", choices=["budget", "arm"], default="budget",
                   help="budget: smallest budget of every dataset first; arm: per dataset one arm after the other "
                        "(every budget and seed of an arm together: its pre-training serves them in one go)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the profile's)")
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="show nnU-Net's output instead of log files")
    p.add_argument("--deadline", default=None, metavar="HH:MM|+MIN",
                   help="start only runs whose estimated remaining time (nnU-Net's epoch times on this machine, else "
                        "in the record) ends before this local time (or this many minutes from now); the others are "
                        "listed as not started. For sessions or cluster jobs with a time limit")
    p.add_argument("--after", nargs="+", default=[], metavar="RUN",
                   help="start nothing until these runs (dataset/arm/b<budget>_s<seed>, e.g. acdc/mae-lpft/b1_s0) "
                        "are evaluated, in the work dir or the record: for a queue line that a result decides "
                        "(a route check), so that no time limit starts it first")
    p.add_argument("--dry-run", action="store_true", help="print the plan (with estimated times), run nothing")
    args = p.parse_args(argv)
    try:
        args.deadline = parse_deadline(args.deadline) if args.deadline else None
    except ValueError:
        p.error(f"--deadline {args.deadline!r}: expected HH:MM (local time), +MIN (minutes from now) or a Unix time")
    try:
        args.after = [run_of_name(n) for n in args.after]
    except UserInputError as e:
        p.error(f"--after: {e}")
    if args.arms is None:
        args.arms = [] if args.best_arms else list(DEFAULT_ARMS)
    if args.best_arms < 0:
        p.error("--best-arms: expected a count >= 0")
    unknown = [a for a in args.best_arms_without if a not in headline_pretrained_arms()]
    if unknown:
        p.error(f"--best-arms-without {' '.join(unknown)}: not a headline pre-trained arm (those ranked: "
                f"{', '.join(headline_pretrained_arms())})")
    if args.best_arms_without and not args.best_arms:
        p.error("--best-arms-without needs --best-arms")
    args.work_dir = args.work_dir or WORK_DIRS.get(args.profile, "./low_label_work/stock")
    args.record_dir = Path(args.record_dir or default_record_dir(args.out, args.profile)).expanduser().resolve()
    if args.seeds is None:
        args.seeds = list(PROFILES[args.profile].get("seeds", (0, 1, 2)))
    args.command = command_line(sys.argv[1:] if argv is None else list(argv))
    return args


def command_line(argv: List[str]) -> str:
    """The invocation without ``--stage``/``--dry-run``, the command the report names for running the rest."""
    kept, skip = [], False
    for a in map(str, argv):
        if skip or a == "--dry-run":
            skip = False
            continue
        if a == "--stage":
            skip = True
        elif not a.startswith("--stage="):
            kept.append(shlex.quote(a))
    return " ".join(["python scripts/benchmark_low_label.py"] + kept)


def dataset_specs(args) -> Dict[str, BenchDataset]:
    """The datasets as the profile runs them (smoke: fewer test / validation groups; others: as defined)."""
    overrides = PROFILES[args.profile].get("split", {})
    return {k: dataclasses.replace(ds, **overrides.get(k, {})) for k, ds in DATASETS.items()}


def max_groups_of(args, ds: BenchDataset):
    if args.max_groups is not None:
        return args.max_groups
    if PROFILES[args.profile].get("max_groups") == "fewest":
        return ds.num_test_groups + ds.num_val_groups + max(ds.budgets)
    return None


def dataset_options(args, specs: Dict[str, BenchDataset], key: str, arms) -> dict:
    """What :func:`prepare_dataset` needs besides the folders: the pools the arms read, the groups of the dataset
    and of its reference dataset (each by its own split), tiny plans."""
    ds = specs[key]
    return dict(need_unlabeled=any(a.pretrain or a.uses_unlabeled for a in arms),
                need_reference=any(a.pretrain and needs_reference(a.pretrain) for a in arms),
                max_groups=max_groups_of(args, ds), tiny=PROFILES[args.profile].get("tiny"),
                reference_spec=specs[ds.reference], reference_max_groups=max_groups_of(args, specs[ds.reference]))


def schedule_values(args, ds) -> Dict[str, int]:
    """The fine-tuning schedule's numbers (``num_epochs``, ``save_every``, ...; the full profile: nnU-Net's own)."""
    prof = PROFILES[args.profile]
    return dict(prof["finetune"]) if "finetune" in prof else ({} if args.profile == "full" else dict(ds.cpu_schedule))


def pretrain_values(args, arm) -> Dict[str, int]:
    """The schedule of ``arm``'s pre-training (the profile's, longer for a length check; {}: none, or nnU-Net's)."""
    return pretrain_schedule(arm.pretrain, PROFILES[args.profile]["pretrain"]) if arm.pretrain else {}


def estimate_of(pace: Pace, args, specs: Dict[str, BenchDataset], r: Run) -> Estimate:
    pretrain = pretrain_values(args, r.arm)
    return pace.estimate_run(r.dataset, r.arm.name, r.budget, r.seed,
                             arm_schedule(r.arm, schedule_values(args, specs[r.dataset])),
                             r.arm.pretrain, settings_text(pretrain), pretrain)


def deadline_decision(pace: Pace, args, specs: Dict[str, BenchDataset], r: Run) -> str:
    """What of run ``r`` to start before ``--deadline``: ``run`` (all of it: it can finish before the deadline, or
    it is a stopped run of this work directory that continues from its checkpoint), ``pretrain`` (only the
    pre-training it needs first, whose checkpoint, and recorded weights, outlive the session), or ``""`` (nothing).

    A stopped run continues even when it cannot finish: its checkpoints stay on this machine, and where the next
    session gets the machine back a run longer than any session (IDEAL semi-supervised on ACDC) finishes over
    several; starting other runs first would only leave it waiting. (Not guaranteed: three sessions in a row got a
    new machine, and such a run was lost with the old one.) The same holds for a stopped pre-training (``pretrain``:
    it continues, the fine-tuning waits for a later pass)."""
    est, left = estimate_of(pace, args, specs, r), args.deadline - time.time()
    if est.fits(left):
        return "run"
    if est.resumes_at > 0:
        bc.log(f"{r.name}: continues from epoch {est.resumes_at} although it needs about "
               f"{bc.fmt_duration(est.seconds)} ({est.detail}), {bc.fmt_duration(max(0.0, left))} left before "
               f"--deadline: its checkpoints stay on this machine for the next session")
        return "run"
    pre = est.pretrain_seconds
    if pre is not None and pre > left and est.pretrain_resumes_at > 0:
        bc.log(f"{r.name}: its pre-training continues from epoch {est.pretrain_resumes_at} although it needs about "
               f"{bc.fmt_duration(pre)}, {bc.fmt_duration(max(0.0, left))} left before --deadline: its checkpoints "
               f"stay on this machine for the next session")
        return "pretrain"
    bc.log(f"{r.name}: not started: needs about {bc.fmt_duration(est.seconds)} ({est.detail}), "
           f"{bc.fmt_duration(max(0.0, left))} left before --deadline"
           + (f"; its pre-training alone (about {bc.fmt_duration(pre)}) fits" if pre is not None and pre <= left
              else ""))
    return "pretrain" if pre is not None and pre <= left else ""


def schedule_of(args, ds) -> str:
    return settings_text(schedule_values(args, ds))


def check_profile(work: Path, profile: str) -> None:
    """A work directory belongs to one profile (``profile.json``): its report files are named after it."""
    marker = work / "profile.json"
    if marker.is_file() and bc.load_json(marker).get("profile") != profile:
        raise UserInputError(f"{work} holds the {bc.load_json(marker).get('profile')} profile's runs, not "
                             f"{profile}'s. Fix: --profile {bc.load_json(marker).get('profile')}, or another "
                             f"--work-dir.")
    if work.is_dir():
        bc.write_json({"profile": profile}, marker)


def arms_per_dataset(args, roots: List[Path], work: Path) -> Tuple[Dict[str, List[str]], List[str]]:
    """``--arms`` on every dataset, plus each dataset's ``--best-arms`` best once its ranking is settled (their
    methods join ``--record-weights``); and the datasets whose best arms wait for that."""
    arms, waiting = {k: list(args.arms) for k in args.datasets}, []
    for k in args.datasets if args.best_arms else []:
        best = best_arms(roots, work, k, args.best_arms, without=args.best_arms_without)
        if best.short:
            bc.log(f"{k}: the {args.best_arms} best arms wait for every headline arm's seeds at the smallest "
                   f"budget: " + ", ".join(f"{a} ({n} of {st.MIN_SEEDS})" for a, n in best.short))
            waiting.append(k)
            continue
        bc.log(f"{k}: the {args.best_arms} best arms at budget {min(DATASETS[k].budgets)}: {', '.join(best.arms)}"
               + (f" (ranked without {', '.join(args.best_arms_without)}: --best-arms-without)"
                  if args.best_arms_without else ""))
        arms[k] += [a for a in best.arms if a not in arms[k]]
        args.record_weights += [ARMS[a].pretrain for a in best.arms
                                if ARMS[a].pretrain not in args.record_weights]
    return arms, waiting


def make_runs(args, arms: Optional[Dict[str, List[str]]] = None) -> List[Run]:
    """Every (dataset, budget, seed, arm) of the invocation (``arms``: per dataset, default ``--arms`` on each),
    in ``--order``."""
    arms = arms or {k: list(args.arms) for k in args.datasets}
    runs = []
    for key in args.datasets:
        ds = DATASETS[key]
        for budget in (args.budgets or ds.budgets[:PROFILES[args.profile].get("num_budgets")]):
            if budget not in ds.budgets:
                raise UserInputError(f"{key}: budget {budget} is not one of {list(ds.budgets)}")
            for seed in args.seeds:
                for arm in arms[key]:
                    runs.append(Run(key, ARMS[arm], budget, seed))
    if args.order == "budget":
        runs.sort(key=lambda r: (DATASETS[r.dataset].budgets.index(r.budget), args.seeds.index(r.seed),
                                 args.datasets.index(r.dataset), arms[r.dataset].index(r.arm.name)))
    else:
        runs.sort(key=lambda r: (args.datasets.index(r.dataset), arms[r.dataset].index(r.arm.name),
                                 DATASETS[r.dataset].budgets.index(r.budget), args.seeds.index(r.seed)))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    prof = PROFILES[args.profile]
    device = args.device or ("cuda" if prof["gpu"] else "cpu")
    work = Path(args.work_dir).expanduser().resolve()
    record = args.record_dir
    arms_of, best_waiting = arms_per_dataset(args, [work, record], work) if args.stage != "report" else ({}, [])
    runs = make_runs(args, arms_of)
    specs = dataset_specs(args)
    stale = stale_runs(work, runs, {k: schedule_of(args, specs[k]) for k in args.datasets}, record)
    if stale and args.stage != "report":
        raise UserInputError("these runs were started with another schedule than the profile's current one, so their "
                             "results cannot be compared with new runs:\n  " + "\n  ".join(stale) + "\nFix: move "
                             "the old runs' folders (the b<budget>_s<seed> folders named above) out of the work "
                             "directory and the record (pre-trainings stay valid), or use another --work-dir and "
                             "--record-dir.")
    configurations = {k: specs[k].configuration for k in args.datasets}
    if work.is_dir() and not args.dry_run:
        sync_record(work, record, args.datasets, configurations, PRETRAIN_TRAINERS, args.record_weights)
    todo = [r for r in runs if not run_is_done(work, r, record)]
    bc.log(f"low-label benchmark, profile {args.profile}: {len(runs)} runs, {len(todo)} to do, work dir {work}")
    pace = Pace(work, record)
    for r in todo if args.stage != "report" else []:
        est = estimate_of(pace, args, specs, r) if args.dry_run or args.deadline else None
        print(f"  {r.name}: {r.arm.trainer}" + (f" from {r.arm.pretrain}" if r.arm.pretrain else "")
              + (f"; about {bc.fmt_duration(est.seconds)} still to do ({est.detail})"
                 if est is not None and est.seconds is not None else ""))
    waiting = [r.name for r in args.after if not run_is_done(work, r, record)]
    if waiting and args.stage != "report" and todo:
        bc.log(f"nothing started: waits for {', '.join(waiting)} (--after: not evaluated yet)")
        return 0
    if args.stage != "report" and todo:
        held = held_runs([work] + ([record] if record else []), todo)
        for name, why in held.items():
            bc.log(f"{name}: held, {why}")
        todo = [r for r in todo if r.name not in held]
        if not todo:
            bc.log("nothing started: every run of this line is held by a decided check (above)")
            return 0
    if args.dry_run:
        return 0
    if args.deadline is not None and args.stage != "report" and todo:  # checked again before each run starts
        todo = [r for r in todo if deadline_decision(pace, args, specs, r)]
        if not todo:
            bc.log("nothing started: no run can finish before --deadline")
            return 0
    if args.stage == "report":
        if not work.is_dir() and not record.is_dir():
            raise UserInputError(f"--stage report: neither {work} nor the record {record} exists. Fix: the "
                                 f"--work-dir (or --record-dir) of the runs.")
        if work.is_dir():
            check_profile(work, args.profile)
        write_report(work, args, {})
        return 0
    if args.stage == "runs" and not todo:
        bc.log("nothing started: the best arms wait (above)" if best_waiting else
               "nothing to do: every run is evaluated (work dir or record)")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    check_profile(work, args.profile)
    folders = bc.setup_nnunet_folders(str(work), results_name="nnUNet_results_unused")
    if not prof["gpu"]:
        os.environ.setdefault("nnUNet_n_proc_DA", prof.get("n_proc_da", "2"))
        os.environ.setdefault("nnUNet_def_n_proc", "1")
    runner = Runner(work, {k: folders[k] for k in ("nnUNet_raw", "nnUNet_preprocessed")}, args.verbose)
    setups = {}
    arms = [ARMS[a] for a in dict.fromkeys(r.arm.name for r in runs)]
    # --stage runs sets up only the datasets it trains on (a queue line whose runs are recorded costs nothing)
    for key in [k for k in args.datasets if args.stage != "runs" or any(r.dataset == k for r in todo)]:
        setups[key] = prepare_dataset(work, specs[key], args.split_seed, args.num_processes,
                                      **dataset_options(args, specs, key, arms))
    if args.stage in ("runs", "all"):
        for r in todo:
            s = setups[r.dataset]
            pre_schedule = settings_text(pretrain_values(args, r.arm))
            decision = deadline_decision(pace, args, specs, r) if args.deadline is not None else "run"
            if not decision:
                continue
            if r.arm.pretrain:
                run_pretraining(work, s, r.arm.pretrain, pre_schedule, runner, device, record)
                if sync_record(work, record, [r.dataset], configurations, PRETRAIN_TRAINERS, args.record_weights) \
                        and args.commit_record:
                    commit_record(record, f"Benchmark record: {r.dataset} pre-training {r.arm.pretrain}")
            if decision == "pretrain":
                bc.log(f"{r.name}: only its pre-training ran (the rest does not fit before --deadline)")
                continue
            do_run(work, s, r, schedule_of(args, s.ds), runner, device, prof["tta"], pre_schedule, record)
            if sync_record(work, record, [r.dataset], configurations, PRETRAIN_TRAINERS, args.record_weights) \
                    and args.commit_record:
                commit_record(record, f"Benchmark record: {r.name}")
            bc.log(f"{r.name}: done (recorded in {record})")
    if args.stage == "all":
        write_report(work, args, setups)
    return 0

if __name__ == "__main__":
    bc.run_main(main)
