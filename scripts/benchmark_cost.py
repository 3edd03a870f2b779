#!/usr/bin/env python
"""Per-iteration wall time and peak memory of the nnunet_ssl trainers against stock ``nnUNetTrainer``.

    python scripts/benchmark_cost.py                        # default plans, every trainer (a GPU is best)
    python scripts/benchmark_cost.py --tiny --batch-size 2  # CPU-sized network (features capped at 32)
    python scripts/benchmark_cost.py --help

What it measures
----------------
* Every trainer is built in THIS process the way nnU-Net's ``get_trainer_from_args`` does (plans dict with
  ``continue_training=False``, dataset.json, device), with the same plans, patch and batch size (``--batch-size``
  overrides the plans' batch size for all), then ``on_train_start()`` (initialize + its own dataloaders) and
  ``on_epoch_start()`` / ``on_train_epoch_start()`` like ``run_training``.
* A few batches of each trainer's own dataloaders are prefetched (also the ReFs reference batches and the unlabeled
  batches of ``IDEALSemiSupervisedTrainer``, which their ``train_step`` draws itself), so only ``train_step(batch)``
  is timed, never data loading.
* Interleaved: after ``--warmup`` steps per trainer, ``--rounds`` round-robin passes (start trainer rotated each
  round) of ``--steps-per-round`` timed steps per trainer. Reported: median seconds per step over all timed steps,
  and the ratio to ``nnUNetTrainer`` as the median over rounds of (trainer median / nnUNetTrainer median) in the
  same round (robust against load that drifts between rounds).
* Time: CUDA events + ``torch.cuda.synchronize()`` on a GPU, ``time.perf_counter`` on CPU.
* Memory: ``state`` = weights, buffers, optimizer state, heads, teachers and clones the trainer keeps between steps
  (sum of the unique tensors it holds); ``step`` = the extra memory of one step (activations, gradients,
  temporaries): on a GPU ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the step; on
  CPU the peak increase of the process RSS (``/proc/self/statm`` sampled every ``--rss-interval-ms`` by a thread,
  after ``malloc_trim``) during ``--memory-steps`` separate, untimed steps per trainer and round: an estimate.
* Two-view loader (PGL's): batches/s of ``TwoViewDataLoader`` in one process and inside nnU-Net's augmenter with
  ``nnUNet_n_proc_DA`` workers (``--loader-workers``), against PGL's consumption (1 / median PGL step time); plus
  a few PGL steps that draw from the multi-process augmenter (end to end). Prints "loader is / is not the
  bottleneck".

Data (in ``--work-dir``, re-used when present): a labeled downstream dataset of ``--num-cases`` cases of
``--source`` (default: the shared hippocampus data) planned with ``nnUNetv2_plan_and_preprocess``; ``--num-cases``
other cases ingested as unlabeled with the downstream plans (``ingest_unlabeled``; SSL trainers train on it); and
``--num-cases`` further labeled cases as the ReFs reference (``prepare_reference``). ``--tiny`` derives plans with
at most 32 features per stage (``derive_plans``) for all three.

Resumable: finished rounds are kept in ``<out>/cost_<tag>.state.json`` and an interrupted run continues with the
remaining rounds (after a new warm-up); ``--fresh`` starts over. Results: printed Markdown table,
``<out>/cost_<tag>.json`` and ``<out>/cost_<tag>.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import itertools
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nnunet_ssl.benchmark import common as bc  # noqa: E402

from nnunet_ssl.errors import UserInputError  # noqa: E402

DEFAULT_TRAINERS = ["nnUNetTrainer", "MAETrainer", "GMIMTrainer", "PGLTrainer", "IDEALTrainer", "ReFsTrainer",
                    "ReFsTrainer_cosine", "IDEALSemiSupervisedTrainer"]
BASELINE = "nnUNetTrainer"
# time-ratio targets of the issue (ratio to nnUNetTrainer); ReFs fish: its SSL objective's ratio + 1.2
FIXED_TARGETS = {"MAETrainer": 1.6, "GMIMTrainer": 1.6, "PGLTrainer": 2.8, "IDEALTrainer": 2.8}
REFS_FISH_MARGIN = 1.2
DEFAULT_OUT = bc.REPO_ROOT / "scripts" / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Per-iteration time and peak memory of every nnunet_ssl trainer vs stock nnUNetTrainer "
                    "(one process, interleaved rounds, medians after warm-up), plus the two-view loader's "
                    "throughput vs PGL's consumption.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--work-dir", default="./benchmark_work",
                   help="own nnU-Net folders (nnUNet_raw/_preprocessed/_results) for the benchmark datasets; "
                        "re-used when present")
    g.add_argument("--source", default=str(bc.DEFAULT_SOURCE), help="labeled nnU-Net raw dataset to take cases from")
    g.add_argument("--num-cases", type=int, default=20,
                   help="cases per dataset: downstream (labeled), unlabeled (other cases) and ReFs reference "
                        "(further cases); cases are re-used when the source has fewer than 3x this")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the case selection")
    g.add_argument("--dataset-id", type=int, default=950,
                   help="downstream dataset id; the unlabeled and reference datasets get the next two ids")
    g.add_argument("-c", "--configuration", default="3d_fullres")
    g.add_argument("-np", "--num-processes", type=int, default=2, help="processes for planning / preprocessing")
    g = p.add_argument_group("what is measured")
    g.add_argument("--plans", default="nnUNetPlans", help="plans identifier of the downstream dataset")
    g.add_argument("--tiny", action="store_true",
                   help="derive '<plans>Tiny' plans with at most 32 features per stage (derive_plans) and use them")
    g.add_argument("--max-features", type=int, default=32, help="feature cap of --tiny")
    g.add_argument("--batch-size", type=int, default=None, help="batch size for all trainers (default: the plans')")
    g.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS,
                   help="trainers to measure (nnUNetTrainer is always added: it is the reference)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    g.add_argument("--compile", action="store_true",
                   help="let nnU-Net torch.compile the networks on a GPU (default: nnUNet_compile=f for all)")
    g = p.add_argument_group("schedule")
    g.add_argument("--rounds", type=int, default=5, help="round-robin passes over the trainers")
    g.add_argument("--steps-per-round", type=int, default=5, help="timed steps per trainer and round")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer before the first round")
    g.add_argument("--prefetch", type=int, default=3, help="distinct batches prefetched per trainer (cycled)")
    g.add_argument("--memory-steps", type=int, default=1,
                   help="CPU only: extra untimed steps per trainer and round with the RSS sampler running")
    g.add_argument("--rss-interval-ms", type=float, default=1.0, help="CPU RSS sampling interval")
    g = p.add_argument_group("two-view loader")
    g.add_argument("--skip-loader", action="store_true", help="skip the loader throughput measurement")
    g.add_argument("--loader-workers", type=int, default=None,
                   help="workers of the augmenter (default: nnUNet_n_proc_DA, else nnU-Net's default for this "
                        "machine)")
    g.add_argument("--loader-batches", type=int, default=20, help="batches timed per loader measurement")
    g.add_argument("--e2e-steps", type=int, default=None,
                   help="PGL steps drawing from the multi-process augmenter (default: --steps-per-round; 0 = skip)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and Markdown results")
    g.add_argument("--fresh", action="store_true", help="discard finished rounds of an earlier run with this tag")
    args = p.parse_args(argv)
    for name in ("num_cases", "rounds", "steps_per_round", "prefetch", "loader_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("warmup", "memory_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    bc.check_dataset_id(args.dataset_id, "--dataset-id")
    bc.check_dataset_id(args.dataset_id + 2, "--dataset-id + 2")
    trainers = list(dict.fromkeys([BASELINE] + list(args.trainers)))
    args.trainers = trainers
    return args


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------

def prepare_data(args, need_reference: bool) -> dict:
    folders = bc.setup_nnunet_folders(args.work_dir)
    work = Path(args.work_dir).resolve()
    source = bc.SourceDataset(args.source)
    n = args.num_cases
    order = bc.seeded_shuffle(source.cases, args.split_seed)
    if len(order) < n:
        raise UserInputError(f"--num-cases {n} but {source.folder} has only {len(order)} labeled cases.")
    notes = []
    down = order[:n]
    if len(order) >= 2 * n:
        unl = order[n:2 * n]
    else:
        unl = down
        notes.append("the source has fewer than 2x --num-cases cases: the unlabeled dataset re-uses the downstream "
                     "images")
    if len(order) >= 3 * n:
        ref = order[2 * n:3 * n]
    else:
        ref = order[len(order) - n:]
        notes.append("the source has fewer than 3x --num-cases cases: the reference dataset overlaps the others")
    for note in notes:
        bc.log(f"note: {note}")
    did, sid, rid = args.dataset_id, args.dataset_id + 1, args.dataset_id + 2
    down_name = bc.ensure_labeled_raw_dataset(source, folders["nnUNet_raw"], did, "CostDownstream", down)
    bc.ensure_planned(did, down_name, args.configuration, n, args.num_processes,
                      log_file=str(work / "planning.log"))
    base = args.plans
    base_file = Path(folders["nnUNet_preprocessed"]) / down_name / f"{base}.json"
    if not base_file.is_file():
        raise UserInputError(
            f"{base_file} not found: only nnUNetPlans is made automatically. Fix: plan it yourself with the work "
            f"directory's folders (export nnUNet_raw={folders['nnUNet_raw']} nnUNet_preprocessed="
            f"{folders['nnUNet_preprocessed']}; nnUNetv2_plan_and_preprocess -d {did} -pl PLANNER -c "
            f"{args.configuration}) and run again.")
    images = str(work / "inputs" / "unlabeled_images")
    bc.ensure_image_folder(source, images, unl)
    ssl_name = bc.ensure_ingested(images, sid, "CostUnlabeled", down_name, base, args.configuration, len(unl),
                                  args.num_processes)
    ref_name = None
    if need_reference:
        ref_name = bc.ensure_labeled_raw_dataset(source, folders["nnUNet_raw"], rid, "CostReference", ref)
        bc.ensure_reference(ref_name, ssl_name, base, args.configuration, len(ref), args.num_processes)
    plans = base
    if args.tiny:
        plans = bc.tiny_plans_name(base)
        bc.ensure_derived_plans([d for d in (down_name, ssl_name, ref_name) if d], base, plans,
                                max_features=args.max_features, configuration=args.configuration)
        bc.log(f"derived plans {plans} (features capped at {args.max_features}) for the benchmark datasets")
    return {"downstream": down_name, "unlabeled": ssl_name, "reference": ref_name, "plans": plans,
            "folders": folders, "notes": notes, "num_cases": n}


# ----------------------------------------------------------------------------------------------------------------
# memory helpers
# ----------------------------------------------------------------------------------------------------------------

_LIBC = None


def malloc_trim():
    """Return freed heap memory to the OS (glibc), so an RSS increase reflects new allocations."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RSSSampler:
    """Peak RSS increase over the block, sampled by a background thread."""

    def __init__(self, interval_s: float):
        self.interval = max(1e-4, interval_s)
        self.base = self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def _loop(self):
        while not self._stop.is_set():
            v = _rss_bytes()
            if v is not None and v > self.peak:
                self.peak = v
            time.sleep(self.interval)

    def __enter__(self):
        self.base = _rss_bytes()
        if self.base is None:
            return self
        self.peak = self.base
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            v = _rss_bytes()
            if v is not None:
                self.peak = max(self.peak, v)
        return False

    @property
    def increase(self) -> Optional[int]:
        return None if self.base is None else self.peak - self.base


