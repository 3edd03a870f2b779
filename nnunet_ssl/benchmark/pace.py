"""How long a benchmark run still needs, estimated from nnU-Net's own epoch times: the driver's ``--deadline``
starts only runs that can finish before it (a session, or a cluster job, that ends at a known time).

A run's remaining time = its pre-training's remaining epochs (when its method has neither a checkpoint nor
recorded weights) + the epochs its training still has to do (a stopped run continues with ``--c`` from its last
``save_every`` checkpoint) x the arm's seconds per epoch + its prediction and evaluation.

Paces are kept per training step (an epoch's time over its training iterations: the log's ``NNUNET_SSL_SETTINGS
applied`` line, else the run's settings, else nnU-Net's 250), so schedules with other epoch lengths compare (ACDC
fine-tunes 40 iterations per epoch, pre-trainings 20); an estimate multiplies by the run's own iterations per epoch.
Seconds per step, first found wins: the median of the same dataset and arm (pre-training: method; the fine-tuning
arms that train the stock network share one median over all their epochs; a longer pre-training, ``pgl-2x``, its
method's, ``pgl``, where it has none of its own) in the work directory's logs (this machine), then in the record's
(the machine that recorded them); else another arm of the dataset scaled by the two arms' ratio measured on another
dataset (:meth:`Pace.measured_ratios`), else by :data:`EPOCH_COST` (cost relative to stock nnU-Net's). No epoch time
of the dataset anywhere: unknown (``None``), and the driver runs it. The record's times come from other machines:
when this machine has run something that the record also holds from elsewhere (same dataset, same kind: fine-tuning
or pre-training), they are scaled by this machine's speed against the record's (:meth:`Pace.speed_factor`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_ssl.benchmark.arms import ARMS, LONGER_PRETRAINING, method_defaults
from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.benchmark.record import recorded_weights
from nnunet_ssl.benchmark.run_logs import read_pretrainings, read_runs
from nnunet_ssl.settings import settings_items

# seconds per training step (an epoch's time over its training iterations, validation included, as Pace keeps them)
# relative to a stock nnU-Net step of the same dataset, on ACDC's 2d network: the table decides only where no ratio of
# the same configuration is measured (a new machine, a method that never ran on the dataset). Fine-tuning arms train
# the stock network with stock losses (1.0); IDEAL's semi-supervised fine-tuning runs a labeled and an unlabeled batch
# through two decoders (3.2x per iteration in the cost benchmark; 4.0 kept as a margin). Pre-trainings
# ("pretrain:<method>", 20 training and 5 validation iterations per epoch) as the record's ACDC pre-trainings measured
# them against stock's fine-tuning steps on the same machine (2026-12-04/06): MAE 0.98, GMIM 1.02, IDEAL 2.12 (levels
# down to 1/4 of the patch), IDEAL with its shallow levels 2.0; PGL 1.87 (its stopped ACDC pre-training, 44 s per
# epoch); ReFs from the cost benchmark's per-iteration ratios on ACDC (fish on MAE 2.0x MAE; without matching the same
# two passes; on PGL: PGL's step plus a reference pass, about 1.5x PGL). Until 2026-12-07 the pre-trainings' entries
# were per-epoch ratios (0.6-1.4), about half the per-step ones: on a new machine the driver estimated ACDC's PGL
# pre-training at an hour where it needs nearly two.
EPOCH_COST: Dict[str, float] = {
    "scratch": 1.0, "scratch-2x": 1.0, "scratch-rep": 1.0, "mae": 1.0, "gmim": 1.0, "pgl": 1.0, "ideal": 1.0,
    "refs": 1.0,
    "ideal-reinit2": 1.0, "ideal-enclr": 1.0, "ideal-wholenet": 1.0, "mae-reinit1": 1.0, "mae-lpft": 1.0,
    "pgl-maeroute": 1.0, "ideal-lpft": 1.0,
    "ideal-inside": 1.0, "ideal-shallow": 1.0, "refs-nomatch": 1.0, "refs-pgl": 1.0,
    "ideal-semi": 4.0, "semi-scratch": 4.0, "ideal-semi-dice": 4.0,
    "pretrain:mae": 1.0, "pretrain:gmim": 1.05, "pretrain:pgl": 1.9, "pretrain:ideal": 2.1, "pretrain:refs": 2.0,
    "pretrain:ideal-inside": 2.1, "pretrain:ideal-shallow": 2.0, "pretrain:refs-nomatch": 1.9,
    "pretrain:refs-pgl": 2.8,
}
# a length check costs per epoch what the arm and the pre-training it repeats do
EPOCH_COST.update({f"pretrain:{long}": EPOCH_COST[f"pretrain:{base}"] for long, base in LONGER_PRETRAINING.items()})
# a longer pre-training runs its method's trainer: its steps cost what the method's own pre-training's measured
SAME_STEPS: Dict[str, str] = {f"pretrain:{long}": f"pretrain:{base}" for long, base in LONGER_PRETRAINING.items()}
EPOCH_COST.update({a.name: EPOCH_COST[a.length_check] for a in ARMS.values() if a.pretrain in LONGER_PRETRAINING})


def stock_cost(name: str) -> bool:
    """Whether arm ``name`` trains the stock network with stock losses (a fine-tuning arm costing what stock
    nnU-Net's steps cost: :data:`EPOCH_COST` 1.0)."""
    return not name.startswith("pretrain:") and EPOCH_COST.get(name) == EPOCH_COST["scratch"]


def _whose(name: str) -> str:
    return "the stock-cost arms'" if stock_cost(name) else f"{name}'s"


_FINAL_VALIDATION_EPOCHS = 2  # nnU-Net's final validation and start-up, in epochs of the same run (rough)
NNUNET_ITERATIONS = 250  # nnU-Net's iterations per epoch: a run whose log and settings name none trained that many


def _median(values: List[float]) -> Optional[float]:
    values = sorted(v for v in values if v == v)
    return values[len(values) // 2] if values else None


def settings_iterations(settings: str) -> Optional[int]:
    """``num_iterations_per_epoch`` of an ``NNUNET_SSL_SETTINGS`` string, or None where it names none."""
    for part in settings_items(settings):
        name, _, value = part.partition("=")
        if name.strip() == "num_iterations_per_epoch" and value.strip().isdigit():
            return int(value)
    return None


def resume_epoch(completed: int, save_every: int) -> int:
    """The epoch ``--c`` continues from after ``completed`` logged epochs: the last ``checkpoint_latest`` is written
    after every ``save_every``-th epoch."""
    return (completed // max(1, save_every)) * max(1, save_every)


@dataclass
class Estimate:
    seconds: Optional[float]  # None: no epoch time of this dataset known
    detail: str  # how it was reached, for the log
    pretrain_seconds: Optional[float] = None  # the part of ``seconds`` its pre-training needs (None: none to run)
    resumes_at: int = 0  # the epoch a stopped run continues from (``--c``, this machine's checkpoint); 0: none
    pretrain_resumes_at: int = 0  # the same for the pre-training it needs first

    def fits(self, seconds_left: float) -> bool:
        return self.seconds is None or self.seconds <= seconds_left


Runs = Dict[str, tuple]  # source -> (read_runs, read_pretrainings) of one dataset, sources in search order


class Pace:
    """Epoch times of one dataset in the work directory and the record (read once per estimate, so runs finishing
    meanwhile count)."""

    def __init__(self, work: Path, record: Optional[Path]):
        self.record = record
        self.roots = [("this machine", work)] + ([("the record", record)] if record else [])

    def read(self, key: str) -> Runs:
        """The runs and pre-trainings of dataset ``key`` in each existing root (the logs are read here, once)."""
        return {source: (read_runs([root], key), read_pretrainings([root], key))
                for source, root in self.roots if root.is_dir()}

    @staticmethod
    def _step_lists(runs: Runs) -> Dict[tuple, List[List[float]]]:
        """(source, name) -> the seconds per training step of each epoch of each of its runs; name: the arm, or
        ``pretrain:<method>``."""
        lists: Dict[tuple, List[List[float]]] = {}
        for source, (arms, pres) in runs.items():
            for name, curves, info in [(r["arm"], r["curves"], r["info"]) for r in arms] + \
                    [("pretrain:" + p["method"], p["curves"], p["info"]) for p in pres]:
                default = settings_iterations(info.get("settings", "")) or NNUNET_ITERATIONS
                times = curves.get("epoch_time", [])
                iterations = curves.get("iterations_per_epoch", [float("nan")] * len(times))
                lists.setdefault((source, name), []).append(
                    [t / (i if i == i and i > 0 else default) for t, i in zip(times, iterations) if t == t])
        return lists

    @staticmethod
    def _medians(lists: Dict[tuple, List[List[float]]]) -> Dict[tuple, float]:
        """(source, name) -> median seconds per step of :meth:`_step_lists`' runs. The fine-tuning arms that train
        the stock network with stock losses (:func:`stock_cost`) share one pace per source: the median over all
        their epochs, so that one arm whose few runs shared the CPU (or ran on a slower machine the record also
        holds) does not set its own estimates apart from the others'."""
        steps = {key: [t for times in ts for t in times] for key, ts in lists.items()}
        stock: Dict[str, List[float]] = {}
        for (s, n), ts in steps.items():
            if stock_cost(n):
                stock.setdefault(s, []).extend(ts)
        return {(s, n): m for (s, n), ts in steps.items()
                if (m := _median(stock[s] if stock_cost(n) else ts)) is not None}

    @classmethod
    def _step_times(cls, runs: Runs) -> List[tuple]:
        """(source, name, median seconds per step) per arm and per pre-training (``pretrain:<method>``), the
        stock-cost arms pooled (:meth:`_medians`)."""
        return [(s, n, m) for (s, n), m in cls._medians(cls._step_lists(runs)).items()]

    def speed_factor(self, keys) -> tuple:
        """(this machine's step time / the record's, where from) over the datasets ``keys``, or (None, ""): the
        median ratio over pairs of a pace of this machine and one of the record from another machine (a recorded
        run with the same step times as one of this work directory is a copy of it and does not count), of the
        same dataset and kind (fine-tuning or pre-training), each normalised by :data:`EPOCH_COST`. The paces are
        the ones estimates use: the stock-cost arms pooled per source into one (an arm's own median paired with
        the record's pooled pace would scale that pace by a ratio nobody measured)."""
        if len(self.roots) < 2:
            return None, ""
        here_name, record_name = self.roots[0][0], self.roots[1][0]
        ratios, where = [], set()
        for key in keys:
            lists = self._step_lists(self.read(key))
            copies = [times for (s, _), ts in lists.items() if s == here_name for times in ts]
            lists = {(s, n): [times for times in ts if s != record_name or times not in copies]
                     for (s, n), ts in lists.items() if n in EPOCH_COST}
            paces: Dict[str, Dict[str, float]] = {here_name: {}, record_name: {}}
            for (s, n), m in self._medians(lists).items():  # the stock-cost arms: one entry, "scratch"
                paces[s]["scratch" if stock_cost(n) else n] = m
            for m, rec in paces[record_name].items():
                for n, mine in paces[here_name].items():
                    if rec and mine and n.startswith("pretrain:") == m.startswith("pretrain:"):
                        ratios.append((mine / EPOCH_COST[n]) / (rec / EPOCH_COST[m]))
                        where.add(key)
        factor = _median(ratios)
        return (factor, f"this machine's speed against the record's on {', '.join(sorted(where))}") \
            if factor else (None, "")

    def step_seconds(self, key: str, name: str, runs: Optional[Runs] = None) -> tuple:
        """(seconds per training step or None, where from) of arm ``name`` (or ``pretrain:<method>``) on dataset
        ``key``."""
        known = self._step_times(self.read(key) if runs is None else runs)
        ratios = None  # measured_ratios(key, name), read at most once
        for i, (source, _) in enumerate(self.roots):
            found = None
            own = [m for s, n, m in known if s == source and n == name]
            paced_by = name if own else SAME_STEPS.get(name)
            same = own or [m for s, n, m in known if s == source and n == paced_by]
            other = [(n, m) for s, n, m in known if s == source and n in EPOCH_COST]
            if same:
                found = same[0], f"{_whose(paced_by)} median step on {source}"
            elif other and name in EPOCH_COST:
                kind = name.startswith("pretrain:")  # the same kind (fine-tuning / pre-training) first, scratch first
                other = sorted(other, key=lambda nm: (nm[0].startswith("pretrain:") != kind, nm[0] != "scratch"))
                ratios = self.measured_ratios(key, name) if ratios is None else ratios
                for n, m in other:  # a ratio measured on another dataset beats the table's
                    if n in ratios:
                        ratio, where = ratios[n]
                        found = m * ratio, f"{_whose(n)} median step on {source} x {ratio:.2f} ({where})"
                        break
                else:
                    n, m = other[0]
                    found = m * EPOCH_COST[name] / EPOCH_COST[n], \
                        f"{_whose(n)} median step on {source} x {EPOCH_COST[name] / EPOCH_COST[n]:.1f}"
            if found is not None and i > 0:  # the record's pace: scaled to this machine's where known
                factor, how = self.speed_factor([k for k in DATASETS if k != key])
                if factor is not None:
                    found = found[0] * factor, f"{found[1]} x {factor:.2f} ({how})"
            if found is not None:
                return found
        return None, "no epoch time of this dataset yet"

    def measured_ratios(self, key: str, name: str) -> Dict[str, tuple]:
        """Base arm -> (epoch time of ``name`` / epoch time of the base, where measured), both measured on another
        dataset than ``key`` with the same configuration, on the same machine (this one first). An arm's cost
        relative to another depends on the network, not only on the method: PGL's pre-training cost 1.3x GMIM's on
        hippocampus' 3d network and 1.8x on ACDC's 2d one (``levels=auto`` puts four loss levels there), and the
        hippocampus ratio made the driver start an ACDC pre-training that needed 74 minutes where it had estimated
        53; between configurations the :data:`EPOCH_COST` table (measured on ACDC's 2d network) is the better
        guess."""
        ratios: Dict[str, tuple] = {}
        config = DATASETS[key].configuration
        for other in (k for k in DATASETS if k != key and DATASETS[k].configuration == config):
            times = self._step_times(self.read(other))
            for source, _ in self.roots:
                mine = {n: m for s, n, m in times if s == source}
                if not mine.get(name):
                    continue
                for base, m in mine.items():
                    if m and base != name and base not in ratios:
                        ratios[base] = mine[name] / m, f"{name} / {base} as measured on {other}, {source}"
        return ratios

    def overhead_seconds(self, key: str, runs: Optional[Runs] = None) -> float:
        """Prediction and evaluation of the test split: the median over evaluated runs of the dataset."""
        for arms, _ in (self.read(key) if runs is None else runs).values():
            rest = [r["info"].get("seconds", {}) for r in arms if r["status"] == "evaluated"]
            m = _median([s.get("predict", 0.0) + s.get("evaluate", 0.0) for s in rest])
            if m is not None:
                return m
        return 0.0

    def estimate(self, key: str, arm: str, num_epochs: int, save_every: int, completed: int = 0,
                 pretrain: Optional[str] = None, pretrain_epochs: int = 0, pretrain_completed: int = 0,
                 pretrain_save_every: int = 5, runs: Optional[Runs] = None, iterations: int = NNUNET_ITERATIONS,
                 pretrain_iterations: int = NNUNET_ITERATIONS) -> Estimate:
        """Seconds a run still needs: ``completed`` epochs of it are logged, each of ``iterations`` training steps;
        ``pretrain``: the method whose pre-training has to run first (``pretrain_completed`` of its
        ``pretrain_epochs`` logged, ``pretrain_iterations`` steps each)."""
        runs = self.read(key) if runs is None else runs
        per_step, how = self.step_seconds(key, arm, runs)
        if per_step is None:
            return Estimate(None, how)
        per_epoch = per_step * iterations
        start = resume_epoch(completed, save_every)
        resumes_at = start if completed < num_epochs else 0
        left = num_epochs - start
        total = (left + _FINAL_VALIDATION_EPOCHS) * per_epoch + self.overhead_seconds(key, runs)
        parts = [f"{left} epochs x {per_epoch:.0f} s ({how})"]
        if pretrain:
            pre_step, pre_how = self.step_seconds(key, "pretrain:" + pretrain, runs)
            if pre_step is None:
                return Estimate(None, f"pre-training {pretrain}: {pre_how}")
            pre_epoch = pre_step * pretrain_iterations
            pre_resumes_at = resume_epoch(pretrain_completed, pretrain_save_every)
            pre_left = pretrain_epochs - pre_resumes_at
            pre_total = (pre_left + 1) * pre_epoch
            parts.append(f"pre-training {pretrain}: {pre_left} epochs x {pre_epoch:.0f} s ({pre_how})")
            return Estimate(total + pre_total, "; ".join(parts), pre_total, resumes_at, pre_resumes_at)
        return Estimate(total, "; ".join(parts), resumes_at=resumes_at)

    def estimate_run(self, key: str, arm: str, budget: int, seed: int, schedule: Dict[str, int],
                     pretrain: Optional[str] = None, pretrain_settings: str = "",
                     pretrain_schedule: Optional[Dict[str, int]] = None) -> Estimate:
        """:meth:`estimate` for a run of the driver: its progress and its pre-training's from the work directory;
        the pre-training counts unless the work directory finished it or the record holds its weights of
        ``pretrain_settings``. ``schedule``: ``num_epochs``, ``save_every`` and ``num_iterations_per_epoch``
        (nnU-Net's 1000, 50 and 250 if absent)."""
        num_epochs, save_every = schedule.get("num_epochs", 1000), schedule.get("save_every", 50)
        iterations = schedule.get("num_iterations_per_epoch", NNUNET_ITERATIONS)
        runs = self.read(key)
        here_runs, here_pres = runs.get(self.roots[0][0], ([], []))  # the work directory's
        completed = 0
        for r in here_runs:
            if (r["arm"], r["budget"], r["seed"]) == (arm, budget, seed):
                completed = num_epochs if r["status"] != "training" else len(r["curves"].get("train_loss", []))
        pre_args = {}
        if pretrain:
            pres = {p["method"]: p for p in here_pres}
            done = (pretrain in pres and pres[pretrain]["finished"]) or \
                recorded_weights(self.record, Path(key) / "pretrain" / pretrain, pretrain_settings,
                                 method_defaults(pretrain)) is not None
            if not done:
                pschedule = pretrain_schedule or {}
                pre_args = dict(pretrain=pretrain, pretrain_epochs=pschedule.get("num_epochs", 1000),
                                pretrain_save_every=pschedule.get("save_every", 5),
                                pretrain_iterations=pschedule.get("num_iterations_per_epoch", NNUNET_ITERATIONS),
                                pretrain_completed=len(pres[pretrain]["curves"].get("train_loss", []))
                                if pretrain in pres else 0)
        return self.estimate(key, arm, num_epochs, save_every, completed, runs=runs, iterations=iterations,
                             **pre_args)


def parse_deadline(text: str, now: Optional[float] = None) -> float:
    """``HH:MM`` (the next such local time, so 00:30 at 23:00 is tomorrow's), ``+MIN`` (minutes from now) or a
    Unix time in seconds -> Unix time. Raises ValueError on anything else."""
    now = time.time() if now is None else now
    text = text.strip()
    if text.startswith("+"):
        return now + 60.0 * float(text[1:])
    if ":" in text:
        hh, mm = (int(x) for x in text.split(":"))
        base = datetime.fromtimestamp(now)
        target = base.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if target.timestamp() <= now:
            target += timedelta(days=1)
        return target.timestamp()
    value = float(text)
    if value < 1e9:
        raise ValueError(text)
    return value
