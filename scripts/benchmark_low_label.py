#!/usr/bin/env python
"""Low-label benchmark: does SSL pre-training help nnU-Net when only a few labeled cases are available?

    python scripts/benchmark_low_label.py --profile smoke            # minutes: checks the pipeline end to end
    python scripts/benchmark_low_label.py --profile quick            # < 3 h on 2 CPU cores (1 budget, 2 seeds)
    python scripts/benchmark_low_label.py --profile cpu-rank         # ranks methods on a CPU (~21 min per run)
    python scripts/benchmark_low_label.py --profile full --device cuda   # the real experiment (GPUs, days)
    python scripts/benchmark_low_label.py --profile quick --dry-run  # the plan, the expected time, no work

Design (printed again at the start of every run)
-------------------------------------------------
* Source: a labeled nnU-Net raw dataset (default ``../shared/data/hippocampus``: 200 MSD hippocampus cases).
  Seeded split (``--split-seed``) into a TEST set (``--num-test``; or an external ``--test-images``/``--test-labels``
  folder), a ReFs REFERENCE set (``--num-reference``, only when no ``--reference-source`` is given) and the
  downstream POOL (the rest). The split does not depend on the selected arms, so separate invocations agree.
* Downstream dataset = the pool (labeled), planned with ``nnUNetv2_plan_and_preprocess``; quick/smoke use derived
  tiny plans (``derive_plans``: features <= 32 (smoke 16), batch 2).
* Pre-training data = every NON-TEST image (pool + reference cases), labels unused, ingested as an unlabeled
  dataset with the downstream plans (``ingest_unlabeled``). Test images are never seen before prediction.
* Pre-training (once per method, fold ``all``): MAE, GMIM, PGL, IDEAL, ReFs (``MAETrainer`` ... ``ReFsTrainer``)
  with the profile's schedule (``NNUNET_SSL_SETTINGS``).
* Fine-tuning: fold 0 of the downstream dataset. quick/smoke write a custom ``splits_final.json`` whose fold 0
  validates on ``--num-val`` pool cases (nnU-Net's final validation is then cheap); full uses nnU-Net's own
  5-fold split. The label budget (``NNUNET_SSL_SETTINGS=label_budget=N,label_seed=S``) picks N of fold 0's
  TRAINING keys (seeded, nested: the 5 cases of seed S are among its 10). Seed S = label_seed S, so every arm
  with seed S gets the same labeled cases. nnU-Net's training itself is not seeded.
* Arms: ``scratch`` (SSLScratchTrainer: the same fine-tuning schedule from random weights), ``mae``, ``gmim``,
  ``pgl``, ``ideal``, ``refs`` (pre-training then SSLFinetuneTrainer with ``NNUNET_SSL_PRETRAINED``), ``ideal-semi``
  (the IDEAL checkpoint + IDEALSemiSupervisedTrainer with ``NNUNET_SSL_UNLABELED_DATASET`` = the ingested pool).
* ReFs reference: by default a disjoint subset of the source (neither test nor pool), preprocessed with the
  unlabeled dataset's plans (``prepare_reference``). No test leakage, but it is the SAME task: ReFs sees
  ``--num-reference`` extra labeled cases of the target task that the other arms never get, so a ReFs gain may
  come from those labels, not from the method. Prefer ``--reference-source`` = another labeled dataset with the
  same channels (e.g. another brain-MRI task) when you have one.
* Every fine-tune/predict run has its own ``nnUNet_results`` (``<work>/runs/<arm>/budget<N>/seed<S>/``): runs of
  the same trainer name would otherwise overwrite each other. Prediction of the test images with
  ``nnUNetv2_predict`` (checkpoint_final), evaluation with ``nnUNetv2_evaluate_simple``.
* Resumable: a run with checkpoint_final.pth + all predictions + summary.json is not redone; an interrupted
  training continues with ``--c``; a finished pre-training is re-used. Run the same command again to continue.
* Report (``--out``, default scripts/results/): ``low_label_<profile>_per_case.csv`` (one row per arm x budget x
  seed x case x class), ``..._aggregated.csv`` (per seed and over seeds), ``..._paired_vs_scratch.csv`` (per case,
  Dice averaged over seeds, arm minus scratch: mean difference and Wilcoxon signed-rank p, scipy), ``.md``
  (tables) and ``.png`` (Dice vs label budget, one line per arm, seeds as points).
* ``--merge-per-case CSV``: add the per-case rows of an earlier report (e.g. the ``_per_case.csv`` in the results
  directory) for selected runs this work dir has not finished, so a report survives a lost work dir. The rows
  must cover exactly this split's test cases; training curves and voxel tables cover only this work dir's runs.

Parallel use (full profile on several GPUs): run ``--stage setup`` once, then e.g. one process per GPU with
``CUDA_VISIBLE_DEVICES=k`` and disjoint ``--arms`` (ideal and ideal-semi share the IDEAL pre-training: keep them
in one process or run ``--stage pretrain`` first), then ``--stage report``.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nnunet_ssl.benchmark import common as bc  # noqa: E402

from nnunet_ssl.errors import UserInputError  # noqa: E402

PRETRAIN_TRAINERS = {"mae": "MAETrainer", "gmim": "GMIMTrainer", "pgl": "PGLTrainer", "ideal": "IDEALTrainer",
                     "refs": "ReFsTrainer", "mae50": "MAETrainer"}
PRETRAIN_SETTINGS = {"mae50": "mask_ratio=0.5"}  # extra pre-training NNUNET_SSL_SETTINGS of a method
ARMS = {  # arm -> (fine-tuning trainer, pre-training method or None, uses the unlabeled pool)
    "scratch": ("SSLScratchTrainer", None, False),
    "mae": ("SSLFinetuneTrainer", "mae", False),
    "gmim": ("SSLFinetuneTrainer", "gmim", False),
    "pgl": ("SSLFinetuneTrainer", "pgl", False),
    "ideal": ("SSLFinetuneTrainer", "ideal", False),
    "ideal-semi": ("IDEALSemiSupervisedTrainer", "ideal", True),
    "refs": ("SSLFinetuneTrainer", "refs", False),
    # opt-in diagnostic arms (not in the default set): the decoder transferred as well, which fine-tuning does not
    # do by default for these reconstruction-trained checkpoints (the behaviour before that default)
    "mae-decoder": ("SSLFinetuneTrainer", "mae", False),
    "gmim-decoder": ("SSLFinetuneTrainer", "gmim", False),
    "refs-decoder": ("SSLFinetuneTrainer", "refs", False),
    # opt-in diagnostic arm: the IDEAL checkpoint without its decoder (which fine-tuning transfers by default)
    "ideal-encoder": ("SSLFinetuneTrainer", "ideal", False),
    # opt-in diagnostic arm: MAE pre-trained with half the input masked instead of 75 %
    "mae50": ("SSLFinetuneTrainer", "mae50", False),
    # opt-in diagnostic arms: the decoder warms up alone (encoder frozen, 10 % of the epochs) before the whole net
    **{f"{m}-decoderwarmup": ("SSLFinetuneTrainer_decoderWarmup", m, False) for m in ("mae", "gmim")},
}
# extra fine-tuning NNUNET_SSL_SETTINGS of an arm
ARM_SETTINGS = {"mae-decoder": "load_decoder=True", "gmim-decoder": "load_decoder=True",
                "refs-decoder": "load_decoder=True", "ideal-encoder": "load_decoder=False"}
DIAGNOSTIC_ARMS = ("mae-decoder", "gmim-decoder", "refs-decoder", "ideal-encoder", "mae50", "mae-decoderwarmup",
                   "gmim-decoderwarmup")
ARM_ORDER = list(ARMS)
DEFAULT_ARMS = [a for a in ARM_ORDER if a not in DIAGNOSTIC_ARMS]
# fine-tuning trainers whose iteration is a stock nnU-Net iteration (cost 1.0 by definition)
STOCK_COST_FINETUNE = ("SSLScratchTrainer", "SSLFinetuneTrainer", "SSLFinetuneTrainer_decoderWarmup")
# time per training iteration relative to a stock fine-tuning iteration (our estimate; --cost-json replaces them
# with measured ratios from scripts/benchmark_cost.py)
# (defaults: the CPU figures of scripts/results/cost_*.md, ReFs after cosine_every=10)
DEFAULT_COST = {**dict.fromkeys(STOCK_COST_FINETUNE, 1.0), "IDEALSemiSupervisedTrainer": 4.0,
                "MAETrainer": 1.1, "GMIMTrainer": 1.1, "PGLTrainer": 0.9, "IDEALTrainer": 0.9, "ReFsTrainer": 2.2}


def _sched(epochs: int, iters: int, val_iters: int) -> str:
    return f"num_epochs={epochs},num_iterations_per_epoch={iters},num_val_iterations_per_epoch={val_iters}"


# the CPU profiles' data split, budget, seeds, plans shape and pre-training schedule
QUICK_SPLIT = dict(tiny=True, batch_size=2, max_cases=None, num_test=30, num_reference=20, num_val=10, budgets=[10],
                   seeds=[0, 1], pretrain=_sched(8, 25, 2), tta=False, n_proc_da="1", def_n_proc="1", gpu=False)
PROFILES = {
    "smoke": dict(
        about="minutes, checks the whole pipeline (numbers meaningless)",
        tiny=True, max_features=16, batch_size=2, max_cases=16, num_test=3, num_reference=3, num_val=2,
        budgets=[3], seeds=[0], pretrain=_sched(1, 2, 1), finetune=_sched(2, 2, 1), tta=False,
        n_proc_da="0", def_n_proc="1", sec_per_iter=1.3, gpu=False),
    "quick": dict(
        QUICK_SPLIT,
        about="at most 3 h on 2 CPU cores for the default 7 arms, the smallest budget (5) and two seeds; cpu-rank's "
              "8-feature network for 800 fine-tuning iterations (cpu-rank: 2000), nnU-Net's validation of the fold "
              "skipped (the test split is the measure). Measured: 14 min setup + pre-training, 7-8.5 min per "
              "fine-tuning run, 27 min for ideal-semi, 2h38m in all. 800 iterations at 5 labels end soon after "
              "nnU-Net from scratch starts to segment at all (with 500, no arm segmented anything): the profile "
              "checks the pipeline and shows how much sooner a pre-trained start gets there; cpu-rank ranks methods",
        budgets=[5], max_features=8, finetune=_sched(16, 50, 4) + ",final_validation=False", sec_per_iter=0.47),
    "quick600it16f": dict(
        QUICK_SPLIT,
        about="the quick profile until 2026-11-29, kept to reproduce scripts/results/low_label_quick600it16f*: "
              "16-feature network, budget 10, 600 fine-tuning iterations; about 4.5 h on 2 CPU cores, and too short "
              "to rank methods (runs of any arm may still segment nothing)",
        max_features=16, finetune=_sched(30, 20, 2) + ",final_validation=False", sec_per_iter=1.1),
    "cpu-rank": dict(
        QUICK_SPLIT,
        about="ranks methods on a CPU: the quick profile's split and 8-feature network (measured 0.37 s per "
              "training step on 2 cores, 2.3x cheaper than 16 features), budget 10, 2000 fine-tuning iterations "
              "(2.5x quick's, well past nnU-Net's all-background phase), 200 pre-training iterations; measured "
              "20.5-23 min per fine-tuning run (27 s per 50-iteration epoch)",
        max_features=8, finetune=_sched(40, 50, 4) + ",final_validation=False", sec_per_iter=0.54),
    "full": dict(
        about="GPUs: nnU-Net default plans, 1000 x 250 iterations of pre-training, nnU-Net's default 1000-epoch "
              "fine-tuning schedule, 3 budgets x 3 seeds, test-time mirroring",
        tiny=False, max_features=None, batch_size=None, max_cases=None, num_test=50, num_reference=20, num_val=0,
        budgets=[5, 10, 20], seeds=[0, 1, 2], pretrain=_sched(1000, 250, 50), finetune="", tta=True,
        n_proc_da=None, def_n_proc=None, sec_per_iter=0.15, gpu=True),
}
DEFAULT_OUT = bc.REPO_ROOT / "scripts" / "results"


def _profile_help(name: str, v: dict) -> str:
    plans = f"tiny (features <= {v['max_features']}, batch {v['batch_size']})" if v["tiny"] else "nnUNetPlans"
    finetune = v["finetune"] or "nnU-Net default (1000 x 250)"
    return (f"  {name:6s} {v['about']}\n         budgets {v['budgets']}, seeds {v['seeds']}, test {v['num_test']} "
            f"cases, plans {plans},\n         pre-training '{v['pretrain']}', fine-tuning '{finetune}'")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Low-label benchmark: SSL pre-training + fine-tuning with label budgets vs from scratch, "
                    "evaluated on a fixed test split with nnU-Net's own commands. Resumable.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Profiles:\n" + "\n".join(_profile_help(k, v) for k, v in PROFILES.items())
        + "\n\nEvery option left unset takes the profile's value.")
    p.add_argument("--profile", choices=list(PROFILES), default="quick")
    p.add_argument("--stage", choices=["all", "setup", "pretrain", "finetune", "report"], default="all",
                   help="all (default); setup = data only; pretrain = setup + pre-training; finetune = everything "
                        "but the report; report = only aggregate finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the expected time, run nothing")
    g = p.add_argument_group("data")
    g.add_argument("--source", default=str(bc.DEFAULT_SOURCE),
                   help="labeled nnU-Net raw dataset (default: %(default)s)")
    g.add_argument("--work-dir", default=None, help="working folder (default ./low_label_work/<profile>)")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--max-cases", type=int, default=None, help="use only this many source cases (seeded subset)")
    g.add_argument("--num-test", type=int, default=None)
    g.add_argument("--test-images", default=None, help="external test images (CASE_0000.nii.gz ...) instead of a split")
    g.add_argument("--test-labels", default=None, help="labels of --test-images (CASE.nii.gz)")
    g.add_argument("--num-reference", type=int, default=None, help="ReFs reference cases taken from the source")
    g.add_argument("--reference-source", default=None,
                   help="another labeled nnU-Net raw dataset as ReFs reference (same channels); recommended")
    g.add_argument("--num-val", type=int, default=None,
                   help="validation cases of fold 0 (custom splits_final.json); 0 = nnU-Net's own 5-fold split")
    g.add_argument("--dataset-id", type=int, default=960,
                   help="downstream id; the unlabeled and reference datasets get the next two ids")
    g.add_argument("-c", "--configuration", default="3d_fullres")
    g.add_argument("-np", "--num-processes", type=int, default=2, help="processes for planning/ingestion")
    g = p.add_argument_group("experiment")
    g.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=ARM_ORDER,
                   help="default: every arm but the diagnostics mae-decoder, gmim-decoder, refs-decoder (decoder "
                        "transferred too), ideal-encoder (IDEAL's decoder not transferred) and mae50 (MAE pre-trained "
                        "with mask_ratio=0.5)")
    g.add_argument("--budgets", nargs="+", type=int, default=None)
    g.add_argument("--seeds", nargs="+", type=int, default=None)
    g.add_argument("--fold", default="0", type=bc.fold_arg,
                   help="fine-tuning fold (0; 'all' also works: then the budget picks from every pool case and "
                        "nnU-Net validates on the training cases)")
    g.add_argument("--pretrain-settings", default=None, help="NNUNET_SSL_SETTINGS of every pre-training")
    g.add_argument("--finetune-settings", default=None,
                   help="NNUNET_SSL_SETTINGS of every fine-tuning (label_budget/label_seed are added)")
    g.add_argument("--device", default="auto", help="auto, cuda or cpu")
    g.add_argument("--tta", dest="tta", action="store_true", default=None, help="test-time mirroring on")
    g.add_argument("--no-tta", dest="tta", action="store_false", help="test-time mirroring off")
    g = p.add_argument_group("time estimate")
    g.add_argument("--sec-per-iter", type=float, default=None,
                   help="seconds per stock fine-tuning iteration (profile default; or from --cost-json)")
    g.add_argument("--cost-json", default=None, help="a cost_*.json of scripts/benchmark_cost.py: use its measured "
                                                     "s/iter and ratios for the estimate")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the report files (default: %(default)s)")
    g.add_argument("--merge-per-case", nargs="+", default=[], metavar="CSV",
                   help="per-case CSVs of earlier reports of the same split: their rows of selected runs that this "
                        "work dir has not finished are added to the report (Dice tables and paired statistics)")
    g.add_argument("--verbose", action="store_true", help="stream nnU-Net's output instead of per-run log files")
    g.add_argument("--stop-on-error", action="store_true", help="stop at the first failed run (default: go on)")
    args = p.parse_args(argv)
    prof = PROFILES[args.profile]
    for key in ("max_cases", "num_test", "num_reference", "num_val", "budgets", "seeds", "sec_per_iter", "tta"):
        if getattr(args, key) is None:
            setattr(args, key, prof[key])
    args.pretrain_settings = prof["pretrain"] if args.pretrain_settings is None else args.pretrain_settings
    args.finetune_settings = prof["finetune"] if args.finetune_settings is None else args.finetune_settings
    args.work_dir = str(Path(args.work_dir or f"./low_label_work/{args.profile}").expanduser().resolve())
    args.arms = [a for a in ARM_ORDER if a in args.arms]
    args.budgets = sorted(set(args.budgets))
    args.seeds = sorted(set(args.seeds))
    for f in args.merge_per_case:
        if not Path(f).is_file():
            p.error(f"--merge-per-case: {f} is not a file")
    if (args.test_images is None) != (args.test_labels is None):
        p.error("--test-images and --test-labels go together")
    if any(b < 1 for b in args.budgets):
        p.error("label budgets must be >= 1")
    for key in ("label_budget", "label_seed"):
        if key in (args.finetune_settings or ""):
            p.error(f"--finetune-settings must not set {key}: the script sets it per run")
    bc.check_dataset_id(args.dataset_id, "--dataset-id")
    bc.check_dataset_id(args.dataset_id + 2, "--dataset-id + 2")
    return args


# ----------------------------------------------------------------------------------------------------------------
# plan of the experiment
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Split:
    test: List[str]
    reference: List[str]
    pool: List[str]
    val: List[str]
    external_test: bool = False

    def to_dict(self):
        return {"test": self.test, "reference": self.reference, "pool": self.pool, "val": self.val,
                "external_test": self.external_test}


def make_split(args, source: bc.SourceDataset) -> Split:
    cases = bc.seeded_shuffle(source.cases, args.split_seed)
    if args.max_cases:
        cases = cases[:args.max_cases]
    external = args.test_images is not None
    if external:
        test = sorted(p.name[: -len(source.file_ending)] for p in Path(args.test_labels).iterdir()
                      if p.name.endswith(source.file_ending))
        if not test:
            raise UserInputError(f"--test-labels {args.test_labels} holds no *{source.file_ending} label files.")
        missing = [c for c in test if not (Path(args.test_images) / f"{c}_0000{source.file_ending}").is_file()]
        if missing:
            raise UserInputError(f"--test-images lacks {missing[0]}_0000{source.file_ending} (and "
                                 f"{len(missing) - 1} more): images must be named CASE_XXXX{source.file_ending}.")
        clash = sorted(set(test) & set(cases))
        if clash:
            raise UserInputError(f"{len(clash)} external test case id(s) also exist in --source (e.g. {clash[0]}): "
                                 f"the test set must be disjoint from the training data.")
        rest = cases
    else:
        test, rest = sorted(cases[:args.num_test]), cases[args.num_test:]
    n_ref = 0 if args.reference_source else args.num_reference
    reference, pool = sorted(rest[:n_ref]), sorted(rest[n_ref:])
    val = []
    if args.num_val > 0 and args.fold != "all":
        val = sorted(bc.seeded_shuffle(pool, args.split_seed + 1)[:args.num_val])
    n_train = len(pool) - (len(val) if val else int(math.ceil(len(pool) / 5)))
    if args.fold == "all":
        n_train = len(pool)
    if max(args.budgets) > n_train:
        raise UserInputError(f"label budget {max(args.budgets)} > {n_train} training cases of fold {args.fold} "
                             f"(pool {len(pool)} cases). Fix: smaller --budgets, fewer --num-test/--num-reference/"
                             f"--num-val, or more --max-cases.")
    if not test:
        raise UserInputError("the test set is empty: --num-test must be >= 1 (or give --test-images/--test-labels)")
    return Split(test, reference, pool, val, external)


@dataclass
class Run:
    arm: str
    budget: int
    seed: int
    trainer: str
    pretrain: Optional[str]
    folder: Path
    status: str = "todo"
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def name(self):
        return f"{self.arm}/budget{self.budget}/seed{self.seed}"


def estimate(args, n_test: int, n_val_cases: int, pretrain_methods: List[str], runs: List["Run"],
             cost: Dict[str, float]) -> dict:
    """Seconds, from a simple model: iterations x s/iter x cost ratio + fixed overheads per run."""
    from nnunet_ssl.settings import parse_settings

    def schedule(text, default):
        allowed = {"num_epochs": int, "num_iterations_per_epoch": int, "num_val_iterations_per_epoch": int}
        allowed.update({k: str for k in _other_keys(text)})
        values = parse_settings(text or "", allowed)
        return (values.get("num_epochs", default[0]), values.get("num_iterations_per_epoch", default[1]),
                values.get("num_val_iterations_per_epoch", default[2]))

    gpu = PROFILES[args.profile]["gpu"]
    spi = args.sec_per_iter
    startup, per_epoch = (60.0, 3.0) if gpu else (30.0, 2.0)
    pe, pi, pv = schedule(args.pretrain_settings, (100, 250, 50))
    fe, fi, fv = schedule(args.finetune_settings, (1000, 250, 50))
    pre = sum(startup + pe * (pi * spi * cost[PRETRAIN_TRAINERS[m]] + pv * 0.3 * spi + per_epoch)
              for m in pretrain_methods)
    per_case_pred = (1.0 if gpu else 0.6) * (4 if args.tta else 1)
    val_cases = n_val_cases
    fin = 0.0
    for r in runs:
        c = cost[r.trainer]
        fin += startup + fe * (fi * spi * c + fv * 0.3 * spi * c + per_epoch)
        if "final_validation=false" not in (args.finetune_settings or "").replace(" ", "").lower():
            fin += 15 + val_cases * (2.0 if not gpu else 0.5)  # nnU-Net's final validation (8x mirroring)
        fin += 25 + n_test * per_case_pred + 10  # nnUNetv2_predict + evaluation
    return {"pretraining_s": pre, "finetuning_s": fin, "total_s": pre + fin + 300, "sec_per_iter": spi,
            "cost": cost, "pretrain_schedule": (pe, pi, pv), "finetune_schedule": (fe, fi, fv)}


def _other_keys(text) -> List[str]:
    return [i.split("=", 1)[0].strip() for i in (text or "").split(",") if "=" in i and i.split("=", 1)[0].strip()
            not in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")]


def cost_table(args) -> Dict[str, float]:
    cost = dict(DEFAULT_COST)
    if args.cost_json:
        data = bc.load_json(args.cost_json)
        for name, s in data.get("trainers", {}).items():
            if isinstance(s, dict) and s.get("ratio") == s.get("ratio") and s.get("ratio"):
                cost[name] = float(s["ratio"])
                if name == "nnUNetTrainer" and args.sec_per_iter == PROFILES[args.profile]["sec_per_iter"]:
                    args.sec_per_iter = float(s["median_s"])
        cost.update(dict.fromkeys(STOCK_COST_FINETUNE, 1.0))
    return cost


# ----------------------------------------------------------------------------------------------------------------
# running commands
# ----------------------------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args, base_env: Dict[str, str]):
        self.args = args
        self.base_env = base_env
        self.commands_file = Path(args.work_dir) / "commands.sh"

    def __call__(self, name: str, cmd_args: List, env: Dict[str, str], log_file: Optional[Path]) -> float:
        from nnunet_ssl.cli.commands import run_nnunet
        full = dict(self.base_env, **env)
        shown = {k: v for k, v in full.items() if v is not None}
        prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in shown.items())
        line = f"{prefix} {name} {' '.join(shlex.quote(str(a)) for a in cmd_args)}"
        print(f"  env: {prefix}", flush=True)
        with open(self.commands_file, "a") as f:
            f.write(line + "\n")
        t0 = time.time()
        if log_file is not None and not self.args.verbose:
            print(f"  log: {log_file}", flush=True)
            run_nnunet(name, cmd_args, env={k: str(v) for k, v in shown.items()}, log_file=str(log_file))
        else:
            run_nnunet(name, cmd_args, env={k: str(v) for k, v in shown.items()})
        return time.time() - t0


def _settings(*parts: str) -> str:
    return ",".join(p.strip(",") for p in parts if p and p.strip(","))


def device_of(args) -> str:
    if args.device != "auto":
        return args.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------------------------

def setup_data(args, source: bc.SourceDataset, split: Split) -> dict:
    work = Path(args.work_dir)
    folders = bc.setup_nnunet_folders(str(work), results_name="nnUNet_results_unused")
    split_file = work / "split.json"
    if split_file.is_file():
        old = bc.load_json(split_file)
        if old != split.to_dict():
            raise UserInputError(f"{split_file} holds another split than these settings give (other --split-seed, "
                                 f"--num-test, --num-reference, --num-val, --max-cases or source?). Fix: use another "
                                 f"--work-dir, or the settings of the earlier run.")
    else:
        bc.write_json(split.to_dict(), split_file)
    did, sid, rid = args.dataset_id, args.dataset_id + 1, args.dataset_id + 2
    down = bc.ensure_labeled_raw_dataset(source, folders["nnUNet_raw"], did, "LowLabelDownstream", split.pool)
    bc.ensure_planned(did, down, args.configuration, len(split.pool), args.num_processes,
                      log_file=str(work / "planning.log"))
    pre_down = Path(folders["nnUNet_preprocessed"]) / down
    prof = PROFILES[args.profile]
    plans = "nnUNetPlans"
    if prof["tiny"]:
        plans = f"nnUNetPlansTiny{prof['max_features']}"
        bc.ensure_derived_plans([down], "nnUNetPlans", plans, max_features=prof["max_features"],
                                batch_size=prof["batch_size"], configuration=args.configuration)
    if split.val:
        splits = [{"train": sorted(set(split.pool) - set(split.val)), "val": split.val}]
        target = pre_down / "splits_final.json"
        if not target.is_file() or bc.load_json(target) != splits:
            bc.write_json(splits, target)
            bc.log(f"{down}: custom splits_final.json: fold 0 = {len(splits[0]['train'])} training / "
                   f"{len(split.val)} validation cases")
    # test images
    if split.external_test:
        test_images, test_labels = str(Path(args.test_images).resolve()), str(Path(args.test_labels).resolve())
    else:
        test_images, test_labels = str(work / "test" / "imagesTs"), str(work / "test" / "labelsTs")
        bc.ensure_image_folder(source, test_images, split.test, with_labels_to=test_labels)
    # unlabeled = every non-test image of the source
    non_test = sorted(split.pool + split.reference)
    images = str(work / "inputs" / "unlabeled_images")
    bc.ensure_image_folder(source, images, non_test)
    ssl = bc.ensure_ingested(images, sid, "LowLabelUnlabeled", down, plans, args.configuration, len(non_test),
                             args.num_processes)
    ref = None
    if "refs" in args.arms or args.stage == "setup":
        if args.reference_source:
            rsrc = bc.SourceDataset(args.reference_source)
            if rsrc.channels != source.channels:
                raise UserInputError(f"--reference-source has channels {rsrc.channels}, the source {source.channels}: "
                                     f"ReFs needs the same input channels.")
            rcases = bc.seeded_shuffle(rsrc.cases, args.split_seed)[:args.num_reference]
            ref_src = rsrc
        else:
            rcases, ref_src = split.reference, source
        if rcases:
            ref = bc.ensure_labeled_raw_dataset(ref_src, folders["nnUNet_raw"], rid, "LowLabelReference", rcases)
            bc.ensure_reference(ref, ssl, plans, args.configuration, len(rcases), args.num_processes)
        elif "refs" in args.arms:
            raise UserInputError("the refs arm needs reference cases: --num-reference >= 1 or --reference-source")
    return {"downstream": down, "unlabeled": ssl, "reference": ref, "plans": plans, "test_images": test_images,
            "test_labels": test_labels, "labels": source.foreground_labels, "label_names": source.label_names}


# ----------------------------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------------------------

def pretrain_dir(args, method: str) -> Path:
    return Path(args.work_dir) / "runs" / "pretrain" / method


def pretrain_checkpoint(args, data: dict, method: str) -> Path:
    trainer = PRETRAIN_TRAINERS[method]
    return (pretrain_dir(args, method) / "nnUNet_results" / data["unlabeled"] /
            f"{trainer}__{data['plans']}__{args.configuration}" / "fold_all" / "checkpoint_final.pth")


def run_pretraining(args, data: dict, method: str, runner: Runner, device: str) -> float:
    ckpt = pretrain_checkpoint(args, data, method)
    if ckpt.is_file():
        bc.log(f"pre-training {method}: done ({ckpt}), re-used")
        return 0.0
    folder = pretrain_dir(args, method)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = PRETRAIN_TRAINERS[method]
    cont = ["--c"] if (ckpt.parent / "checkpoint_latest.pth").is_file() else []
    settings = _settings(args.pretrain_settings, PRETRAIN_SETTINGS.get(method, ""))
    env = {"nnUNet_results": str(folder / "nnUNet_results"), "NNUNET_SSL_SETTINGS": settings}
    if method == "refs":
        if data["reference"] is None:
            raise UserInputError("refs: no reference dataset was prepared")
        env["NNUNET_SSL_REFERENCE_DATASET"] = data["reference"]
    bc.log(f"pre-training {method} ({trainer}) on {data['unlabeled']}" + (" (continuing)" if cont else ""))
    secs = runner("nnUNetv2_train", [data["unlabeled"], args.configuration, "all", "-tr", trainer, "-p",
                                     data["plans"], "-device", device] + cont, env, folder / "train.log")
    if not ckpt.is_file():
        raise UserInputError(f"pre-training {method} ended without {ckpt}; see {folder / 'train.log'}")
    bc.write_json({"method": method, "trainer": trainer, "seconds": secs, "settings": settings},
                  folder / "run.json")
    bc.log(f"pre-training {method}: finished in {bc.fmt_duration(secs)}")
    return secs


def pretrain_methods(arms: List[str]) -> List[str]:
    """The pre-trainings the selected arms need, each once, in PRETRAIN_TRAINERS order."""
    return sorted({ARMS[a][1] for a in arms if ARMS[a][1]}, key=list(PRETRAIN_TRAINERS).index)


def make_runs(args) -> List[Run]:
    runs = []
    for seed in args.seeds:
        for budget in args.budgets:
            for arm in args.arms:
                trainer, pre, _ = ARMS[arm]
                runs.append(Run(arm, budget, seed, trainer, pre,
                                Path(args.work_dir) / "runs" / arm / f"budget{budget}" / f"seed{seed}"))
    return runs


def run_paths(args, data: dict, run: Run):
    out = (run.folder / "nnUNet_results" / data["downstream"] /
           f"{run.trainer}__{data['plans']}__{args.configuration}" / f"fold_{args.fold}")
    return out, run.folder / "predictions", run.folder / "summary.json"


def predictions_complete(pred: Path, n_test: int) -> bool:
    return pred.is_dir() and len(bc.nifti_files(pred)) >= n_test


def run_is_done(args, data: dict, run: Run, n_test: int) -> bool:
    out, pred, summary = run_paths(args, data, run)
    return (out / "checkpoint_final.pth").is_file() and predictions_complete(pred, n_test) and summary.is_file()


def do_run(args, data: dict, run: Run, runner: Runner, device: str, n_test: int) -> None:
    out, pred, summary = run_paths(args, data, run)
    run.folder.mkdir(parents=True, exist_ok=True)
    results = str(run.folder / "nnUNet_results")
    settings = _settings(args.finetune_settings, ARM_SETTINGS.get(run.arm, ""),
                         f"label_budget={run.budget},label_seed={run.seed}")
    info_file = run.folder / "run.json"
    info = bc.load_json(info_file) if info_file.is_file() else {}
    info.update({"arm": run.arm, "budget": run.budget, "seed": run.seed, "trainer": run.trainer,
                 "pretrain": run.pretrain, "settings": settings, "fold": args.fold, "plans": data["plans"]})
    info.setdefault("seconds", {})
    if not (out / "checkpoint_final.pth").is_file():
        env = {"nnUNet_results": results, "NNUNET_SSL_SETTINGS": settings}
        cont = ["--c"] if (out / "checkpoint_latest.pth").is_file() else []
        if run.pretrain and not cont:  # --c never reloads pre-trained weights
            ckpt = pretrain_checkpoint(args, data, run.pretrain)
            if not ckpt.is_file():
                raise UserInputError(f"{run.name}: pre-training {run.pretrain} has no checkpoint ({ckpt})")
            env["NNUNET_SSL_PRETRAINED"] = str(ckpt)
        if ARMS[run.arm][2]:
            env["NNUNET_SSL_UNLABELED_DATASET"] = data["unlabeled"]
        info["seconds"]["train"] = info["seconds"].get("train", 0.0) + runner(
            "nnUNetv2_train", [data["downstream"], args.configuration, args.fold, "-tr", run.trainer, "-p",
                               data["plans"], "-device", device] + cont, env, run.folder / "train.log")
        bc.write_json(info, info_file)
    if not predictions_complete(pred, n_test):
        cmd = ["-i", data["test_images"], "-o", str(pred), "-d", data["downstream"], "-c", args.configuration,
               "-f", args.fold, "-tr", run.trainer, "-p", data["plans"], "-device", device, "-npp", "1",
               "-nps", "1", "--disable_progress_bar"] + ([] if args.tta else ["--disable_tta"])
        info["seconds"]["predict"] = runner("nnUNetv2_predict", cmd, {"nnUNet_results": results},
                                            run.folder / "predict.log")
        summary.unlink(missing_ok=True)
        bc.write_json(info, info_file)
    if not summary.is_file():
        info["seconds"]["evaluate"] = runner(
            "nnUNetv2_evaluate_simple", [data["test_labels"], str(pred), "-l", *data["labels"], "-o", str(summary),
                                         "-np", 1], {"nnUNet_results": results}, run.folder / "evaluate.log")
        bc.write_json(info, info_file)
    if (run.folder / "FAILED.txt").is_file():
        (run.folder / "FAILED.txt").unlink()


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------

def _case_id(path: str) -> str:
    name = os.path.basename(path)
    for end in (".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".png"):
        if name.endswith(end):
            return name[: -len(end)]
    return os.path.splitext(name)[0]


def _fin(x) -> Optional[float]:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def collect(args, data: dict, runs: List[Run]) -> List[dict]:
    rows = []
    for run in runs:
        _, _, summary = run_paths(args, data, run)
        if not summary.is_file():
            continue
        s = bc.load_json(summary)
        for case in s["metric_per_case"]:
            cid = _case_id(case["reference_file"])
            for label, m in case["metrics"].items():
                lid = int(str(label).strip("()").split(",")[0])
                rows.append({"arm": run.arm, "trainer": run.trainer,
                             "pretrain_trainer": PRETRAIN_TRAINERS.get(run.pretrain, "") if run.pretrain else "",
                             "budget": run.budget, "seed": run.seed, "case": cid, "class_id": lid,
                             "class_name": data["label_names"].get(lid, str(lid)), "dice": _fin(m.get("Dice")),
                             "iou": _fin(m.get("IoU")), "n_ref": m.get("n_ref"), "n_pred": m.get("n_pred"),
                             "tp": m.get("TP"), "fp": m.get("FP"), "fn": m.get("FN")})
    return rows


def merged_rows(paths: List[str], runs: List[Run], own_rows: List[dict], test_cases: List[str]) -> List[dict]:
    """Rows of earlier per-case CSVs for the selected runs that ``own_rows`` lacks (first file wins per run).

    Raises UserInputError when a merged run's cases are not exactly ``test_cases`` (another split)."""
    wanted = {(r.arm, r.budget, r.seed) for r in runs}
    have = {(r["arm"], r["budget"], r["seed"]) for r in own_rows}
    found: Dict[tuple, List[dict]] = {}
    for path in paths:
        per_file: Dict[tuple, List[dict]] = {}
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"arm", "budget", "seed", "case", "class_id", "dice"} - set(reader.fieldnames or [])
            if missing:
                raise UserInputError(f"--merge-per-case {path}: not a per-case CSV of this script (no column(s) "
                                     f"{', '.join(sorted(missing))}).")
            for row in reader:
                key = (row["arm"], int(row["budget"]), int(row["seed"]))
                if key in wanted and key not in have and key not in found:
                    per_file.setdefault(key, []).append(row)
        for key, rows in per_file.items():
            cases = {r["case"] for r in rows}
            if cases != set(test_cases):
                raise UserInputError(
                    f"--merge-per-case {path}: run {key[0]}/budget{key[1]}/seed{key[2]} has {len(cases)} test cases "
                    f"that are not this split's {len(test_cases)} (e.g. {sorted(cases ^ set(test_cases))[:3]}). "
                    f"Fix: merge only reports of the same split (same --split-seed, --num-test, source).")
            for r in rows:
                r.update(budget=int(r["budget"]), seed=int(r["seed"]), class_id=int(r["class_id"]),
                         dice=_fin(r["dice"]), iou=_fin(r.get("iou")))
            found[key] = rows
    if found:
        bc.log("report: merged from earlier per-case CSVs: " + ", ".join(f"{a}/budget{b}/seed{s}"
                                                                        for a, b, s in sorted(found)))
    return [r for key in sorted(found) for r in found[key]]


