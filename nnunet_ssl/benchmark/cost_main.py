"""Per-iteration wall time and peak memory of the nnunet_ssl trainers against stock ``nnUNetTrainer``.

``scripts/benchmark_cost.py`` calls :func:`main`; the options are in :mod:`.cost_args`.

What it measures
----------------
* Every trainer is built in THIS process the way nnU-Net's ``get_trainer_from_args`` does, with the same plans,
  patch and batch size (``--batch-size`` overrides the plans' batch size for all), and a few batches of its own
  dataloaders are prefetched, so only ``train_step(batch)`` is timed, never data loading (:mod:`.cost_trainers`).
* Interleaved: after ``--warmup`` steps per trainer, ``--rounds`` round-robin passes (start trainer rotated each
  round) of ``--steps-per-round`` timed steps per trainer. Reported: median seconds per step over all timed steps,
  and the ratio to ``nnUNetTrainer`` as the median over rounds of (trainer median / nnUNetTrainer median) in the
  same round (robust against load that drifts between rounds) (:mod:`.cost_report`).
* Time: CUDA events + ``torch.cuda.synchronize()`` on a GPU, ``time.perf_counter`` on CPU.
* Memory: ``state`` = weights, buffers, optimizer state, heads, teachers and clones the trainer keeps between steps
  (sum of the unique tensors it holds); ``step`` = the extra memory of one step (activations, gradients,
  temporaries): on a GPU ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the step; on
  CPU the peak increase of the process RSS (``/proc/self/statm`` sampled every ``--rss-interval-ms`` by a thread,
  after ``malloc_trim``) during ``--memory-steps`` separate, untimed steps per trainer and round: an estimate
  (:mod:`.cost_measure`).
* Two-view loader (PGL's): batches/s of ``TwoViewDataLoader`` in one process and inside nnU-Net's augmenter with
  ``nnUNet_n_proc_DA`` workers (``--loader-workers``), against PGL's consumption (1 / median PGL step time); plus
  a few PGL steps that draw from the multi-process augmenter (end to end). Prints "loader is / is not the
  bottleneck" (:mod:`.cost_loader`).

Data: :mod:`.cost_data`. Resumable: finished rounds are kept in ``<out>/cost_<tag>.state.json`` and an interrupted
run continues with the remaining rounds (after a new warm-up); ``--fresh`` starts over. Results: printed Markdown
table, ``<out>/cost_<tag>.json`` and ``<out>/cost_<tag>.md``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.cost_args import DEFAULT_TRAINERS, parse_args
from nnunet_ssl.benchmark.cost_data import prepare_data
from nnunet_ssl.benchmark.cost_loader import loader_benchmark
from nnunet_ssl.benchmark.cost_measure import memory_step, rss_bytes, state_bytes, timed_step
from nnunet_ssl.benchmark.cost_report import BASELINE, loader_verdict, render, summarize
from nnunet_ssl.benchmark.cost_trainers import Bench, build, finish_loader
from nnunet_ssl.errors import UserInputError


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


def select_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda but torch sees no GPU. Fix: --device cpu (or auto).")
    return device


def run_tag(args, plans: str, batch: int, device) -> str:
    """Name of the run's files; a subset of the trainers gets its own files (never mixed with the full run)."""
    tag = bc.safe_name(f"{plans}_{args.configuration}_b{batch}_{device.type}")
    if set(args.trainers) != set(DEFAULT_TRAINERS):
        tag += "_" + hashlib.md5(",".join(sorted(args.trainers)).encode()).hexdigest()[:6]
    return tag


