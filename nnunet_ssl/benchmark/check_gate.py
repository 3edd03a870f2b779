"""Decided checks hold the runs they overrule, so an unattended queue does not spend hours on a superseded setting.

The benchmark's checks decide on validation cases (:mod:`route_checks`, :mod:`length_checks`); what follows from a
verdict (a new route, a longer pre-training or schedule) is a change of the arms in
:mod:`nnunet_ssl.benchmark.arms`, made by hand and documented. Until it is made, the driver holds (does not start)
every headline run the verdict overrules:

* a route check won by the challenger (``pgl-maeroute`` over ``pgl``) holds the runs of the arm it challenged,
  of the arms that share its route (:attr:`Arm.shares_route`: ``ideal-semi``) and of its pre-training length
  check (``ideal-pre2x`` repeats ``ideal``'s route);
* a pre-training length check saying "too short" on a dataset (``pgl-pre2x`` over ``pgl``) holds, on that dataset,
  the runs of every headline arm fine-tuning from that method's pre-training;
* a schedule check saying "too short" on a dataset (``scratch-2x``) holds every headline run on that dataset.

Other diagnostic arms are never held (the checks themselves are diagnostics). Once the arms are changed, the check is
pointed at the arm that keeps the old setting's records, and the hold ends by itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from nnunet_ssl.benchmark.arms import ARMS, Arm
from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.benchmark.length_checks import length_checks
from nnunet_ssl.benchmark.route_checks import route_check
from nnunet_ssl.benchmark.run_logs import read_runs


def _route_hold(arm: Arm, runs: Dict[str, List[dict]], datasets: Sequence[str]) -> Optional[str]:
    """Why a decided route check holds ``arm`` (its own route or the one it shares), else None."""
    for name, check in ARMS.items():
        if check.route_check and check.route_check in (arm.name, arm.shares_route):
            if route_check(runs, name, datasets)["winner"] == name:
                return (f"route check: `{name}` ({check.route}) won against `{check.route_check}` on the validation "
                        f"cases, so `{arm.name}` must take that route first (nnunet_ssl/benchmark/arms.py)")
    return None


def _length_hold(arm: Arm, dataset: str, runs: Dict[str, List[dict]]) -> Optional[str]:
    """Why a length check saying "too short" on ``dataset`` holds ``arm`` (its schedule or pre-training), else None."""
    for name, check in ARMS.items():
        if not check.length_check:
            continue
        schedule = check.epochs_factor != 1 and check.length_check == "scratch"
        pretraining = check.epochs_factor == 1 and arm.pretrain and ARMS[check.length_check].pretrain == arm.pretrain
        if schedule or pretraining:
            short = [c for c in length_checks(runs.get(dataset, []), name) if c["too_short"]]
            if short:
                what = "the schedule" if schedule else f"`{arm.pretrain}`'s pre-training"
                return (f"length check: `{name}` lifted the validation pseudo Dice on {dataset} at budget "
                        f"{short[0]['budget']} by 2 points or more, so {what} must be the longer one first "
                        f"(nnunet_ssl/benchmark/arms.py)")
    return None


def held_because(arm: Arm, dataset: str, runs: Dict[str, List[dict]], datasets: Sequence[str]) -> Optional[str]:
    """Why a run of ``arm`` on ``dataset`` must wait for the arms to change (None: it may run). ``runs``: per
    dataset, the finished and running runs as :func:`run_logs.read_runs` reads them; ``datasets``: those a route
    check spans."""
    repeats = ARMS.get(arm.length_check) if arm.length_check and arm.epochs_factor == 1 else None
    if repeats is not None and repeats.headline:  # a pre-training length check fine-tunes on its arm's route
        return _route_hold(repeats, runs, datasets)
    if not arm.headline:
        return None
    return _route_hold(arm, runs, datasets) or _length_hold(arm, dataset, runs)


def held_runs(roots: List[Path], todo) -> Dict[str, str]:
    """Per run name of ``todo`` (the driver's runs) that a decided check holds: why. ``roots``: the work directory
    and the record, read as the report reads them."""
    if not any(r.arm.headline or r.arm.length_check for r in todo):
        return {}  # nothing a check could hold: no need to read every run's logs
    keys = [k for k in DATASETS if any((root / k).is_dir() for root in roots)]
    runs = {k: read_runs(roots, k) for k in keys}
    out = {}
    for r in todo:
        why = held_because(r.arm, r.dataset, runs, keys)
        if why:
            out[r.name] = why
    return out