def _mean(values) -> Optional[float]:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _sd(values) -> Optional[float]:
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def aggregate(rows: List[dict], labels: List[int]):
    """Per (arm, budget, seed, class|'mean') the mean Dice over cases; then over seeds."""
    per_case: Dict[tuple, Dict[str, Optional[float]]] = {}
    for r in rows:
        per_case.setdefault((r["arm"], r["budget"], r["seed"], r["case"]), {})[str(r["class_id"])] = r["dice"]
    for key, d in per_case.items():
        d["mean"] = _mean([d.get(str(lb)) for lb in labels])
    classes = [str(lb) for lb in labels] + ["mean"]
    seed_level = {}
    for (arm, budget, seed, case), d in per_case.items():
        for c in classes:
            seed_level.setdefault((arm, budget, seed, c), []).append(d.get(c))
    seed_means = {k: _mean(v) for k, v in seed_level.items()}
    seed_n = {k: len([x for x in v if x is not None]) for k, v in seed_level.items()}
    over = {}
    for (arm, budget, seed, c), m in seed_means.items():
        over.setdefault((arm, budget, c), []).append((seed, m))
    return per_case, seed_means, seed_n, over


def paired_stats(per_case, labels, arms, budgets, names):
    """Arm vs scratch per test case, Dice averaged over the seeds both have."""
    from scipy.stats import wilcoxon
    out = []
    classes = [str(lb) for lb in labels] + ["mean"]
    for budget in budgets:
        for arm in arms:
            if arm == "scratch":
                continue
            for c in classes:
                diffs = []
                cases = sorted({k[3] for k in per_case if k[0] == arm and k[1] == budget})
                for case in cases:
                    seeds = sorted({k[2] for k in per_case if k[0] == arm and k[1] == budget and k[3] == case} &
                                   {k[2] for k in per_case if k[0] == "scratch" and k[1] == budget and k[3] == case})
                    a = _mean([per_case[(arm, budget, s, case)].get(c) for s in seeds])
                    b = _mean([per_case[("scratch", budget, s, case)].get(c) for s in seeds])
                    if a is not None and b is not None:
                        diffs.append(a - b)
                if not diffs:
                    continue
                p = None
                if any(d != 0 for d in diffs) and len(diffs) >= 2:
                    try:
                        p = float(wilcoxon(diffs).pvalue)
                    except ValueError:
                        p = None
                elif diffs:
                    p = 1.0
                srt = sorted(diffs)
                med = srt[len(srt) // 2] if len(srt) % 2 else 0.5 * (srt[len(srt) // 2 - 1] + srt[len(srt) // 2])
                out.append({"arm": arm, "budget": budget, "class": c, "class_name": names.get(c, c),
                            "n_cases": len(diffs),
                            "mean_diff": sum(diffs) / len(diffs), "median_diff": med,
                            "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
                            "wilcoxon_p": p})
    return out


def per_seed_table(rows: List[dict], seed_means: Dict[tuple, Optional[float]], labels: List[int],
                   names: Dict[str, str]) -> List[str]:
    """Per run (arm x budget x seed): mean Dice per class (``seed_means`` of :func:`aggregate`) and how many test
    cases got ANY foreground predicted.

    A run that predicts nothing on every test case has not left nnU-Net's initial all-background phase within the
    schedule; its Dice 0 measures the schedule length, not the pre-training, so the table flags it.
    """
    cases: Dict[tuple, set] = {}
    predicted: Dict[tuple, set] = {}
    for r in rows:
        run = (r["arm"], r["budget"], r["seed"])
        cases.setdefault(run, set()).add(r["case"])
        if r.get("n_pred"):
            predicted.setdefault(run, set()).add(r["case"])
    if not cases:
        return []
    classes = [str(lb) for lb in labels] + ["mean"]
    lines = ["", "## Per seed (does the run segment anything at all?)", "",
             "| arm | budget | seed | " + " | ".join(names.get(c, c) for c in classes[:-1]) +
             " | foreground mean | test cases with any foreground predicted |",
             "|---|---|---|" + "---|" * (len(classes) + 1)]
    empty = []
    for run in sorted(cases, key=lambda k: (k[1], ARM_ORDER.index(k[0]), k[2])):
        n_pred = len(predicted.get(run, ()))
        if not n_pred:
            empty.append(run)
        lines.append(f"| {run[0]} | {run[1]} | {run[2]} | " +
                     " | ".join(_fmt(seed_means.get(run + (c,))) for c in classes) +
                     f" | {n_pred}/{len(cases[run])}" + ("" if n_pred else " **(none: still all background)**") + " |")
    if empty:
        lines += ["", f"{len(empty)} of {len(cases)} runs predicted no foreground on any test case: their schedule "
                      "ended before nnU-Net left its initial all-background phase. Their Dice 0 says the schedule was "
                      "too short for that start and those labeled cases, not how good the representation is; with "
                      "such runs in the table, differences between arms are not evidence about the methods."]
    return lines


def parse_training_log(text: str) -> Dict[str, List[float]]:
    """Per-epoch train loss, mean pseudo Dice (nnU-Net's validation-patch estimate, foreground classes averaged)
    and the lowest class's pseudo Dice from the text of nnU-Net's training logs."""
    import re
    loss = [float(v) for v in re.findall(r": train_loss (\S+)", text)]
    dice, worst = [], []
    for inner in re.findall(r": Pseudo dice \[(.*)\]", text):
        vals = [float(v) for v in re.findall(r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\)?(?:,|$)", inner)]
        dice.append(sum(vals) / len(vals) if vals else float("nan"))
        worst.append(min(vals) if vals else float("nan"))
    return {"train_loss": loss, "pseudo_dice": dice, "pseudo_dice_worst_class": worst}


def _log_curves(folder: Path) -> Dict[str, List[float]]:
    return parse_training_log("".join(p.read_text() for p in sorted(folder.glob("training_log*.txt"))))


def first_epoch_reaching(values: List[float], threshold: float) -> Optional[int]:
    """Index of the first epoch whose value is >= threshold (None if never): when did foreground emerge?"""
    for i, v in enumerate(values):
        if math.isfinite(v) and v >= threshold:
            return i
    return None


EMERGE_DICE = 0.1  # pseudo Dice that counts as "the run has started to segment"
SEPARATE_DICE = 0.5  # every class's pseudo Dice at least this: "the run segments each class, not one of them"


def _budget_then_arm(item) -> tuple:
    """Sort key of ``{(arm, budget): ...}.items()``: by budget, then in the arms' report order."""
    (arm, budget), _ = item
    return budget, ARM_ORDER.index(arm)


def curves_table(args, data: dict, runs: List[Run]) -> List[str]:
    """Fine-tuning dynamics per arm (mean over seeds): does a pre-trained start learn faster or slower?"""
    per_arm: Dict[tuple, List[Dict[str, List[float]]]] = {}
    for run in runs:
        out, _, _ = run_paths(args, data, run)
        if (out / "checkpoint_final.pth").is_file():
            per_arm.setdefault((run.arm, run.budget), []).append(_log_curves(out))
    if not per_arm:
        return []

    def at(curves, key, i):
        vals = [c[key][i] for c in curves if len(c[key]) > abs(i) and math.isfinite(c[key][i])]
        return _fmt(_mean(vals), 3) if vals else "-"

    def first(curves, key, threshold):
        firsts = [first_epoch_reaching(c[key], threshold) for c in curves]
        return ", ".join("never" if f is None else str(f) for f in firsts)

    lines = ["", "## Fine-tuning curves (training logs; mean over seeds)", "",
             "| arm | budget | train loss epoch 0 | epoch 1 | mid | last | pseudo Dice epoch 1 | mid | last | "
             f"first epoch with pseudo Dice >= {EMERGE_DICE} (per seed) | "
             f"first epoch with every class >= {SEPARATE_DICE} (per seed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, budget), curves in sorted(per_arm.items(), key=_budget_then_arm):
        n = min(len(c["train_loss"]) for c in curves)
        mid = max(0, n // 2)
        lines.append(f"| {arm} | {budget} | {at(curves, 'train_loss', 0)} | {at(curves, 'train_loss', 1)} | "
                     f"{at(curves, 'train_loss', mid)} | {at(curves, 'train_loss', -1)} | "
                     f"{at(curves, 'pseudo_dice', 1)} | {at(curves, 'pseudo_dice', mid)} | "
                     f"{at(curves, 'pseudo_dice', -1)} | {first(curves, 'pseudo_dice', EMERGE_DICE)} | "
                     f"{first(curves, 'pseudo_dice_worst_class', SEPARATE_DICE)} |")
    lines += ["", "Train loss = nnU-Net's Dice + CE (lower is better, negative once Dice dominates); pseudo Dice = "
                  "nnU-Net's per-epoch estimate on validation patches, foreground classes averaged; epochs count "
                  "from 0. The last column is when the run segments every class, not only one of them (with few "
                  "labels a run often predicts one class for the whole structure first)."]
    return lines


def voxel_confusion(label_dir, pred_dir, classes: List[int]) -> List[List[int]]:
    """Voxel counts [true class][predicted class] summed over the test cases (labels outside ``classes`` ignored)."""
    import SimpleITK as sitk
    k = max(classes) + 1
    counts = np.zeros((k, k), dtype=np.int64)
    def voxels(folder, name):
        return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(str(folder), name))).astype(np.int64).ravel()

    for name in bc.nifti_files(label_dir):
        ref, pred = voxels(label_dir, name), voxels(pred_dir, name)
        keep = (ref < k) & (pred < k) & (ref >= 0) & (pred >= 0)
        counts += np.bincount(ref[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    return [[int(counts[t, q]) for q in classes] for t in classes]


def class_fate(counts, i: int) -> np.ndarray:
    """Row ``i`` of voxel-confusion counts as fractions: where true class ``i``'s voxels went (sums to 1)."""
    row = np.asarray(counts[i], dtype=np.float64)
    return row / max(1, row.sum())


def confusion_table(args, data: dict, runs: List[Run], names: Dict[str, str], n_test: int) -> List[str]:
    """Where the voxels of each true class end up (summed over test cases and seeds): tells a class lost to the
    background (missed) from one confused with another class, and over- from under-segmentation."""
    classes = [0] + [int(lb) for lb in data["labels"]]
    per_arm: Dict[tuple, np.ndarray] = {}
    for run in runs:
        _, pred, summary = run_paths(args, data, run)
        if not (summary.is_file() and predictions_complete(pred, n_test)):
            continue
        cache = run.folder / "confusion.json"
        cached = bc.load_json(cache) if cache.is_file() else {}
        if cached.get("classes") != classes or cached.get("summary_mtime") != summary.stat().st_mtime:
            cached = {"classes": classes, "summary_mtime": summary.stat().st_mtime,
                      "counts": voxel_confusion(data["test_labels"], pred, classes)}
            bc.write_json(cached, cache)
        key = (run.arm, run.budget)
        per_arm[key] = per_arm.get(key, 0) + np.asarray(cached["counts"], dtype=np.int64)
    if not per_arm:
        return []
    cname = lambda c: "background" if c == 0 else names.get(str(c), str(c))  # noqa: E731
    lines = ["", "## Where each class's voxels go (test set, summed over cases and seeds)", "",
             "| arm | budget | true class | " + " | ".join(f"-> {cname(c)}" for c in classes) +
             " | predicted / true volume |", "|---|---|---|" + "---|" * (len(classes) + 1)]
    for (arm, budget), m in sorted(per_arm.items(), key=_budget_then_arm):
        for i, c in enumerate(classes[1:], start=1):
            row = class_fate(m, i)
            lines.append(f"| {arm} | {budget} | {cname(c)} | " + " | ".join(f"{v:.2f}" for v in row) +
                         f" | {m[:, i].sum() / max(1, m[i].sum()):.2f} |")
    lines += ["", "Row = voxels of the true class, split by the predicted class (sums to 1); predicted / true "
                  "volume > 1 means over-segmentation."]
    return lines


def _fmt(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def write_report(args, data: dict, split: Split, runs: List[Run], est: dict, t_total: Optional[float]) -> None:
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"low_label_{args.profile}"
    rows = collect(args, data, runs)
    merged = merged_rows(args.merge_per_case, runs, rows, split.test)
    rows += merged
    labels = data["labels"]
    if not rows:
        bc.log("report: no finished runs yet")
        return
    fields = list(rows[0].keys())
    with open(f"{stem}_per_case.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    per_case, seed_means, seed_n, over = aggregate(rows, labels)
    names = {str(k): v for k, v in data["label_names"].items()}
    names["mean"] = "foreground mean"
    with open(f"{stem}_aggregated.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["level", "arm", "budget", "seed", "class", "class_name", "mean_dice", "sd_over_seeds",
                    "min_over_seeds", "max_over_seeds", "n_seeds", "n_cases"])
        for (arm, budget, seed, c), m in sorted(seed_means.items(), key=lambda kv: (ARM_ORDER.index(kv[0][0]),) +
                                                 kv[0][1:]):
            w.writerow(["seed", arm, budget, seed, c, names.get(c, c), _fmt(m, 6), "", "", "", 1,
                        seed_n[(arm, budget, seed, c)]])
        for (arm, budget, c), vals in sorted(over.items(), key=lambda kv: (ARM_ORDER.index(kv[0][0]),) + kv[0][1:]):
            ms = [m for _, m in vals if m is not None]
            w.writerow(["over_seeds", arm, budget, "all", c, names.get(c, c), _fmt(_mean(ms), 6), _fmt(_sd(ms), 6),
                        _fmt(min(ms) if ms else None, 6), _fmt(max(ms) if ms else None, 6), len(ms), ""])
    arms = [a for a in ARM_ORDER if any(k[0] == a for k in over)]
    budgets = sorted({k[1] for k in over})
    stats = paired_stats(per_case, labels, arms, budgets, names) if "scratch" in arms else []
    if stats:
        with open(f"{stem}_paired_vs_scratch.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(stats[0].keys()))
            w.writeheader()
            w.writerows(stats)
    # markdown
    classes = [str(lb) for lb in labels] + ["mean"]
    done = sum(1 for r in runs if run_is_done(args, data, r, len(split.test)))
    merged_runs = sorted({(r["arm"], r["budget"], r["seed"]) for r in merged})
    lines = [f"# Low-label benchmark ({args.profile} profile)", "",
             f"- source {args.source}; test {len(split.test)} cases "
             f"({'external' if split.external_test else f'seeded split, seed {args.split_seed}'}); pool "
             f"{len(split.pool)} labeled cases (downstream {data['downstream']}); pre-training on "
             f"{len(split.pool) + len(split.reference)} non-test images ({data['unlabeled']}); ReFs reference "
             f"{data['reference'] or '-'}",
             f"- plans {data['plans']}, configuration {args.configuration}, fine-tuning fold {args.fold}"
             + (f" (custom split: {len(split.val)} validation cases)" if split.val else " (nnU-Net's split)")
             + f"; label budget picks from fold {args.fold}'s training keys, label_seed = seed",
             f"- pre-training NNUNET_SSL_SETTINGS '{args.pretrain_settings}'; fine-tuning '{args.finetune_settings}"
             f"' + label_budget/label_seed; test-time mirroring {'on' if args.tta else 'off'}",
             f"- {done} of {len(runs)} runs finished" + (f"; wall time of this invocation "
                                                           f"{bc.fmt_duration(t_total)}" if t_total else "")
             + (f"; {len(merged_runs)} more merged from earlier reports (--merge-per-case: "
                f"{', '.join(f'{a}/budget{b}/seed{s}' for a, b, s in merged_runs)}; not in the curve and voxel "
                f"tables)" if merged_runs else ""), "",
             "## Dice on the test set (mean over cases; mean ± sd over seeds, n seeds)", "",
             "| arm | budget | " + " | ".join(names.get(c, c) for c in classes) + " | seeds |",
             "|---|---|" + "---|" * (len(classes) + 1)]
    for budget in budgets:
        for arm in arms:
            cells, nseeds = [], 0
            for c in classes:
                ms = [m for _, m in over.get((arm, budget, c), []) if m is not None]
                nseeds = max(nseeds, len(ms))
                sd = _sd(ms)
                cells.append("-" if not ms else f"{_mean(ms):.4f}" + (f" ± {sd:.4f}" if sd is not None else ""))
            lines.append(f"| {arm} | {budget} | " + " | ".join(cells) + f" | {nseeds} |")
    if stats:
        lines += ["", "## Paired against scratch, per test case (Dice averaged over the seeds both arms have)", "",
                  "| arm | budget | class | n cases | mean diff | median diff | wins/losses | Wilcoxon p |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in stats:
            lines.append(f"| {s['arm']} | {s['budget']} | {names.get(s['class'], s['class'])} | {s['n_cases']} | "
                         f"{s['mean_diff']:+.4f} | {s['median_diff']:+.4f} | {s['wins']}/{s['losses']} | "
                         f"{_fmt(s['wilcoxon_p'], 4)} |")
        lines += ["", "Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided) over the per-case differences; "
                      "no correction for the number of comparisons."]
    lines += per_seed_table(rows, seed_means, labels, names)
    lines += curves_table(args, data, runs)
    lines += confusion_table(args, data, runs, names, len(split.test))
    lines += ["", "## Notes", "",
              "- ReFs reference: " + (f"{args.reference_source} (another labeled dataset)" if args.reference_source
                                      else f"{len(split.reference)} source cases disjoint from test and pool: same "
                                           f"task, so ReFs sees these extra labels of the target task during "
                                           f"pre-training (no test leakage, but not label-matched to the other arms)"),
              "- Pre-training uses every non-test image (labels unused); each method is pre-trained once (not per "
              "seed); seeds vary the labeled cases (label_seed) and nnU-Net's unseeded training.",
              "- ideal-semi: IDEAL checkpoint + IDEALSemiSupervisedTrainer with the ingested non-test images as "
              "unlabeled pool.",
              f"- expected time of this selection (model): {bc.fmt_duration(est['total_s'])}"]
    (Path(f"{stem}.md")).write_text("\n".join(lines) + "\n")
    plot(args, over, arms, budgets, f"{stem}.png")
    print("\n" + "\n".join(lines) + "\n", flush=True)
    bc.log(f"report: {stem}.md, {stem}_per_case.csv, {stem}_aggregated.csv"
           + (f", {stem}_paired_vs_scratch.csv" if stats else "") + f", {stem}.png")


def plot(args, over, arms, budgets, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = len(arms)
    for i, arm in enumerate(arms):
        xs, ys = [], []
        for b in budgets:
            ms = [(s, m) for s, m in over.get((arm, b, "mean"), []) if m is not None]
            if not ms:
                continue
            offset = 1 + 0.04 * (i - (n - 1) / 2)  # spread the arms a little (x is log-scaled)
            line = _mean([m for _, m in ms])
            xs.append(b * offset)
            ys.append(line)
            ax.scatter([b * offset] * len(ms), [m for _, m in ms], s=14, alpha=0.6,
                       color=f"C{ARM_ORDER.index(arm)}")
        if xs:
            ax.plot(xs, ys, marker="o", label=arm, color=f"C{ARM_ORDER.index(arm)}")
    from matplotlib.ticker import NullFormatter, NullLocator
    ax.set_xscale("log")
    ax.set_xlim(min(budgets) / 1.6, max(budgets) * 1.6)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("labeled training cases (label budget)")
    ax.set_ylabel("test Dice (foreground mean)")
    ax.set_title(f"Low-label benchmark ({args.profile}): lines = mean over seeds, points = seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def describe(args, split: Split, est: dict, pre_methods: List[str], runs: List[Run], device: str) -> None:
    prof = PROFILES[args.profile]
    print(f"\nLow-label benchmark, profile {args.profile}: {prof['about']}", flush=True)
    print(f"  work dir {args.work_dir}; report to {Path(args.out).resolve()}; device {device}")
    print(f"  split (seed {args.split_seed}): test {len(split.test)}"
          f"{' (external)' if split.external_test else ''}, ReFs reference {len(split.reference)}"
          f"{' (from --reference-source)' if args.reference_source else ''}, pool {len(split.pool)} "
          f"(fold {args.fold}" + (f": {len(split.pool) - len(split.val)} train / {len(split.val)} val, custom split)"
                                  if split.val else ", nnU-Net's split)"))
    print(f"  arms {', '.join(args.arms)}; budgets {args.budgets}; seeds {args.seeds} -> "
          f"{len(pre_methods)} pre-training(s), {len(runs)} fine-tune/predict run(s)")
    print(f"  pre-training NNUNET_SSL_SETTINGS='{args.pretrain_settings}'")
    for m in pre_methods:
        if m in PRETRAIN_SETTINGS:
            print(f"    + for {m}: {PRETRAIN_SETTINGS[m]}")
    print(f"  fine-tuning NNUNET_SSL_SETTINGS='{_settings(args.finetune_settings, 'label_budget=N,label_seed=S')}'")
    print(f"  test-time mirroring {'on' if args.tta else 'off'}; nnUNet_n_proc_DA="
          f"{os.environ.get('nnUNet_n_proc_DA', 'nnU-Net default')}, nnUNet_def_n_proc="
          f"{os.environ.get('nnUNet_def_n_proc', 'nnU-Net default')}")
    cost = est["cost"]
    where = "(from --cost-json)" if args.cost_json else \
        "(profile default; measure it with benchmark_cost.py and pass --cost-json)"
    used = {PRETRAIN_TRAINERS[m] for m in pre_methods} | {r.trainer for r in runs}
    print(f"  EXPECTED TIME: about {bc.fmt_duration(est['total_s'])} (pre-training "
          f"{bc.fmt_duration(est['pretraining_s'])}, fine-tuning + prediction {bc.fmt_duration(est['finetuning_s'])},"
          f" setup ~5m)\n    model: {est['sec_per_iter']} s per stock fine-tuning iteration {where}, cost ratios "
          + ", ".join(f"{k.replace('Trainer', '')} {v:.1f}" for k, v in cost.items() if k in used), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    prof = PROFILES[args.profile]
    # process-count defaults of the profile (the user's environment wins)
    if prof["n_proc_da"] is not None:
        os.environ.setdefault("nnUNet_n_proc_DA", prof["n_proc_da"])
    if prof["def_n_proc"] is not None:
        os.environ.setdefault("nnUNet_def_n_proc", prof["def_n_proc"])
    for var in ("NNUNET_SSL_SETTINGS", "NNUNET_SSL_PRETRAINED", "NNUNET_SSL_UNLABELED_DATASET",
                "NNUNET_SSL_REFERENCE_DATASET"):
        if os.environ.pop(var, None) is not None:
            bc.log(f"note: {var} from your environment is ignored (the script sets it per run)")
    source = bc.SourceDataset(args.source)
    split = make_split(args, source)
    device = device_of(args)
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UserInputError("--device cuda but torch sees no GPU. Fix: --device cpu (or auto).")
    if prof["gpu"] and device != "cuda" and not args.dry_run:
        bc.log("WARNING: the full profile is meant for GPUs; on CPU it takes months. Use --profile quick.")
    pre_methods = pretrain_methods(args.arms)
    runs = make_runs(args)
    n_val_cases = len(split.pool) if args.fold == "all" else (len(split.val) or math.ceil(len(split.pool) / 5))
    est = estimate(args, len(split.test), n_val_cases, pre_methods, runs, cost_table(args))
    describe(args, split, est, pre_methods, runs, device)
    if args.dry_run:
        return 0
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    data = setup_data(args, source, split)
    bc.write_json({k: v for k, v in data.items() if k != "label_names"}, Path(args.work_dir) / "datasets.json")
    if args.stage == "setup":
        bc.log("setup done")
        return 0
    runner = Runner(args, {"nnUNet_raw": os.environ["nnUNet_raw"],
                           "nnUNet_preprocessed": os.environ["nnUNet_preprocessed"]})
    failures = {}
    if args.stage in ("all", "pretrain", "finetune"):
        for i, m in enumerate(pre_methods):
            bc.log(f"[pre-training {i + 1}/{len(pre_methods)}] {m}")
            try:
                run_pretraining(args, data, m, runner, device)
            except UserInputError as e:
                failures[f"pretrain/{m}"] = str(e)
                (pretrain_dir(args, m)).mkdir(parents=True, exist_ok=True)
                (pretrain_dir(args, m) / "FAILED.txt").write_text(str(e) + "\n")
                bc.log(f"FAILED pre-training {m}: {e}")
                if args.stop_on_error:
                    raise
    if args.stage in ("all", "finetune"):
        t_runs = time.time()
        todo = [r for r in runs if not run_is_done(args, data, r, len(split.test))]
        bc.log(f"{len(runs) - len(todo)} of {len(runs)} fine-tune/predict runs already finished")
        for i, run in enumerate(todo):
            if run.pretrain and f"pretrain/{run.pretrain}" in failures:
                failures[run.name] = f"skipped: pre-training {run.pretrain} failed"
                continue
            elapsed = time.time() - t_runs
            eta = f", about {bc.fmt_duration(elapsed / i * (len(todo) - i))} left" if i else ""
            bc.log(f"[run {i + 1}/{len(todo)}] {run.name} ({run.trainer}){eta}")
            try:
                do_run(args, data, run, runner, device, len(split.test))
                bc.log(f"  {run.name}: done")
            except UserInputError as e:
                failures[run.name] = str(e)
                run.folder.mkdir(parents=True, exist_ok=True)
                (run.folder / "FAILED.txt").write_text(str(e) + "\n")
                bc.log(f"FAILED {run.name}: {e}")
                if args.stop_on_error:
                    raise
    if args.stage in ("all", "report"):
        write_report(args, data, split, runs, est, time.time() - t0)
    bc.log(f"total {bc.fmt_duration(time.time() - t0)} (expected for the whole selection: "
           f"{bc.fmt_duration(est['total_s'])})")
    if failures:
        print(f"\n{len(failures)} failure(s) (details in the FAILED.txt / *.log files of the run folders):",
              file=sys.stderr)
        for k, v in failures.items():
            print(f"  {k}: {v.splitlines()[0][:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    bc.run_main(main)