def open_state(state_file: Path, signature: dict, tag: str, args) -> dict:
    """The finished rounds of an earlier run with the same settings (unless ``--fresh``), else a new state."""
    if state_file.is_file() and not args.fresh:
        state = bc.load_json(state_file)
        if state["signature"] != signature:
            diff = {k: (state["signature"].get(k), v) for k, v in signature.items() if state["signature"].get(k) != v}
            raise UserInputError(f"{state_file} comes from a run with other settings {diff}. Fix: run with --fresh "
                                 f"to discard it, or pass another --out.")
        bc.log(f"resuming: {len(state['rounds'])} of {args.rounds} rounds already measured ({state_file})")
        return state
    return {"signature": signature, "tag": tag, "rounds": [], "errors": {}, "state_bytes": {}, "datasets": {},
            "loader": None}


def record_state(state: dict, b: Bench) -> None:
    # after steps, so lazily made parts (the fish clone) count; gradients are part of the step, not the state
    b.trainer.optimizer.zero_grad(set_to_none=True)
    state["state_bytes"][b.name] = max(state_bytes(b.trainer), state["state_bytes"].get(b.name) or 0)


def build_and_warm_up(names: List[str], data: dict, args, device, state: dict, build_log: Path):
    """Build the trainers and run their warm-up steps; (benches, the later half of each one's warm-up times)."""
    benches: Dict[str, Bench] = {}
    warm_times: Dict[str, List[float]] = {}
    for n in names:
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
        record_state(state, b)
        bc.log(f"  {n}: built in {time.time() - t0:.1f} s on {b.dataset}; state "
               f"{state['state_bytes'][n] / 2 ** 20:.1f} MB; warm-up steps "
               f"{', '.join(f'{x:.2f}' for x in warm) or '-'} s")
    return benches, warm_times


def measure_trainer(b: Bench, args, device) -> tuple:
    """One trainer's share of a round: (step times, step memories, losses)."""
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
    return times, mems, losses


def run_rounds(benches: Dict[str, Bench], ok: List[str], warm_times: Dict[str, List[float]], args, device,
               state: dict, state_file: Path) -> None:
    """The remaining rounds, each saved to ``state_file`` when done."""
    rounds_left = args.rounds - len(state["rounds"])
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
            times, mems, losses = measure_trainer(b, args, device)
            rec["times"][n], rec["mem"][n], rec["losses"][n] = times, mems, losses
            record_state(state, b)
            bc.log(f"  round {r + 1}/{args.rounds} {n}: median {statistics.median(times):.3f} s/step"
                   + (f", step memory {max(m for m in mems if m is not None) / 2 ** 20:.1f} MB"
                      if any(m is not None for m in mems) else ""))
        state["rounds"].append(rec)
        bc.write_json(state, state_file)
        left = args.rounds - r - 1
        bc.log(f"round {r + 1}/{args.rounds} done in {bc.fmt_duration(time.time() - t_round)}"
               + (f"; about {bc.fmt_duration(left * (time.time() - t_round))} left for the rounds"
                  if left else ""))


def measure_loader(benches: Dict[str, Bench], args, device, state: dict, state_file: Path, user_n_proc) -> None:
    """The two-view loader measurement with the built PGL trainer (or why it was skipped), saved to the state."""
    stats = summarize(state) if state["rounds"] else {}
    pgl = benches.get("PGLTrainer")
    if pgl is None or pgl.error:
        state["loader_skipped"] = "skipped: PGLTrainer could not be built"
        return
    if "PGLTrainer" not in stats or "median_s" not in stats["PGLTrainer"]:
        state["loader_skipped"] = "skipped: PGLTrainer has no timed steps"
        return
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
    bc.write_json(state, state_file)


