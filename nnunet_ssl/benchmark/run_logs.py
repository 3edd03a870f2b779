"""What a benchmark work directory and the record hold, read from their files: every run's ``run.json``, status
(training / trained / evaluated), per-case rows and nnU-Net's training logs as per-epoch curves; every
pre-training's curves. The report (:mod:`nnunet_ssl.benchmark.report`) and the pace estimate
(:mod:`nnunet_ssl.benchmark.pace`) read runs through here."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark import record as rec
from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.arms import ARMS, PRETRAIN_TRAINERS
from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.benchmark.splits import fold_of

ARM_ORDER = list(ARMS)
_RUN_DIR = re.compile(r"b(\d+)_s(\d+)$")
_LINE = re.compile(r"^\S+ \S+: (\w+) (\S+)\s*$")
_EPOCH = re.compile(r"^\S+ \S+: Epoch (\d+)\s*$")
_DICE = re.compile(r"^\S+ \S+: Pseudo dice \[(.*)\]\s*$")
_TIME = re.compile(r"^\S+ \S+: Epoch time: ([0-9.]+) s\s*$")
_ITERATIONS = re.compile(r"NNUNET_SSL_SETTINGS applied: .*'num_iterations_per_epoch': (\d+)")


def parse_training_log(text: str) -> Dict[str, List[float]]:
    """Per-epoch curves of nnU-Net training logs (ours and stock): ``train_loss``, ``val_loss``, any other
    ``key value`` line, ``epoch_time`` (seconds), ``iterations_per_epoch`` (where the log names it: the trainer's
    ``NNUNET_SSL_SETTINGS applied`` line; NaN otherwise) and for segmentation runs ``pseudo_dice`` (nanmean over
    classes, as nnU-Net's ``mean_fg_dice``). Values go to the epoch of the last ``Epoch N`` line, so the logs of a
    continued run (which repeats epochs after its last checkpoint) can simply be concatenated in time order."""
    epochs: Dict[int, Dict[str, float]] = {}
    epoch, iterations = None, None
    for line in text.splitlines():
        m = _ITERATIONS.search(line)
        if m:
            iterations = float(m.group(1))
            continue
        m = _EPOCH.match(line)
        if m:
            epoch = int(m.group(1))
            epochs[epoch] = {} if iterations is None else {"iterations_per_epoch": iterations}
            continue
        if epoch is None:
            continue
        m = _DICE.match(line)
        if m:
            inner = re.sub(r"np\.\w+\(([^)]*)\)", r"\1", m.group(1))
            vals = [float(v) for v in inner.split(",") if v.strip()]
            epochs[epoch]["pseudo_dice"] = st._nanmean(vals)
            continue
        m = _TIME.match(line)
        if m:
            epochs[epoch]["epoch_time"] = float(m.group(1))
            continue
        m = _LINE.match(line)
        if m:
            try:
                epochs[epoch][m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    done = [e for e in sorted(epochs) if "train_loss" in epochs[e]]  # an epoch counts once it logged its loss
    keys = sorted({k for e in done for k in epochs[e]})
    return {k: [epochs[e].get(k, float("nan")) for e in done] for k in keys}


def _log_order(path: Path) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", path.name))  # training_log_2026_12_2_00_42_59.txt


def read_curves(folder: Optional[Path]) -> Dict[str, List[float]]:
    if folder is None:
        return {}
    logs = sorted(folder.glob("training_log*.txt"), key=_log_order)
    return parse_training_log("\n".join(p.read_text(errors="replace") for p in logs))


def _json(path: Path) -> dict:
    return bc.load_json(path) if path.is_file() else {}


_RANK = {"evaluated": 2, "trained": 1, "training": 0}


def _logs_folder(folder: Path, train: Optional[Path]) -> Optional[Path]:
    """A recorded run keeps nnU-Net's training logs in its own folder; a work directory's run in nnU-Net's."""
    return folder if rec.training_logs(folder) else train


def read_runs(roots: List[Path], key: str) -> List[dict]:
    """Every run folder of a dataset in the work directory and the record (a run in both: the further one):
    dataset, arm, budget, seed, folder, info (run.json), status (evaluated / trained / training), curves (training
    log), rows (per-case Dice, when evaluated)."""
    ds, found = DATASETS[key], {}
    for root in roots:
        for folder in sorted((root / key / "arms").glob("*/b*_s*")):
            m = _RUN_DIR.match(folder.name)
            arm = folder.parent.name
            if not m or arm not in ARMS:
                continue
            budget, seed = int(m.group(1)), int(m.group(2))
            info = _json(folder / "run.json")
            fold = info.get("fold", fold_of(ds, budget, seed) if budget in ds.budgets else None)
            train = rec.trainer_folder(folder.parent / "nnUNet_results", info.get("trainer", ARMS[arm].trainer),
                                       ds.configuration, fold)
            summary = folder / "summary.json"
            status = "evaluated" if summary.is_file() else (
                "trained" if train is not None and (train / "checkpoint_final.pth").is_file() else "training")
            old = found.get((arm, budget, seed))
            if old is not None and _RANK[old["status"]] >= _RANK[status]:
                continue
            rows = st.case_rows(bc.load_json(summary), dataset=key, arm=arm, budget=budget, seed=seed) \
                if summary.is_file() else []
            curves = read_curves(_logs_folder(folder, train))
            found[(arm, budget, seed)] = dict(dataset=key, arm=arm, budget=budget, seed=seed, folder=folder,
                                              info=info, status=status, curves=curves, rows=rows)
    return [found[k] for k in sorted(found, key=lambda k: (_order(k[0]), k[1], k[2]))]


def read_pretrainings(roots: List[Path], key: str) -> List[dict]:
    """Every pre-training of a dataset in the work directory and the record (in both: the finished one)."""
    found = {}
    for root in roots:
        for folder in sorted((root / key / "pretrain").glob("*")):
            method = folder.name
            if method not in PRETRAIN_TRAINERS:
                continue
            info = _json(folder / "run.json")
            train = rec.trainer_folder(folder / "nnUNet_results", PRETRAIN_TRAINERS[method],
                                       DATASETS[key].configuration, "all")
            finished = bool(info.get("finished")) or (train is not None and (train / "checkpoint_final.pth").is_file())
            if method in found and (found[method]["finished"] or not finished):
                continue
            found[method] = dict(method=method, trainer=PRETRAIN_TRAINERS[method], info=info,
                                 curves=read_curves(_logs_folder(folder, train)), finished=finished)
    return [found[m] for m in sorted(found)]


def _order(arm: str) -> int:
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)