def state_bytes(trainer) -> int:
    """Unique tensor storage held by the trainer between steps: network, heads/teachers (ssl_modules), optimizer
    state, and nn.Modules in its attributes or one level below (e.g. the ReFs fish matcher's cached clone)."""
    import torch
    from torch import nn
    seen = set()
    total = 0

    def add_tensor(t):
        nonlocal total
        if not isinstance(t, torch.Tensor):
            return
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.device.type)
            size = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(t), t.numel() * t.element_size()
        if key in seen or key[0] == 0:
            return
        seen.add(key)
        total += size
        if t.grad is not None:
            add_tensor(t.grad)

    def add_module(m):
        for t in itertools.chain(m.parameters(), m.buffers()):
            add_tensor(t)

    def visit(obj, depth):
        if isinstance(obj, nn.Module):
            add_module(obj)
        elif isinstance(obj, torch.Tensor):
            add_tensor(obj)
        elif isinstance(obj, dict) and depth > 0:
            for v in obj.values():
                visit(v, depth - 1)
        elif isinstance(obj, (list, tuple)) and depth > 0 and len(obj) < 1000:
            for v in obj:
                visit(v, depth - 1)
        elif hasattr(obj, "__dict__") and depth > 0 and not isinstance(obj, type):
            mod = type(obj).__module__ or ""
            if mod.startswith(("nnunet_ssl", "torch.optim")):
                for v in vars(obj).values():
                    visit(v, depth - 1)

    for v in vars(trainer).values():
        if v is trainer.dataloader_train or v is trainer.dataloader_val:
            continue
        visit(v, 2)
    opt = getattr(trainer, "optimizer", None)
    if opt is not None:
        for st in opt.state.values():
            for v in st.values():
                add_tensor(v)
    return total


