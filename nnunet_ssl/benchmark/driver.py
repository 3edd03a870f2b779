"""Runs of the low-label benchmark: data setup, pre-training, fine-tuning, prediction and evaluation.

Every step writes its result atomically or through nnU-Net's own checkpoints and is skipped when its result is on
disk; an interrupted training continues with nnU-Net's ``--c``. Layout of a work directory::

    WORK/nnUNet_raw, WORK/nnUNet_preprocessed       one nnU-Net tree for all datasets of the benchmark
    WORK/profile.json, WORK/commands.sh              the work dir's profile (main.py); every stock command run
    WORK/<dataset>/split.json                        the fixed split (never changes for a work directory)
    WORK/<dataset>/test/imagesTs, labelsTs           the test cases
    WORK/<dataset>/pretrain/<method>/nnUNet_results  one pre-training per method and dataset
    WORK/<dataset>/arms/<arm>/nnUNet_results         fine-tuning runs of an arm (one nnU-Net fold per budget/seed)
    WORK/<dataset>/arms/<arm>/b<budget>_s<seed>/     predictions, summary.json, run.json, logs
"""
from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.arms import ARMS, PRETRAIN_TRAINERS, Arm, arm_schedule, method_defaults, needs_reference
from nnunet_ssl.benchmark.datasets import DATASETS, BenchDataset
from nnunet_ssl.benchmark.record import recorded_weights
from nnunet_ssl.benchmark.splits import Split, fold_of, make_split, nnunet_folds
from nnunet_ssl.errors import UserInputError
from nnunet_ssl.settings import settings_items

PLANS = "nnUNetPlans"


def settings_text(values: Dict[str, object], *extra: str) -> str:
    parts = [f"{k}={v}" for k, v in values.items()] + [e.strip(",") for e in extra if e and e.strip(",")]
    return ",".join(parts)


class Runner:
    """Runs a stock ``nnUNetv2_*`` command with extra environment, appends it to ``commands.sh``, times it."""

    def __init__(self, work: Path, base_env: Dict[str, str], verbose: bool = False):
        self.commands_file, self.base_env, self.verbose = work / "commands.sh", base_env, verbose

    def __call__(self, name: str, args: List, env: Dict[str, str], log_file: Optional[Path]) -> float:
        from nnunet_ssl.cli.commands import run_nnunet
        full = {k: str(v) for k, v in dict(self.base_env, **env).items() if v is not None}
        line = " ".join(f"{k}={shlex.quote(v)}" for k, v in full.items())
        line += f" {name} {' '.join(shlex.quote(str(a)) for a in args)}"
        with open(self.commands_file, "a") as f:
            f.write(line + "\n")
        t0 = time.time()
        run_nnunet(name, args, env=full, log_file=None if self.verbose or log_file is None else str(log_file))
        return time.time() - t0


@dataclass
class DatasetSetup:
    ds: BenchDataset
    split: Split
    downstream: str
    test_images: str
    test_labels: str
    labels: List[int]
    label_names: Dict[int, str]
    unlabeled: Optional[str] = None
    reference: Optional[str] = None
    plans: str = PLANS  # every arm's and every pre-training's plans (the smoke profile's are tiny)


def dataset_dir(work: Path, ds: BenchDataset) -> Path:
    return work / ds.key


def subset_cases(ds: BenchDataset, cases: List[str], split_seed: int, max_groups: Optional[int]) -> List[str]:
    """The cases of ``max_groups`` groups (seeded by ``split_seed``), or every case (None)."""
    if max_groups is None:
        return list(cases)
    groups = ds.groups(list(cases))
    return sorted(c for g in bc.seeded_shuffle(list(groups), split_seed)[:max_groups] for c in groups[g])


