"""The low-label benchmark's report, built from whatever has finished in a work directory and in the record
(:mod:`nnunet_ssl.benchmark.record`: the committed copy of finished runs, which outlives the machine).

Reads, per dataset: every evaluated run (``arms/<arm>/b<budget>_s<seed>/summary.json`` and
``run.json``), nnU-Net's training logs of every fine-tuning (pseudo Dice per epoch; runs still training too) and of
every pre-training (SSL train / validation loss per epoch), and writes to the output folder::

    low_label_<profile>.md                    tables: headline, route checks, Dice, paired vs scratch, convergence,
                                              pre-training, cost, commands
    low_label_<profile>_per_case.csv          one row per dataset x arm x budget x seed x test case x class
    low_label_<profile>_<dataset>_dice.png    Dice vs labels, each arm a line (mean over seeds), seeds as points
    low_label_<profile>_<dataset>_convergence.png   scratch's EMA pseudo Dice per epoch, per budget and seed
    low_label_<profile>_<dataset>_pretraining.png   SSL train / validation loss per epoch, per method

Statistics and their conventions: :mod:`nnunet_ssl.benchmark.stats`.
"""
from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark import record as rec
from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.arms import ARMS, SCRATCH_ARMS, headline_pretrained_arms
from nnunet_ssl.benchmark.datasets import DATASETS, dataset_labels
from nnunet_ssl.benchmark.length_checks import length_check_lines
from nnunet_ssl.benchmark.route_checks import route_check_lines
from nnunet_ssl.benchmark.run_logs import _json, _order, read_pretrainings, read_runs

DEFAULT_OUT = bc.REPO_ROOT / "docs" / "benchmarks"


# ----------------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------------