def batch_bytes(batch) -> int:
    import torch
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, dict):
        return sum(batch_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(batch_bytes(v) for v in batch)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# trainers
# ----------------------------------------------------------------------------------------------------------------

def trainer_class(name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    if name == "nnUNetTrainer":
        return nnUNetTrainer
    import nnunet_ssl_trainers.index as index
    cls = getattr(index, name, None)
    if cls is None:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        cls = recursive_find_trainer_class_by_name(name)
    if cls is None:
        raise UserInputError(f"trainer '{name}' not found (neither in nnunet_ssl_trainers.index nor by nnU-Net).")
    return cls


def dataset_for(cls, data: dict) -> str:
    from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer
    return data["unlabeled"] if issubclass(cls, nnUNetSSLTrainer) else data["downstream"]


class Bench:
    """One built trainer with its prefetched batches."""

    def __init__(self, name: str):
        self.name = name
        self.trainer = None
        self.dataset = None
        self.batches: List[dict] = []
        self.error: Optional[str] = None
        self.state_bytes: Optional[int] = None
        self.batch_bytes = 0
        self._i = 0

    def next_batch(self):
        b = self.batches[self._i % len(self.batches)]
        self._i += 1
        return b


def _finish(loader):
    fin = getattr(loader, "_finish", None)
    if fin is not None:
        try:
            fin()
        except Exception:
            pass


def build(name: str, data: dict, args, device, log_path: Path) -> Bench:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    b = Bench(name)
    buf = io.StringIO()
    try:
        cls = trainer_class(name)
        b.dataset = dataset_for(cls, data)
        pre = Path(os.environ["nnUNet_preprocessed"]) / b.dataset
        plans = load_json(str(pre / f"{data['plans']}.json"))
        plans["continue_training"] = False
        if args.batch_size is not None:
            plans["configurations"][args.configuration]["batch_size"] = int(args.batch_size)
        dataset_json = load_json(str(pre / "dataset.json"))
        with contextlib.redirect_stdout(buf):
            t = cls(plans=plans, configuration=args.configuration, fold="all", dataset_json=dataset_json,
                    device=device)
            t.on_train_start()
            t.on_epoch_start()
            t.on_train_epoch_start()
        b.trainer = t
        b.batches = [next(t.dataloader_train) for _ in range(args.prefetch)]
        b.batch_bytes = sum(batch_bytes(x) for x in b.batches)
        for attr in ("dataloader_ref", "dataloader_unlabeled"):
            dl = getattr(t, attr, None)
            if dl is not None:
                extra = [next(dl) for _ in range(args.prefetch)]
                b.batch_bytes += sum(batch_bytes(x) for x in extra)
                _finish(dl)
                setattr(t, attr, itertools.cycle(extra))
        if device.type == "cuda":
            torch.cuda.synchronize()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit from exit_on_user_error included: report, go on with the others
        tail = "\n".join(buf.getvalue().strip().splitlines()[-8:])
        b.error = f"{type(e).__name__}: {e}".strip()
        with open(log_path, "a") as f:
            f.write(f"\n===== {name}: build FAILED\n{buf.getvalue()}\n{traceback.format_exc()}\n")
        bc.log(f"  {name}: could not be built ({b.error}); see {log_path}" + (f"\n{tail}" if tail else ""))
        return b
    with open(log_path, "a") as f:
        f.write(f"\n===== {name}\n{buf.getvalue()}\n")
    return b


def _loss_value(out) -> float:
    try:
        return float(out.get("loss"))
    except (TypeError, ValueError, AttributeError):
        return float("nan")


def timed_step(b: Bench, device) -> tuple:
    """(seconds, step memory bytes or None on CPU, loss)"""
    import torch
    batch = b.next_batch()
    if device.type == "cuda":
        b.trainer.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = b.trainer.train_step(batch)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0, torch.cuda.max_memory_allocated() - before, _loss_value(out)
    t0 = time.perf_counter()
    out = b.trainer.train_step(batch)
    return time.perf_counter() - t0, None, _loss_value(out)


def memory_step(b: Bench, interval_s: float) -> Optional[int]:
    import gc
    b.trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    malloc_trim()
    with RSSSampler(interval_s) as s:
        b.trainer.train_step(b.next_batch())
    return s.increase


# ----------------------------------------------------------------------------------------------------------------
# loader
# ----------------------------------------------------------------------------------------------------------------

def loader_benchmark(pgl: Bench, workers: int, n_batches: int, e2e_steps: int, device) -> dict:
    import torch
    from nnunet_ssl.data.two_view_loader import make_two_view_augmenter
    t = pgl.trainer
    dataset_tr, _ = t.get_tr_and_val_datasets()
    res = {"workers": workers, "batches": n_batches, "batch_size": t.batch_size,
           "patch_size": list(t.configuration_manager.patch_size)}
    loader = t.make_two_view_loader(dataset_tr, True)
    loader.generate_train_batch()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        loader.generate_train_batch()
    res["single_process_batches_per_s"] = n_batches / (time.perf_counter() - t0)
    bc.log(f"  two-view loader, single process: {res['single_process_batches_per_s']:.2f} batches/s")
    aug = make_two_view_augmenter(t.make_two_view_loader(dataset_tr, True), workers, device.type == "cuda")
    try:
        t0 = time.perf_counter()
        next(aug)
        res["startup_s"] = time.perf_counter() - t0
        cached = getattr(aug, "num_cached", 0) if workers > 0 else 0
        for _ in range(cached):  # drain what was prepared while we waited: measure the steady state
            next(aug)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(aug)
        res["augmenter_batches_per_s"] = n_batches / (time.perf_counter() - t0)
        bc.log(f"  two-view loader in nnU-Net's augmenter, {workers} worker(s): "
               f"{res['augmenter_batches_per_s']:.2f} batches/s")
        if e2e_steps > 0:
            times = []
            for _ in range(e2e_steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                t.train_step(next(aug))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            res["e2e_step_s"] = statistics.median(times)
            res["e2e_steps"] = e2e_steps
            bc.log(f"  PGL steps drawing from the augmenter: median {res['e2e_step_s']:.3f} s/step")
    finally:
        _finish(aug)
    return res


# ----------------------------------------------------------------------------------------------------------------
# statistics and report
# ----------------------------------------------------------------------------------------------------------------

def _q(values: List[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def refs_base(name: str) -> Optional[str]:
    """The SSL trainer whose objective a ReFs fish trainer uses (None for non-ReFs, cosine or no-matching variants)."""
    if not name.startswith("ReFsTrainer") or name.endswith(("_cosine", "_noMatching")):
        return None
    try:
        cls = trainer_class(name)
    except Exception:
        return None
    for base in cls.__mro__[1:]:
        if base.__name__ in ("MAETrainer", "GMIMTrainer", "PGLTrainer", "IDEALTrainer"):
            return base.__name__
    return None


def summarize(state: dict) -> dict:
    names = state["config"]["trainers"]
    rounds = state["rounds"]
    stats = {}
    base_med = [statistics.median(r["times"][BASELINE]) for r in rounds if r["times"].get(BASELINE)]
    for n in names:
        times = [x for r in rounds for x in r["times"].get(n, [])]
        if not times:
            stats[n] = {"error": state["errors"].get(n, "not measured")}
            continue
        per_round = [statistics.median(r["times"][n]) / statistics.median(r["times"][BASELINE])
                     for r in rounds if r["times"].get(n) and r["times"].get(BASELINE)]
        mem_step = [x for r in rounds for x in r["mem"].get(n, []) if x is not None]
        losses = [x for r in rounds for x in r.get("losses", {}).get(n, [])]
        s = {"median_s": statistics.median(times), "q25_s": _q(times, 0.25), "q75_s": _q(times, 0.75),
             "n_steps": len(times), "rounds": len(per_round),
             "ratio": statistics.median(per_round) if per_round else float("nan"),
             "ratio_min": min(per_round) if per_round else float("nan"),
             "ratio_max": max(per_round) if per_round else float("nan"),
             "ratio_of_medians": statistics.median(times) / statistics.median(
                 [x for r in rounds for x in r["times"].get(BASELINE, [])]) if base_med else float("nan"),
             "state_mb": (state["state_bytes"].get(n) or 0) / 2 ** 20,
             "step_mb": statistics.median(mem_step) / 2 ** 20 if mem_step else None,
             "nonfinite_losses": sum(1 for x in losses if x != x or x in (float("inf"), float("-inf"))),
             "dataset": state["datasets"].get(n)}
        s["peak_mb"] = s["state_mb"] + s["step_mb"] if s["step_mb"] is not None else None
        stats[n] = s
    base_peak = stats.get(BASELINE, {}).get("peak_mb")
    for n, s in stats.items():
        if "error" in s:
            continue
        s["mem_ratio"] = s["peak_mb"] / base_peak if s.get("peak_mb") and base_peak else None
        target, check = None, None
        if n in FIXED_TARGETS:
            target = f"<= {FIXED_TARGETS[n]:.1f}x"
            check = s["ratio"] <= FIXED_TARGETS[n]
        else:
            base = refs_base(n)
            if base is not None:
                if base in stats and "ratio" in stats[base]:
                    limit = stats[base]["ratio"] + REFS_FISH_MARGIN
                    target = f"<= {base} + {REFS_FISH_MARGIN} = {limit:.2f}x"
                    check = s["ratio"] <= limit
                else:
                    target = f"<= {base} + {REFS_FISH_MARGIN} ({base} not measured)"
        s["target"], s["meets_target"] = target, check
    return stats


def loader_verdict(loader: Optional[dict], stats: dict) -> Optional[dict]:
    if not loader or "PGLTrainer" not in stats or "median_s" not in stats["PGLTrainer"]:
        return None
    consume = 1.0 / stats["PGLTrainer"]["median_s"]
    supply = loader.get("augmenter_batches_per_s", float("nan"))
    v = {"pgl_steps_per_s": consume, "supply_batches_per_s": supply, "margin": supply / consume,
         "bottleneck": bool(supply < consume)}
    if "e2e_step_s" in loader:
        v["e2e_slowdown"] = loader["e2e_step_s"] / stats["PGLTrainer"]["median_s"]
    return v


def _f(x, fmt="{:.2f}", none="-"):
    if x is None or (isinstance(x, float) and x != x):
        return none
    return fmt.format(x)


def render(state: dict, stats: dict, verdict: Optional[dict]) -> str:
    cfg, env = state["config"], state["environment"]
    gpu = cfg["device"] == "cuda"
    mem_how = ("GPU: torch.cuda.max_memory_allocated() during the timed steps minus memory_allocated() before "
               "each step (gradients cleared first)" if gpu else
               f"CPU estimate: peak increase of the process RSS (/proc/self/statm sampled every "
               f"{cfg['rss_interval_ms']} ms by a thread, after malloc_trim, gradients cleared first) over "
               f"{cfg['memory_steps']} separate untimed step(s) per trainer and round")
    time_how = "CUDA events + torch.cuda.synchronize()" if gpu else "wall clock (time.perf_counter)"
    ps = state["plans_summary"]
    lines = [
        f"# nnunet_ssl trainer cost ({state['tag']})", "",
        f"- {env['date']} on {env['host']} ({env['platform']}); torch {env['torch']}, nnunetv2 {env['nnunetv2']}; "
        f"device {cfg['device']}{' (' + env['gpu'] + ')' if gpu else ''}; torch threads {env['threads']}; "
        f"load average at start {env['loadavg_start']}, at end {env.get('loadavg_end', '-')}",
        f"- plans {ps['plans']} ({ps['network']}, features {ps['features_per_stage']}), patch {ps['patch_size']}, "
        f"batch {cfg['batch_size']}, configuration {ps['configuration']}; SSL trainers on the unlabeled dataset, "
        f"nnUNetTrainer and IDEALSemiSupervisedTrainer on the labeled downstream dataset (same plans), fold all",
        f"- one process, {len(state['rounds'])} interleaved rounds x {cfg['steps_per_round']} timed steps per "
        f"trainer after {cfg['warmup']} warm-up steps, batches prefetched (data loading excluded); time: "
        f"{time_how}; ratio = median over rounds of (trainer median / nnUNetTrainer median in the same round)",
        f"- memory: {mem_how}; state = tensors the trainer keeps between steps (weights, optimizer state, heads, "
        f"teachers, clones); peak = state + step", "",
        "| trainer | s/iter (median) | IQR | ratio to nnUNetTrainer (min-max over rounds) | target | met | "
        "state MB | step MB | peak MB | peak ratio |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for n in cfg["trainers"]:
        s = stats[n]
        if "error" in s:
            lines.append(f"| {n} | failed: {s['error'][:120]} | | | | | | | | |")
            continue
        met = {True: "yes", False: "**NO**", None: "-"}[s["meets_target"]]
        nf = f" ({s['nonfinite_losses']} non-finite losses)" if s["nonfinite_losses"] else ""
        lines.append(
            f"| {n}{nf} | {s['median_s']:.3f} | {s['q25_s']:.3f}-{s['q75_s']:.3f} | {s['ratio']:.2f}x "
            f"({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | {s['target'] or '-'} | {met} | {s['state_mb']:.1f} | "
            f"{_f(s['step_mb'], '{:.1f}')} | {_f(s['peak_mb'], '{:.1f}')} | {_f(s['mem_ratio'], '{:.2f}x')} |")
    lines += ["", "Targets (issue): GMIM/MAE <= 1.6x, PGL and IDEAL <= 2.8x, ReFs (fish) <= its SSL objective's "
              "ratio + 1.2 (ReFsTrainer uses MAE), the two-view loader never the bottleneck. "
              "ReFsTrainer_cosine and IDEALSemiSupervisedTrainer have no target in the issue."]
    loader = state.get("loader")
    lines += ["", "## Two-view loader (PGL) vs PGL consumption", ""]
    if not loader:
        lines.append(state.get("loader_skipped", "not measured"))
    else:
        lines += [
            f"- batch {loader['batch_size']}, patch {loader['patch_size']}, {loader['batches']} batches per "
            f"measurement",
            f"- TwoViewDataLoader, single process: {loader['single_process_batches_per_s']:.2f} batches/s",
            f"- inside nnU-Net's augmenter with {loader['workers']} worker(s) (nnUNet_n_proc_DA"
            f"{'; 0 = single-threaded augmenter' if loader['workers'] == 0 else ''}): "
            f"{_f(loader.get('augmenter_batches_per_s'))} batches/s (startup {_f(loader.get('startup_s'))} s)"]
        if verdict:
            lines.append(f"- PGL consumes {verdict['pgl_steps_per_s']:.2f} steps/s (1 / median PGL step with "
                         f"prefetched batches)")
            if "e2e_slowdown" in verdict:
                lines.append(f"- PGL steps drawing from the augmenter: median {loader['e2e_step_s']:.3f} s/step = "
                             f"{verdict['e2e_slowdown']:.2f}x the prefetched step"
                             + (" (on CPU the workers share the cores with training)" if not gpu else ""))
            word = "IS" if verdict["bottleneck"] else "is not"
            lines += ["", f"**loader {word} the bottleneck** (supply {verdict['supply_batches_per_s']:.2f} "
                          f"batches/s vs consumption {verdict['pgl_steps_per_s']:.2f} steps/s, "
                          f"margin {verdict['margin']:.2f}x)"]
    if state.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in state["notes"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def environment_info(device) -> dict:
    import torch
    try:
        from importlib.metadata import version
        nnv = version("nnunetv2")
    except Exception:
        nnv = "?"
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "nnunetv2": nnv,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "loadavg_start": _loadavg()}


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    # the user's DA worker count, for the loader measurement (trainers are built with 0 workers: batches are
    # prefetched and timing excludes loading)
    user_n_proc = os.environ.get("nnUNet_n_proc_DA")
    need_ref = any(n.startswith("ReFs") for n in args.trainers)
    bc.log(f"benchmark_cost: trainers {', '.join(args.trainers)}")
    data = prepare_data(args, need_ref)

    import torch
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserInputError("--device cuda but torch sees no GPU. Fix: --device cpu (or auto).")
    if args.threads:
        torch.set_num_threads(args.threads)

    ps = bc.plans_summary(data["downstream"], data["plans"], args.configuration)
    batch = args.batch_size or ps["batch_size"]
    tag = bc.safe_name(f"{data['plans']}_{args.configuration}_b{batch}_{device.type}")
    if set(args.trainers) != set(DEFAULT_TRAINERS):  # a subset gets its own files (never mixed with the full run)
        import hashlib
        tag += "_" + hashlib.md5(",".join(sorted(args.trainers)).encode()).hexdigest()[:6]
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / f"cost_{tag}.state.json"
    signature = {"trainers": args.trainers, "steps_per_round": args.steps_per_round, "batch_size": batch,
                 "plans": data["plans"], "configuration": args.configuration, "device": device.type,
                 "num_cases": args.num_cases, "source": str(Path(args.source).resolve()),
                 "threads": torch.get_num_threads(), "memory_steps": args.memory_steps if device.type != "cuda" else 0}
    state = None
    if state_file.is_file() and not args.fresh:
        state = bc.load_json(state_file)
        if state["signature"] != signature:
            diff = {k: (state["signature"].get(k), v) for k, v in signature.items() if state["signature"].get(k) != v}
            raise UserInputError(f"{state_file} comes from a run with other settings {diff}. Fix: run with --fresh "
                                 f"to discard it, or pass another --out.")
        bc.log(f"resuming: {len(state['rounds'])} of {args.rounds} rounds already measured ({state_file})")
    if state is None:
        state = {"signature": signature, "tag": tag, "rounds": [], "errors": {}, "state_bytes": {}, "datasets": {},
                 "loader": None}
    state["config"] = dict(signature, rounds=args.rounds, warmup=args.warmup, prefetch=args.prefetch,
                           rss_interval_ms=args.rss_interval_ms, batch_size=batch)
    state["environment"] = environment_info(device)
    state["plans_summary"] = ps
    state["notes"] = list(data["notes"])
    if device.type != "cuda" and _rss_bytes() is None:
        state["notes"].append("/proc/self/statm is not readable here: CPU step memory was not measured")

    def save_state():
        bc.write_json(state, state_file)

    rounds_left = args.rounds - len(state["rounds"])
    need_loader = not args.skip_loader and not state.get("loader") and "PGLTrainer" in args.trainers
    if args.skip_loader:
        state["loader_skipped"] = "skipped (--skip-loader)"
    elif "PGLTrainer" not in args.trainers:
        state["loader_skipped"] = "skipped: the loader measurement needs PGLTrainer in --trainers"
    to_build = list(args.trainers) if rounds_left > 0 else (["PGLTrainer"] if need_loader else [])

    benches: Dict[str, Bench] = {}

    def record_state(b: Bench):
        # after steps, so lazily made parts (the fish clone) count; gradients are part of the step, not the state
        b.trainer.optimizer.zero_grad(set_to_none=True)
        state["state_bytes"][b.name] = max(state_bytes(b.trainer), state["state_bytes"].get(b.name) or 0)
    warm_times: Dict[str, List[float]] = {}
    env = dict(nnUNet_n_proc_DA="0", NNUNET_SSL_SETTINGS=None, NNUNET_SSL_PRETRAINED=None,
               NNUNET_SSL_UNLABELED_DATASET=data["unlabeled"],
               NNUNET_SSL_REFERENCE_DATASET=data["reference"], nnUNet_compile="t" if args.compile else "f")
    build_log = Path(args.work_dir).resolve() / f"cost_build_{tag}.log"
    with bc.temporary_env(**env):
        if to_build:
            bc.log(f"building {len(to_build)} trainer(s) in this process on {device} (plans {data['plans']}, "
                   f"batch {batch}, patch {ps['patch_size']}); their console output goes to {build_log}")
        for n in to_build:
            t0 = time.time()
            b = build(n, data, args, device, build_log)
            benches[n] = b
            state["datasets"][n] = b.dataset
            if b.error:
                state["errors"][n] = b.error
                continue
            state["errors"].pop(n, None)
            warm = []
            for _ in range(args.warmup):
                warm.append(timed_step(b, device)[0])
            if warm:
                warm_times[n] = warm[len(warm) // 2:]  # the first steps are slower
            record_state(b)
            bc.log(f"  {n}: built in {time.time() - t0:.1f} s on {b.dataset}; state "
                   f"{state['state_bytes'][n] / 2 ** 20:.1f} MB; warm-up steps "
                   f"{', '.join(f'{x:.2f}' for x in warm) or '-'} s")
        if BASELINE in benches and benches[BASELINE].error:
            raise UserInputError(f"the reference trainer {BASELINE} could not be built: {benches[BASELINE].error} "
                                 f"(details in {build_log}).")
        ok = [n for n in args.trainers if n in benches and not benches[n].error]
        if rounds_left > 0 and ok:
            if warm_times:
                per_round = sum(statistics.median(v) * (args.steps_per_round + (
                    args.memory_steps if device.type != "cuda" else 0)) for v in warm_times.values())
                bc.log(f"expected time for {rounds_left} round(s): about {bc.fmt_duration(per_round * rounds_left)} "
                       f"(from the warm-up steps)")
            for r in range(len(state["rounds"]), args.rounds):
                k = r % len(ok)
                order = ok[k:] + ok[:k]
                rec = {"round": r, "order": order, "times": {}, "mem": {}, "losses": {}}
                t_round = time.time()
                for n in order:
                    b = benches[n]
                    times, mems, losses = [], [], []
                    for _ in range(args.steps_per_round):
                        dt, mem, loss = timed_step(b, device)
                        times.append(dt)
                        losses.append(loss)
                        if mem is not None:
                            mems.append(mem)
                    if device.type != "cuda":
                        for _ in range(args.memory_steps):
                            mems.append(memory_step(b, args.rss_interval_ms / 1000.0))
                    rec["times"][n], rec["mem"][n], rec["losses"][n] = times, mems, losses
                    record_state(b)
                    bc.log(f"  round {r + 1}/{args.rounds} {n}: median {statistics.median(times):.3f} s/step"
                           + (f", step memory {max(m for m in mems if m is not None) / 2 ** 20:.1f} MB"
                              if any(m is not None for m in mems) else ""))
                state["rounds"].append(rec)
                save_state()
                left = args.rounds - r - 1
                bc.log(f"round {r + 1}/{args.rounds} done in {bc.fmt_duration(time.time() - t_round)}"
                       + (f"; about {bc.fmt_duration(left * (time.time() - t_round))} left for the rounds"
                          if left else ""))
        elif rounds_left <= 0:
            bc.log("all rounds already measured")

        stats = summarize(state) if state["rounds"] else {}
        if need_loader:
            pgl = benches.get("PGLTrainer")
            if pgl is None or pgl.error:
                state["loader_skipped"] = "skipped: PGLTrainer could not be built"
            elif "PGLTrainer" not in stats or "median_s" not in stats["PGLTrainer"]:
                state["loader_skipped"] = "skipped: PGLTrainer has no timed steps"
            else:
                if args.loader_workers is not None:
                    workers = args.loader_workers
                else:
                    with bc.temporary_env(nnUNet_n_proc_DA=user_n_proc):
                        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
                        workers = get_allowed_n_proc_DA()
                e2e = args.steps_per_round if args.e2e_steps is None else args.e2e_steps
                bc.log(f"two-view loader throughput ({workers} augmenter worker(s), {args.loader_batches} batches; "
                       f"{e2e} end-to-end PGL steps)")
                state["loader"] = loader_benchmark(pgl, workers, args.loader_batches, e2e, device)
                state.pop("loader_skipped", None)
                save_state()

    state["environment"]["loadavg_end"] = _loadavg()
    stats = summarize(state)
    verdict = loader_verdict(state.get("loader"), stats)
    text = render(state, stats, verdict)
    result = {"tag": tag, "config": state["config"], "environment": state["environment"],
              "plans_summary": ps, "data": {k: v for k, v in data.items() if k != "folders"},
              "trainers": stats, "loader": state.get("loader"), "loader_verdict": verdict,
              "raw_rounds": state["rounds"], "notes": state["notes"]}
    bc.write_json(result, out / f"cost_{tag}.json")
    (out / f"cost_{tag}.md").write_text(text + "\n")
    save_state()
    print("\n" + text + "\n", flush=True)
    bc.log(f"results: {out / f'cost_{tag}.md'} and {out / f'cost_{tag}.json'} "
           f"(total {bc.fmt_duration(time.time() - t_start)})")
    for b in benches.values():
        if b.trainer is not None:
            for attr in ("dataloader_train", "dataloader_val"):
                _finish(getattr(b.trainer, attr, None))
    return 0


if __name__ == "__main__":
    bc.run_main(main)