def prepare_dataset(work: Path, ds: BenchDataset, split_seed: int, num_processes: int, need_unlabeled: bool,
                    need_reference: bool, max_groups: Optional[int] = None, tiny: Optional[Dict[str, int]] = None,
                    reference_spec: Optional[BenchDataset] = None,
                    reference_max_groups: Optional[int] = None) -> DatasetSetup:
    """Downstream raw dataset (non-test cases), default plans, folds, test folder, unlabeled pool, reference.

    ``max_groups``: use only that many groups of the source (seeded); ``tiny``: train every arm and pre-training
    with plans derived from the default ones (``max_features``, ``batch_size``; same preprocessed data);
    ``reference_spec``: the reference dataset's spec (default ``DATASETS[ds.reference]``); ``reference_max_groups``:
    the reference dataset's own ``max_groups`` (its split needs its own number of groups)."""
    source = bc.SourceDataset(ds.source)
    split = make_split(ds, subset_cases(ds, source.cases, split_seed, max_groups), split_seed)
    root = dataset_dir(work, ds)
    root.mkdir(parents=True, exist_ok=True)
    split_file = root / "split.json"
    if split_file.is_file() and bc.load_json(split_file) != split.to_dict():
        raise UserInputError(f"{split_file} holds another split than --split-seed {split_seed} gives. Fix: the "
                             f"earlier seed, or another --work-dir.")
    bc.write_json(split.to_dict(), split_file)
    raw = os.environ["nnUNet_raw"]
    down = bc.ensure_labeled_raw_dataset(source, raw, ds.dataset_id, ds.downstream_name.split("_", 1)[1],
                                         split.non_test)
    bc.ensure_planned(ds.dataset_id, down, ds.configuration, len(split.non_test), num_processes,
                      log_file=str(root / "planning.log"))
    plans = PLANS
    if tiny:
        plans = f"{PLANS}Tiny{tiny['max_features']}"
        bc.ensure_derived_plans([down], PLANS, plans, max_features=tiny["max_features"],
                                batch_size=tiny.get("batch_size"), configuration=ds.configuration)
    folds_file = Path(os.environ["nnUNet_preprocessed"]) / down / "splits_final.json"
    folds = nnunet_folds(ds, split)
    if not folds_file.is_file() or bc.load_json(folds_file) != folds:
        bc.write_json(folds, folds_file)
    test_images, test_labels = str(root / "test" / "imagesTs"), str(root / "test" / "labelsTs")
    bc.ensure_image_folder(source, test_images, split.test, with_labels_to=test_labels)
    setup = DatasetSetup(ds, split, down, test_images, test_labels, source.foreground_labels, source.label_names,
                         plans=plans)
    if need_unlabeled or need_reference:
        images = str(root / "inputs" / "unlabeled_images")
        bc.ensure_image_folder(source, images, split.non_test)
        setup.unlabeled = bc.ensure_ingested(images, ds.unlabeled_id, ds.unlabeled_name.split("_", 1)[1], down,
                                             plans, ds.configuration, len(split.non_test), num_processes)
    if need_reference:
        other = reference_spec or DATASETS[ds.reference]
        osrc = bc.SourceDataset(other.source)
        osplit = make_split(other, subset_cases(other, osrc.cases, split_seed, reference_max_groups), split_seed)
        cases = bc.seeded_shuffle(osplit.non_test, split_seed)[:ds.num_reference_cases]
        ref = bc.ensure_labeled_raw_dataset(osrc, raw, ds.reference_id, f"LowLabelRef{other.key.capitalize()}",
                                            cases)
        setup.reference = bc.ensure_reference(ref, setup.unlabeled, plans, ds.configuration, len(cases),
                                              num_processes)
    return setup


def pretrain_checkpoint(work: Path, s: DatasetSetup, method: str) -> Path:
    return (dataset_dir(work, s.ds) / "pretrain" / method / "nnUNet_results" / s.unlabeled /
            f"{PRETRAIN_TRAINERS[method]}__{s.plans}__{s.ds.configuration}" / "fold_all" / "checkpoint_final.pth")


def continue_args(folder: Path) -> List[str]:
    """``["--c"]`` if ``folder`` holds a checkpoint nnU-Net can continue from, else ``[]``.

    A session that stops while nnU-Net writes a checkpoint leaves it truncated, and ``--c`` would then fail on every
    later attempt (the queue stops there). A damaged ``checkpoint_latest.pth`` or ``checkpoint_best.pth`` is moved
    aside (``.damaged``), so ``--c`` continues from the intact one, or the run starts again from its start (with its
    pre-trained weights) when neither is intact. Checked in ``--c``'s order; the first intact one is the one used."""
    from nnunet_ssl.weights.checkpoint import load_checkpoint_file
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth"):
        ckpt = folder / name
        if not ckpt.is_file():
            continue
        try:
            load_checkpoint_file(str(ckpt))
            return ["--c"]
        except UserInputError as e:
            os.replace(ckpt, ckpt.with_name(name + ".damaged"))
            bc.log(f"{ckpt} moved aside to {name}.damaged: {e}")
    return []