def write_results(state: dict, state_file: Path, data: dict, out: Path, tag: str) -> str:
    """The report (printed, ``cost_<tag>.md``) and the results (``cost_<tag>.json``); returns the report."""
    stats = summarize(state)
    verdict = loader_verdict(state.get("loader"), stats)
    text = render(state, stats, verdict)
    result = {"tag": tag, "config": state["config"], "environment": state["environment"],
              "plans_summary": state["plans_summary"], "data": {k: v for k, v in data.items() if k != "folders"},
              "trainers": stats, "loader": state.get("loader"), "loader_verdict": verdict,
              "raw_rounds": state["rounds"], "notes": state["notes"]}
    bc.write_json(result, out / f"cost_{tag}.json")
    (out / f"cost_{tag}.md").write_text(text + "\n")
    bc.write_json(state, state_file)
    print("\n" + text + "\n", flush=True)
    return text


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
    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    ps = bc.plans_summary(data["downstream"], data["plans"], args.configuration)
    batch = args.batch_size or ps["batch_size"]
    tag = run_tag(args, data["plans"], batch, device)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / f"cost_{tag}.state.json"
    signature = {"trainers": args.trainers, "steps_per_round": args.steps_per_round, "batch_size": batch,
                 "plans": data["plans"], "configuration": args.configuration, "device": device.type,
                 "num_cases": args.num_cases, "source": str(Path(args.source).resolve()),
                 "threads": torch.get_num_threads(), "memory_steps": args.memory_steps if device.type != "cuda" else 0}
    state = open_state(state_file, signature, tag, args)
    state["config"] = dict(signature, rounds=args.rounds, warmup=args.warmup, prefetch=args.prefetch,
                           rss_interval_ms=args.rss_interval_ms, batch_size=batch)
    state["environment"] = environment_info(device)
    state["plans_summary"] = ps
    state["notes"] = list(data["notes"])
    if device.type != "cuda" and rss_bytes() is None:
        state["notes"].append("/proc/self/statm is not readable here: CPU step memory was not measured")

    rounds_left = args.rounds - len(state["rounds"])
    need_loader = not args.skip_loader and not state.get("loader") and "PGLTrainer" in args.trainers
    if args.skip_loader:
        state["loader_skipped"] = "skipped (--skip-loader)"
    elif "PGLTrainer" not in args.trainers:
        state["loader_skipped"] = "skipped: the loader measurement needs PGLTrainer in --trainers"
    to_build = list(args.trainers) if rounds_left > 0 else (["PGLTrainer"] if need_loader else [])

    env = dict(nnUNet_n_proc_DA="0", NNUNET_SSL_SETTINGS=None, NNUNET_SSL_PRETRAINED=None,
               NNUNET_SSL_UNLABELED_DATASET=data["unlabeled"],
               NNUNET_SSL_REFERENCE_DATASET=data["reference"], nnUNet_compile="t" if args.compile else "f")
    build_log = Path(args.work_dir).resolve() / f"cost_build_{tag}.log"
    with bc.temporary_env(**env):
        if to_build:
            bc.log(f"building {len(to_build)} trainer(s) in this process on {device} (plans {data['plans']}, "
                   f"batch {batch}, patch {ps['patch_size']}); their console output goes to {build_log}")
        benches, warm_times = build_and_warm_up(to_build, data, args, device, state, build_log)
        if BASELINE in benches and benches[BASELINE].error:
            raise UserInputError(f"the reference trainer {BASELINE} could not be built: {benches[BASELINE].error} "
                                 f"(details in {build_log}).")
        ok = [n for n in args.trainers if n in benches and not benches[n].error]
        if rounds_left > 0 and ok:
            run_rounds(benches, ok, warm_times, args, device, state, state_file)
        elif rounds_left <= 0:
            bc.log("all rounds already measured")
        if need_loader:
            measure_loader(benches, args, device, state, state_file, user_n_proc)

    state["environment"]["loadavg_end"] = _loadavg()
    write_results(state, state_file, data, out, tag)
    bc.log(f"results: {out / f'cost_{tag}.md'} and {out / f'cost_{tag}.json'} "
           f"(total {bc.fmt_duration(time.time() - t_start)})")
    for b in benches.values():
        if b.trainer is not None:
            for attr in ("dataloader_train", "dataloader_val"):
                finish_loader(getattr(b.trainer, attr, None))
    return 0
