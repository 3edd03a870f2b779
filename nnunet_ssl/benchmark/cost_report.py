"""The cost benchmark's results: statistics over the measured rounds, the targets, the loader verdict, Markdown.

* :func:`summarize`: per trainer the median s/step (and quartiles), the ratio to ``nnUNetTrainer`` as the median
  over rounds of (trainer median / nnUNetTrainer median) in the same round (robust against load that drifts
  between rounds), state / step / peak memory, non-finite losses, and whether the issue's time target is met;
* :func:`loader_verdict`: is PGL's two-view loader the bottleneck (augmenter supply vs PGL's consumption)?
* :func:`render`: the Markdown report.
"""
from __future__ import annotations

import statistics
from typing import List, Optional

from nnunet_ssl.benchmark.cost_trainers import refs_base

BASELINE = "nnUNetTrainer"
# time-ratio targets of the issue (ratio to nnUNetTrainer); ReFs fish: its SSL objective's ratio + 1.2
FIXED_TARGETS = {"MAETrainer": 1.6, "GMIMTrainer": 1.6, "PGLTrainer": 2.8, "IDEALTrainer": 2.8}
REFS_FISH_MARGIN = 1.2


def _q(values: List[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


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