def pretrained_start(work: Path, s: DatasetSetup, method: str, schedule: str, record: Optional[Path] = None
                     ) -> Optional[Path]:
    """Where a fine-tuning from ``method`` starts: the work directory's checkpoint, else the record's weights of a
    pre-training with the same ``schedule``, else None (the pre-training has to run)."""
    ckpt = pretrain_checkpoint(work, s, method)
    if ckpt.is_file():
        return ckpt
    return recorded_weights(record, Path(s.ds.key) / "pretrain" / method, schedule, method_defaults(method))


def run_pretraining(work: Path, s: DatasetSetup, method: str, schedule: str, runner: Runner, device: str,
                    record: Optional[Path] = None) -> None:
    ckpt = pretrain_checkpoint(work, s, method)
    start = pretrained_start(work, s, method, schedule, record)
    if start is not None:
        if start != ckpt:
            bc.log(f"{s.ds.key}: pre-training {method}: the recorded weights {start} (same settings), not re-run")
        return
    folder = dataset_dir(work, s.ds) / "pretrain" / method
    folder.mkdir(parents=True, exist_ok=True)
    cont = continue_args(ckpt.parent)
    env = {"nnUNet_results": str(folder / "nnUNet_results"), "NNUNET_SSL_SETTINGS": schedule}
    if needs_reference(method):
        env["NNUNET_SSL_REFERENCE_DATASET"] = s.reference
    bc.log(f"{s.ds.key}: pre-training {method} ({PRETRAIN_TRAINERS[method]})" + (" (continuing)" if cont else ""))
    secs = runner("nnUNetv2_train", [s.unlabeled, s.ds.configuration, "all", "-tr", PRETRAIN_TRAINERS[method],
                                     "-p", s.plans, "-device", device] + cont, env, folder / "train.log")
    if not ckpt.is_file():
        raise UserInputError(f"pre-training {method} ended without {ckpt}; see {folder / 'train.log'}")
    info = bc.load_json(folder / "run.json") if (folder / "run.json").is_file() else {"seconds": 0.0}
    info.update(method=method, trainer=PRETRAIN_TRAINERS[method], settings=schedule,
                method_defaults=method_defaults(method), seconds=info["seconds"] + secs)
    bc.write_json(info, folder / "run.json")


@dataclass(frozen=True)
class Run:
    dataset: str
    arm: Arm
    budget: int
    seed: int

    @property
    def slot(self) -> str:
        """``b<budget>_s<seed>``: the run's folder under its arm, and the last part of its name."""
        return f"b{self.budget}_s{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.arm.name}/{self.slot}"


def run_of_name(name: str) -> Run:
    """The run named ``dataset/arm/b<budget>_s<seed>`` (:attr:`Run.name`); :class:`UserInputError` otherwise."""
    m = re.fullmatch(r"([^/]+)/([^/]+)/b(\d+)_s(\d+)", name.strip())
    if not m or m.group(2) not in ARMS or m.group(1) not in DATASETS:
        raise UserInputError(f"{name!r} names no run: expected dataset/arm/b<budget>_s<seed> (e.g. acdc/mae/b1_s0), "
                             f"dataset one of {', '.join(DATASETS)}, arm one of {', '.join(ARMS)}")
    return Run(m.group(1), ARMS[m.group(2)], int(m.group(3)), int(m.group(4)))


def run_folder(work: Path, run: Run) -> Path:
    return work / run.dataset / "arms" / run.arm.name / run.slot


def results_dir(work: Path, run: Run) -> Path:
    return work / run.dataset / "arms" / run.arm.name / "nnUNet_results"


def training_output(work: Path, s: DatasetSetup, run: Run) -> Path:
    return (results_dir(work, run) / s.downstream / f"{run.arm.trainer}__{s.plans}__{s.ds.configuration}" /
            f"fold_{fold_of(s.ds, run.budget, run.seed)}")


def run_settings(schedule: str, run: Run) -> str:
    """``NNUNET_SSL_SETTINGS`` of a run: the profile's schedule for its dataset (epochs times the arm's
    ``epochs_factor``) plus the arm's own settings."""
    values = dict(item.split("=", 1) for item in settings_items(schedule))
    return settings_text(arm_schedule(run.arm, values), run.arm.settings)


def stale_runs(work: Path, runs: List[Run], schedules: Dict[str, str], record: Optional[Path] = None) -> List[str]:
    """Runs (in the work directory or the record) started with other settings than the ones they would get now
    (``schedules``: dataset key -> schedule), one line each; their results must not be mixed with the current
    schedule's."""
    out = []
    for root in [work] + ([record] if record else []):
        for run in runs:
            info_file = run_folder(root, run) / "run.json"
            if info_file.is_file():
                old, new = bc.load_json(info_file).get("settings"), run_settings(schedules[run.dataset], run)
                if old != new:
                    out.append(f"{run.name} ({root}): started with NNUNET_SSL_SETTINGS={old!r}, now {new!r}")
    return out