def _f(x, nd=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


_pts = st.fmt_points


def _diff_ci(r: dict) -> str:
    """A paired row's mean difference with its 95 % interval, in Dice points: "+5.3 [+3.7, +6.9]"."""
    return f"{_pts(r['mean_diff'])} [{_pts(r['ci_low'])}, {_pts(r['ci_high'])}]"


def _table(header: List[str], rows: List[List]) -> List[str]:
    """A Markdown table (a note instead when there are no rows)."""
    if not rows:
        return ["(nothing finished yet)"]
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
            ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def dice_table(agg: Dict[tuple, dict], key: str, names: Dict[int, str], word: str) -> List[str]:
    labels = sorted(names)
    rows = []
    for (ds, arm, budget), a in sorted(agg.items(), key=lambda kv: (kv[0][2], _order(kv[0][1]))):
        if ds == key:
            rows.append([budget, arm] + [_f(a["mean"][k]) + (f" ± {_f(a['sd'][k])}" if a["sd"][k] is not None else "")
                                         for k in labels + [st.FG]] + [len(a["seeds"])])
    return _table([f"budget ({word}s)", "arm"] + [names[lb] for lb in labels] + ["foreground mean", "seeds"], rows)


def paired_table(paired: List[dict], key: str, names: Dict[int, str]) -> List[str]:
    mine = [r for r in paired if r["dataset"] == key]
    per_class = {(r["arm"], r["budget"], r["cls"]): r for r in mine}
    rows = []
    for r in sorted((r for r in mine if r["cls"] == st.FG), key=lambda r: (r["budget"], _order(r["arm"]))):
        cls = ", ".join(f"{names[lb]} {_pts(per_class[(r['arm'], r['budget'], lb)]['mean_diff'])}"
                        for lb in sorted(names) if (r["arm"], r["budget"], lb) in per_class)
        rows.append([r["budget"], r["arm"], f"{r['n_pairs']} ({r['n_seeds']} x {r['n_cases']})",
                     _diff_ci(r), st.fmt_p(r["p"]),
                     f"{r['better']} / {r['n_pairs']}", cls])
    return _table(["budget", "arm", "pairs (seeds x cases)", "mean difference, Dice points [95 % CI]",
                   "Wilcoxon p", "better / pairs", "per class"], rows)


def per_seed_table(per_seed: List[dict], key: str) -> List[str]:
    """One row per budget and arm, one column per seed: the arm's foreground mean against scratch's on the same
    label subset and test cases, the difference in Dice points, Wilcoxon p and cases better."""
    mine = [r for r in per_seed if r["dataset"] == key]
    seeds = sorted({r["seed"] for r in mine})
    cells = {(r["budget"], r["arm"], r["seed"]): r for r in mine}
    rows = []
    for budget, arm in sorted({(r["budget"], r["arm"]) for r in mine}, key=lambda ba: (ba[0], _order(ba[1]))):
        row = [budget, arm]
        for s in seeds:
            r = cells.get((budget, arm, s))
            row.append("-" if r is None else
                       f"{_f(r['arm_mean'])} vs {_f(r['reference_mean'])}: {_pts(r['mean_diff'])}, "
                       f"p {st.fmt_p(r['p'])}, {r['better']}/{r['n_pairs']}")
        rows.append(row)
    return _table(["budget", "arm"] + [f"seed {s}" for s in seeds], rows)


def convergence_table(runs: List[dict]) -> List[str]:
    rows = []
    for r in sorted(runs, key=lambda r: (r["budget"], _order(r["arm"]), r["seed"])):
        dice = r["curves"].get("pseudo_dice", [])
        plateau = st.dice_plateau(dice)
        rise, flat = st.dice_converged(dice)
        rows.append([r["budget"], r["arm"], r["seed"], r["status"], len(dice), _f(dice[-1] if dice else None),
                     _f(st.ema(dice)[-1] if dice else None),
                     f"{plateau[0]:.3f} -> {plateau[1]:.3f}" if plateau else "-",
                     "-" if rise is None else f"{rise:+.3f}",
                     "(running)" if r["status"] == "training" else "yes" if flat else "no"])
    return _table(["budget", "arm", "seed", "status", "epochs", "last pseudo Dice", "last EMA",
                   "mean pseudo Dice, best earlier fifth -> last fifth", "rise", "converged"], rows)


def pretraining_table(pres: List[dict]) -> List[str]:
    rows = []
    for p in pres:
        c = p["curves"]
        rel, flat = st.loss_flattened(c.get("val_loss", []))
        secs = _training_seconds(c)
        rows.append([p["method"], p["trainer"], "finished" if p["finished"] else "running",
                     len(c.get("train_loss", [])), _f(c["train_loss"][-1] if c.get("train_loss") else None, 4),
                     _f(c["val_loss"][-1] if c.get("val_loss") else None, 4), _f(rel), "yes" if flat else "no",
                     "-" if secs is None else bc.fmt_duration(secs), _median_epoch([c])])
    notes = [f"- {p['method']}: {p['info']['ran_as']}" for p in pres if p["info"].get("ran_as")]
    return _table(["method", "trainer", "status", "epochs", "last train loss", "last val loss",
                   "EMA val loss change, last fifth / whole range", "flattened", "time (epochs x median epoch)",
                   "median epoch"], rows) + ([""] + notes if rows and notes else [])


def _epoch_times(curves: List[Dict[str, List[float]]]) -> List[float]:
    return sorted(t for c in curves for t in c.get("epoch_time", []) if t == t)


def _median_epoch(curves: List[Dict[str, List[float]]]) -> str:
    """The median of nnU-Net's epoch times over the given runs' logs: the machine's pace, which (unlike the wall
    clock) a paused or crowded stretch of a run barely moves."""
    times = _epoch_times(curves)
    return bc.fmt_duration(times[len(times) // 2]) if times else "-"


def _training_seconds(curves: Dict[str, List[float]]) -> Optional[float]:
    """A training's cost at the machine's undisturbed pace: its epochs x the median of their times. The wall clock
    of the driver's commands misses the part of a run that a stopped session interrupted (it is recorded only when
    the command returns) and includes pauses and other work of the machine."""
    times = _epoch_times([curves])
    return len(times) * times[len(times) // 2] if times else None


def cost_lines(runs: List[dict], pres: List[dict]) -> List[str]:
    pre = sum(_training_seconds(p["curves"]) or 0.0 for p in pres)
    total, rows = pre, []
    for arm in sorted({r["arm"] for r in runs}, key=_order):
        done = [r for r in runs if r["arm"] == arm and r["status"] == "evaluated"]
        if not done:
            continue
        secs = [r["info"].get("seconds", {}) for r in done]
        train = sorted(_training_seconds(r["curves"]) or 0.0 for r in done)
        rest = [s.get("predict", 0.0) + s.get("evaluate", 0.0) for s in secs]
        total += sum(train) + sum(rest)
        rows.append([arm, len(secs), bc.fmt_duration(train[len(train) // 2]),
                     _median_epoch([r["curves"] for r in done]), bc.fmt_duration(sum(rest) / len(rest)),
                     bc.fmt_duration(sum(train) + sum(rest))])
    return _table(["arm", "evaluated runs", "training per run (median)", "median epoch",
                   "prediction + evaluation per run", "total"], rows) + [
        "", f"Pre-training: {bc.fmt_duration(pre)}; all finished work of this dataset: {bc.fmt_duration(total)}. "
            f"Training = its epochs x the median of their times in nnU-Net's logs (the machine's undisturbed pace: "
            f"pauses, other work of the machine and epochs repeated after an interrupted session do not count); "
            f"prediction + evaluation = wall clock of those commands."]


def _results_of(command: str) -> str:
    m = re.search(r"nnUNet_results=(\S+)", command)
    return m.group(1) if m else ""


def example_commands(files: List[Path], key: str) -> List[str]:
    """One pre-training and one scratch run's stock commands, from the ``commands.sh`` files given (the work dir's
    and the record's; the latest start of each: an earlier start with other settings may precede it)."""
    cmds = list(dict.fromkeys(c for f in files if f.is_file() for c in f.read_text().splitlines()))
    picks = []
    for part in ("pretrain", "arms/scratch"):  # by where the command writes: fine-tunings name a pre-training too
        hits = [c for c in cmds if "nnUNetv2_train" in c and f"/{key}/{part}/" in _results_of(c)]
        starts = [c for c in hits if not c.rstrip().endswith("--c")] or hits
        if starts:
            picks.append(starts[-1])
    pred = [c for c in cmds if f"/{key}/arms/scratch/" in c and "nnUNetv2_predict" in c][:1]
    evaluate = [c for c in cmds if f"/{key}/arms/scratch/" in c and "nnUNetv2_evaluate_simple" in c][:1]
    picks = list(dict.fromkeys(picks + pred + evaluate))
    return ["```bash"] + picks + ["```"] if picks else []


# ----------------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------------

def _verdict(v: dict) -> str:
    """A dataset's verdict: met, not met (why), or the gain met (or not shown yet) and the runs the rule still
    needs."""
    to_run = {}
    for budget, arm, seeds in v["to_run"]:
        to_run.setdefault(budget, []).append(f"{arm} {seeds}")
    missing = ("still to run (seeds paired so far, of " + str(st.MIN_SEEDS) + "): " +
               "; ".join(f"budget {b}: {', '.join(arms)}" for b, arms in to_run.items())) if to_run else ""
    if v["reasons"]:
        return "not met: " + "; ".join(v["reasons"]) + (f"; {missing}" if missing else "")
    if v.get("gain_pending"):
        return f"gain not shown yet; {missing}"
    return f"gain met; {missing}" if missing else "met"


def build_report(work, profile: str, out=DEFAULT_OUT, datasets: Optional[List[str]] = None,
                 command: Optional[str] = None, record=None) -> Path:
    """Write the report of everything finished in ``work`` and in the ``record`` (default: the profile's record
    beside the report); returns the Markdown file."""
    from nnunet_ssl.benchmark import plots
    work, out = Path(work).expanduser().resolve(), Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"low_label_{profile}"
    for old_plot in out.glob(f"{stem}_*.png"):  # every plot is redrawn below; one not redrawn would be stale
        old_plot.unlink()
    record = Path(record).expanduser().resolve() if record else rec.default_record_dir(out, profile)
    roots = [work, record]
    keys = [k for k in (datasets or list(DATASETS)) if any((r / k).is_dir() for r in roots)]
    runs = {k: read_runs(roots, k) for k in keys}
    pres = {k: read_pretrainings(roots, k) for k in keys}
    names = {k: dataset_labels(work, k) for k in keys}
    labels = {k: sorted(v) for k, v in names.items()}
    rows = [row for k in keys for r in runs[k] for row in r["rows"]]
    agg = st.aggregate(rows, labels)
    paired = st.paired_vs(rows, labels)
    per_seed = st.paired_per_seed(rows, labels)
    pretrained = headline_pretrained_arms()
    verdict = st.headline(paired, {k: min(DATASETS[k].budgets) for k in keys}, pretrained,
                          rule_arms=[a for a, arm in ARMS.items() if arm.headline],
                          budgets={k: DATASETS[k].budgets for k in keys})
    write_per_case_csv(out / f"{stem}_per_case.csv", rows, names)
    cmd = command or f"python scripts/benchmark_low_label.py --profile {profile} --work-dir {work}"
    n_eval = sum(r["status"] == "evaluated" for k in keys for r in runs[k])
    lines = [f"# Low-label benchmark: profile `{profile}`", "",
             f"Built {time.strftime('%Y-%m-%d %H:%M')} from `{work}` and the record `{_shown(record)}`: "
             f"{n_eval} evaluated runs of "
             f"{sum(len(runs[k]) for k in keys)} started. Run or continue: `{cmd}`; rebuild this report from "
             f"whatever has finished: `{cmd} --stage report`.", "", "## Headline", "",
             f"Rule: on every dataset, at its smallest budget, the best pre-trained arm beats scratch by >= "
             f"{100 * st.MIN_GAIN:.0f} Dice points (foreground mean, pairs pooled over >= {st.MIN_SEEDS} seeds) "
             f"with Wilcoxon p < {st.ALPHA}, and no headline arm (a method on its recommended route) is "
             f"significantly below scratch at any budget. Diagnostic arms (route and length checks, superseded "
             f"defaults) decide nothing; those significantly below scratch are listed under the table. The rule "
             f"waits for its runs: every headline arm at the smallest budget and the {st.N_BEST} best of them at "
             f"the other budgets, each paired with scratch on >= {st.MIN_SEEDS} seeds.", ""]
    head = []
    for k, v in verdict["datasets"].items():
        b = v["best"]
        head.append([k, min(DATASETS[k].budgets), b["arm"] if b else "-",
                     _diff_ci(b) if b else "-",
                     st.fmt_p(b["p"]) if b else "-", b["n_seeds"] if b else "-",
                     _verdict(v)])
    lines += _table(["dataset", "smallest budget", "best pre-trained arm", "difference [95 % CI]", "p", "seeds",
                     "verdict"], head)
    diag = [f"{r['arm']} on {k} at budget {r['budget']}: {_diff_ci(r)}, p {st.fmt_p(r['p'])} "
            f"({ARMS[r['arm']].route if r['arm'] in ARMS else '-'})"
            for k, v in verdict["datasets"].items() for r in v["diagnostics_below"]]
    if diag:
        lines += ["", "Diagnostic arms significantly below scratch (outside the rule; see each dataset's paired "
                  "table and docs/benchmarks.md for what they showed):", ""] + [f"- {d}" for d in diag]
    overall = ("met" if verdict["passed"] else "not met" if any(v["reasons"] for v in verdict["datasets"].values())
               else "not decided yet: runs missing (above)")
    lines += ["", f"Overall: **{overall}**."]
    lines += route_check_lines(runs, keys)
    for k in keys:
        ds = DATASETS[k]
        split = _json(work / k / "split.json") or _json(record / k / "split.json")
        n_test = sum(len(split.get("cases_of", {}).get(g, [])) for g in split.get("test_groups", []))
        lines += ["", f"## {k}", "",
                  f"nnU-Net configuration `{ds.configuration}` ({ds.why_configuration}). Test split: "
                  f"{len(split.get('test_groups', []))} {ds.group_word}s ({n_test} images), never pre-trained on; "
                  f"budgets count labeled {ds.group_word}s.", "",
                  "### Dice on the test split (mean ± sd over seeds)", ""]
        lines += dice_table(agg, k, names[k], ds.group_word)
        if plots.dice_plot(agg, k, ds.group_word, out / f"{stem}_{k}_dice.png"):
            lines += ["", f"![Dice vs labels, {k}]({stem}_{k}_dice.png)"]
        lines += ["", "### Paired against scratch (same budget, seed and test case; pooled over seeds)", ""]
        lines += paired_table(paired, k, names[k])
        lines += ["", "Per seed (label subset): the arm's foreground mean against scratch's on the same test "
                  "cases, difference in Dice points, Wilcoxon p, cases better:", ""]
        lines += per_seed_table(per_seed, k)
        lines += ["", "### Convergence of fine-tuning", "",
                  f"Pseudo Dice = nnU-Net's per-epoch Dice on validation patches of the validation "
                  f"{ds.group_word}s ({len(split.get('val_groups', []))}; they chose fine-tuning routes, never a "
                  f"checkpoint; the test split chose nothing); EMA = "
                  f"nnU-Net's ema_fg_dice (momentum {st.EMA_MOMENTUM}). Converged: the mean pseudo Dice of the last "
                  f"fifth of the epochs is less than {st.DICE_RISE_TOL} above that of the best earlier fifth (no new "
                  f"high beyond the plateau reached before).", ""]
        lines += convergence_table(runs[k])
        lines += length_check_lines(runs[k], rows, labels, k, [a for a in ARMS if ARMS[a].epochs_factor != 1])
        scratch_runs = [r for r in runs[k] if r["arm"] in SCRATCH_ARMS]
        if plots.convergence_plot(scratch_runs, out / f"{stem}_{k}_convergence.png"):
            lines += ["", f"![scratch pseudo Dice, {k}]({stem}_{k}_convergence.png)"]
        lines += ["", "### Pre-training", "",
                  f"On every non-test image of the dataset (labels unused). Flattened: the EMA validation loss moves "
                  f"by < {100 * st.LOSS_FLAT_FRACTION:.0f} % of its whole-run range over the last fifth.", ""]
        lines += pretraining_table(pres[k])
        lines += length_check_lines(runs[k], rows, labels, k, [a for a in ARMS if ARMS[a].length_check and
                                                      ARMS[a].epochs_factor == 1])
        if plots.pretraining_plot(pres[k], out / f"{stem}_{k}_pretraining.png"):
            lines += ["", f"![pre-training losses, {k}]({stem}_{k}_pretraining.png)"]
        lines += ["", "### Cost", ""] + cost_lines(runs[k], pres[k])
        example = example_commands([work / "commands.sh", record / "commands.sh"], k)
        if example:
            lines += ["", f"Stock commands of one pre-training and one scratch run (all of them, with their "
                          f"environment: `{work / 'commands.sh'}`, `{_shown(record / 'commands.sh')}`):", ""] + example
    lines += ["", "## Conventions", "", st.__doc__.split("Conventions\n-----------\n")[1].strip(),
              "", f"Per-case Dice: `{stem}_per_case.csv`."]
    md = out / f"{stem}.md"
    md.write_text("\n".join(lines) + "\n")
    bc.log(f"report: {md} ({n_eval} evaluated runs)")
    return md


def _shown(path: Path) -> str:
    """A path inside the repository relative to it (the record is committed), any other as it is."""
    try:
        return str(Path(path).resolve().relative_to(bc.REPO_ROOT))
    except ValueError:
        return str(path)


def write_per_case_csv(path: Path, rows: List[dict], names: Dict[str, Dict[int, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "arm", "budget", "seed", "case", "class_id", "class_name", "dice", "n_ref", "n_pred"])
        for r in sorted(rows, key=lambda r: (r["dataset"], _order(r["arm"]), r["budget"], r["seed"], r["case"])):
            for lb in sorted(r["dice"]):
                w.writerow([r["dataset"], r["arm"], r["budget"], r["seed"], r["case"], lb,
                            names[r["dataset"]].get(lb, str(lb)), _f(r["dice"][lb], 6), r["n_ref"].get(lb),
                            r["n_pred"].get(lb)])


def write_report(work, args, setups=None) -> Path:
    """The CLI's report stage (``setups`` unused: everything is read from the work directory)."""
    return build_report(work, args.profile, getattr(args, "out", DEFAULT_OUT), list(args.datasets),
                        command=getattr(args, "command", None), record=getattr(args, "record_dir", None))


def voxel_confusion(label_dir, pred_dir, classes: List[int]) -> List[List[int]]:
    """Voxel counts [true class][predicted class] summed over the label files of ``label_dir``."""
    import numpy as np
    import SimpleITK as sitk
    total = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for name in bc.nifti_files(label_dir):
        ref, pred = (sitk.GetArrayFromImage(sitk.ReadImage(str(Path(d) / name))) for d in (label_dir, pred_dir))
        total += st.confusion_counts(ref, pred, classes)
    return total.tolist()