def run_is_done(work: Path, run: Run, record: Optional[Path] = None) -> bool:
    """Evaluated in the work directory or in the record (a finished run of another machine)."""
    return any((run_folder(root, run) / "summary.json").is_file() for root in [work] + ([record] if record else []))


def training_environment(work: Path, s: DatasetSetup, run: Run, continuing: bool, pretrain_schedule: str = "",
                         record: Optional[Path] = None) -> Dict[str, str]:
    """The arm's start and pools: ``NNUNET_SSL_PRETRAINED`` (the work directory's checkpoint or the record's weights
    of ``pretrain_schedule``; not when continuing: ``--c`` never reloads pre-trained weights) and
    ``NNUNET_SSL_UNLABELED_DATASET``."""
    env = {}
    if run.arm.pretrain and not continuing:
        ckpt = pretrained_start(work, s, run.arm.pretrain, pretrain_schedule, record)
        if ckpt is None:
            raise UserInputError(f"{run.name}: pre-training {run.arm.pretrain} has no checkpoint "
                                 f"({pretrain_checkpoint(work, s, run.arm.pretrain)}) and no recorded weights")
        env["NNUNET_SSL_PRETRAINED"] = str(ckpt)
    if run.arm.uses_unlabeled:
        env["NNUNET_SSL_UNLABELED_DATASET"] = s.unlabeled
    return env


def do_run(work: Path, s: DatasetSetup, run: Run, schedule: str, runner: Runner, device: str, tta: bool,
           pretrain_schedule: str = "", record: Optional[Path] = None) -> None:
    folder, out = run_folder(work, run), training_output(work, s, run)
    folder.mkdir(parents=True, exist_ok=True)
    fold = str(fold_of(s.ds, run.budget, run.seed))
    settings = run_settings(schedule, run)
    info_file = folder / "run.json"
    info = bc.load_json(info_file) if info_file.is_file() else {"seconds": {}}
    info.update(dataset=run.dataset, arm=run.arm.name, budget=run.budget, seed=run.seed, fold=int(fold),
                trainer=run.arm.trainer, pretrain=run.arm.pretrain, settings=settings, plans=s.plans,
                configuration=s.ds.configuration, labeled=s.split.labeled(run.budget, run.seed))
    env = {"nnUNet_results": str(results_dir(work, run)), "NNUNET_SSL_SETTINGS": settings}
    if not (out / "checkpoint_final.pth").is_file():
        cont = continue_args(out)
        env.update(training_environment(work, s, run, continuing=bool(cont), pretrain_schedule=pretrain_schedule,
                                        record=record))
        if env.get("NNUNET_SSL_PRETRAINED"):
            info["pretrained_from"] = env["NNUNET_SSL_PRETRAINED"]
        bc.log(f"{run.name}: training {run.arm.trainer}, fold {fold}" + (" (continuing)" if cont else ""))
        info["seconds"]["train"] = info["seconds"].get("train", 0.0) + runner(
            "nnUNetv2_train", [s.downstream, s.ds.configuration, fold, "-tr", run.arm.trainer, "-p", s.plans,
                               "-device", device] + cont, env, folder / "train.log")
        bc.write_json(info, info_file)
    pred = folder / "predictions"
    if not (pred.is_dir() and len(bc.nifti_files(pred)) >= len(s.split.test)):
        bc.log(f"{run.name}: predicting {len(s.split.test)} test cases")
        args = ["-i", s.test_images, "-o", str(pred), "-d", s.downstream, "-c", s.ds.configuration, "-f", fold,
                "-tr", run.arm.trainer, "-p", s.plans, "-device", device, "-npp", "1", "-nps", "1",
                "--disable_progress_bar"] + ([] if tta else ["--disable_tta"])
        info["seconds"]["predict"] = runner("nnUNetv2_predict", args, {"nnUNet_results": str(results_dir(work, run))},
                                            folder / "predict.log")
        bc.write_json(info, info_file)
    summary = folder / "summary.json"
    tmp = folder / "summary.json.tmp.json"
    info["seconds"]["evaluate"] = runner("nnUNetv2_evaluate_simple", [s.test_labels, str(pred), "-l", *s.labels,
                                                                      "-o", str(tmp), "-np", 1], {},
                                         folder / "evaluate.log")
    os.replace(tmp, summary)
    bc.write_json(info, info_file)
