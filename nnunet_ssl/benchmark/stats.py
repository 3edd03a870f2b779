"""Statistics of the low-label benchmark (numpy and scipy only; no nnU-Net, no files).

Conventions
-----------
* Dice per case and class comes from ``nnUNetv2_evaluate_simple``'s ``summary.json``. nnU-Net writes NaN when the
  class is absent from both the reference and the prediction (``tp + fp + fn == 0``) and averages with
  ``np.nanmean``: such a case does not count for that class. We do the same: a run's Dice of a class is the
  ``nanmean`` over the test cases, its foreground mean the plain mean of those class means (exactly nnU-Net's
  ``foreground_mean``). A case's foreground mean (for the paired comparison) is the ``nanmean`` over its classes;
  a case with every class NaN is left out of the pairs. (Without NaNs the mean paired difference is exactly the
  difference of the runs' foreground means.) A class the prediction misses while the reference has it has Dice 0,
  not NaN.
* Paired comparison against scratch: pairs (seed, test case) of the same dataset and budget, pooled over the seeds
  both arms have; difference = arm - scratch. Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided,
  zero differences dropped as scipy's default ``zero_method='wilcox'`` does); no correction for multiple
  comparisons. The 95 % interval of the mean difference is a seeded percentile bootstrap that resamples test cases
  (all seeds of a case together, since those pairs share the case); with one seed it is scipy's
  ``bootstrap(method='percentile')`` with the same generator.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

FG = "fg"  # key of the foreground mean next to the integer class labels
N_BOOT = 10000
BOOT_SEED = 0
MIN_GAIN = 0.03  # headline: best pre-trained arm >= scratch + 3 Dice points
ALPHA = 0.05
MIN_SEEDS = 3
N_BEST = 2  # the other budgets run scratch and this many best arms of the smallest budget
DICE_RISE_TOL = 0.02  # converged: mean pseudo Dice of the last fifth < the best earlier fifth's + 2 Dice points
LOSS_FLAT_FRACTION = 0.05  # SSL flattened: last fifth moves the EMA val loss < 5 % of its whole-run range
LENGTH_CHECK_POINTS = 2.0  # a length check (twice the fine-tuning epochs or the pre-training) lifting the mean
# validation pseudo Dice (last fifth) of the arm it repeats by this many Dice points calls that length too short
# (nnunet_ssl.benchmark.length_checks; docs/benchmarks.md)
EMA_MOMENTUM = 0.9  # nnU-Net's ema_fg_dice: ema = 0.9 * ema + 0.1 * value, first value as is
TAIL = 0.2  # "the last fifth of training"


def case_id(path: str) -> str:
    name = os.path.basename(str(path))
    for end in (".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".png"):
        if name.endswith(end):
            return name[: -len(end)]
    return os.path.splitext(name)[0]


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def case_rows(summary: dict, **keys) -> List[dict]:
    """One row per test case of an ``evaluate_simple`` summary: ``keys`` (dataset, arm, budget, seed) plus
    ``case``, ``dice`` / ``n_ref`` / ``n_pred`` as {label: value} (Dice NaN: class in neither image)."""
    rows = []
    for entry in summary["metric_per_case"]:
        metrics = {int(str(k).strip("()").split(",")[0]): m for k, m in entry["metrics"].items()}
        rows.append(dict(keys, case=case_id(entry.get("reference_file") or entry["prediction_file"]),
                         dice={lb: _float(m.get("Dice")) for lb, m in metrics.items()},
                         n_ref={lb: m.get("n_ref") for lb, m in metrics.items()},
                         n_pred={lb: m.get("n_pred") for lb, m in metrics.items()}))
    return rows


def _nanmean(values: Iterable[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def case_fg(row: dict, labels: Sequence[int]) -> float:
    return _nanmean(row["dice"].get(lb, float("nan")) for lb in labels)


def run_dice(rows: List[dict], labels: Sequence[int]) -> Dict:
    """nnU-Net's means of one run: per class the nanmean over cases, ``FG`` the mean of the class means."""
    out = {lb: _nanmean(r["dice"].get(lb, float("nan")) for r in rows) for lb in labels}
    out[FG] = float(np.mean([out[lb] for lb in labels])) if labels else float("nan")
    return out


def _sd(values: List[float]) -> Optional[float]:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def group_runs(rows: List[dict]) -> Dict[tuple, List[dict]]:
    """Rows by run key (dataset, arm, budget, seed)."""
    runs: Dict[tuple, List[dict]] = {}
    for r in rows:
        runs.setdefault((r["dataset"], r["arm"], r["budget"], r["seed"]), []).append(r)
    return runs


def aggregate(rows: List[dict], labels: Dict[str, Sequence[int]]) -> Dict[tuple, dict]:
    """Per (dataset, arm, budget): ``per_seed`` {seed: run_dice}, ``mean`` and ``sd`` over seeds per class and
    ``FG`` (sd None with one seed), ``seeds``. ``labels``: foreground labels per dataset."""
    per: Dict[tuple, Dict[int, dict]] = {}
    for (ds, arm, budget, seed), rs in group_runs(rows).items():
        per.setdefault((ds, arm, budget), {})[seed] = run_dice(rs, labels[ds])
    out = {}
    for key, seeds in per.items():
        keys = list(labels[key[0]]) + [FG]
        vals = {k: [seeds[s][k] for s in sorted(seeds)] for k in keys}
        out[key] = {"seeds": sorted(seeds), "per_seed": seeds,
                    "mean": {k: float(np.mean(v)) for k, v in vals.items()},
                    "sd": {k: _sd(v) for k, v in vals.items()}}
    return out


def wilcoxon_p(diffs: Sequence[float]) -> Optional[float]:
    """Two-sided Wilcoxon signed-rank p (scipy); 1.0 when every difference is 0, None without differences."""
    from scipy.stats import wilcoxon
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return None
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative="two-sided").pvalue)


def bootstrap_ci(diffs: Sequence[float], clusters: Optional[Sequence] = None, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED, level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``, resampling clusters (default: each value its own)
    with ``numpy.random.default_rng(seed).integers(0, n_clusters, (n_boot, n_clusters))``; NaNs with ``n_boot``
    0 (a caller that needs only the means)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or n_boot < 1:
        return float("nan"), float("nan")
    ids = list(range(d.size)) if clusters is None else list(clusters)
    names = sorted(set(ids), key=ids.index)
    sums = np.array([d[[i for i, c in enumerate(ids) if c == n]].sum() for n in names])
    counts = np.array([sum(1 for c in ids if c == n) for n in names], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(names), (n_boot, len(names)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_vs(rows: List[dict], labels: Dict[str, Sequence[int]], reference: str = "scratch",
              n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> List[dict]:
    """Every arm against ``reference`` per (dataset, budget) and class (``FG`` first): pairs (seed, case) pooled
    over the seeds both have. Keys: dataset, arm, budget, cls, n_pairs, n_seeds, n_cases, mean_diff, ci_low,
    ci_high, p, better, worse, arm_mean and reference_mean (the two arms' mean Dice over the pairs)."""
    by_case = {(r["dataset"], r["arm"], r["budget"], r["seed"], r["case"]): r for r in rows}
    combos: Dict[tuple, List[tuple]] = {}
    for (ds, arm, budget, s, c), row in sorted(by_case.items()):
        ref = by_case.get((ds, reference, budget, s, c))
        if arm != reference and ref is not None:
            combos.setdefault((ds, budget, arm), []).append((s, c, row, ref))
    out = []
    for (ds, budget, arm), pairs in sorted(combos.items()):
        for cls in [FG] + list(labels[ds]):
            diffs, cases, seeds, xs, ys = [], [], set(), [], []
            for s, c, row, ref in pairs:
                x, y = ((case_fg(row, labels[ds]), case_fg(ref, labels[ds])) if cls == FG else
                        (row["dice"].get(cls, float("nan")), ref["dice"].get(cls, float("nan"))))
                if math.isnan(x) or math.isnan(y):
                    continue
                diffs.append(x - y)
                xs.append(x)
                ys.append(y)
                cases.append(c)
                seeds.add(s)
            if not diffs:
                continue
            lo, hi = bootstrap_ci(diffs, cases, n_boot, seed)
            out.append(dict(dataset=ds, arm=arm, budget=budget, cls=cls, n_pairs=len(diffs), n_seeds=len(seeds),
                            n_cases=len(set(cases)), mean_diff=float(np.mean(diffs)), ci_low=lo, ci_high=hi,
                            p=wilcoxon_p(diffs), better=sum(x > 0 for x in diffs),
                            worse=sum(x < 0 for x in diffs), arm_mean=float(np.mean(xs)),
                            reference_mean=float(np.mean(ys))))
    return out


def paired_per_seed(rows: List[dict], labels: Dict[str, Sequence[int]], reference: str = "scratch") -> List[dict]:
    """:func:`paired_vs` of the foreground mean seed by seed (no bootstrap): how much of a pooled difference each
    label subset carries. Keys: those of :func:`paired_vs` (``n_seeds`` 1, ``ci_*`` NaN) plus ``seed``."""
    return [dict(r, seed=s) for s in sorted({r["seed"] for r in rows})
            for r in paired_vs([r for r in rows if r["seed"] == s], labels, reference, n_boot=0) if r["cls"] == FG]


def headline(paired: List[dict], smallest_budget: Dict[str, int], pretrained_arms: Sequence[str],
             min_gain: float = MIN_GAIN, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS,
             rule_arms: Optional[Sequence[str]] = None, budgets: Optional[Dict[str, Sequence[int]]] = None,
             n_best: int = N_BEST) -> dict:
    """The issue's rule per dataset of ``smallest_budget``: at that budget the best pre-trained arm (largest mean
    foreground difference) beats scratch by >= ``min_gain`` with Wilcoxon p < ``alpha`` over >= ``min_seeds``
    seeds, and no arm of ``rule_arms`` (None: every arm) is significantly below scratch (mean difference < 0,
    p < alpha) at any budget; an arm outside ``rule_arms`` that is (a diagnostic) is listed under "diagnostics_below"
    and decides nothing. With ``budgets`` (every budget of each dataset) the rule also waits for its runs
    (:func:`still_to_run`): an arm not yet run cannot be said to be not below scratch.
    The best arm is the best of those with >= ``min_seeds`` seeds (of all, while none has them); while it misses the
    gain and an arm of the smallest budget still lacks seeds, the gain is pending ("gain_pending"), not a reason.
    Returns {"passed": bool, "complete": bool, "datasets": {ds: {"passed", "best", "reasons", "gain_pending",
    "diagnostics_below", "to_run"}}}."""
    fg = [r for r in paired if r["cls"] == FG]
    result = {}
    for ds, budget in smallest_budget.items():
        to_run = still_to_run(fg, ds, list(budgets[ds]), pretrained_arms, min_seeds, n_best) if budgets else []
        ranked = rank_arms(fg, ds, budget, pretrained_arms, min_seeds)
        best = ranked[0] if ranked else None
        gain = []
        if best is None:
            gain.append(f"no pre-trained arm paired with scratch at budget {budget}")
        else:
            if best["mean_diff"] < min_gain:
                gain.append(f"best arm {best['arm']}: {100 * best['mean_diff']:+.1f} Dice points "
                            f"< {100 * min_gain:.0f}")
            if best["p"] is None or best["p"] >= alpha:
                gain.append(f"best arm {best['arm']}: Wilcoxon p {fmt_p(best['p'])} >= {alpha}")
            if best["n_seeds"] < min_seeds:
                gain.append(f"best arm {best['arm']}: {best['n_seeds']} seed(s) < {min_seeds}")
        # not shown yet, rather than failed, while an arm of the smallest budget still lacks seeds (with budgets)
        gain_pending = bool(gain) and any(b == budget for b, _, _ in to_run)
        reasons = [] if gain_pending else gain
        below = [r for r in fg if r["dataset"] == ds and r["mean_diff"] < 0 and r["p"] is not None
                 and r["p"] < alpha]
        counts = [rule_arms is None or r["arm"] in rule_arms for r in below]
        counted = [r for r, c in zip(below, counts) if c]
        reasons += [f"{r['arm']} significantly below scratch at budget {r['budget']} "
                    f"({100 * r['mean_diff']:+.1f}, p {fmt_p(r['p'])})" for r in counted]
        result[ds] = {"passed": not reasons and not to_run, "best": best, "reasons": reasons, "to_run": to_run,
                      "gain_pending": gain_pending,
                      "diagnostics_below": [r for r, c in zip(below, counts) if not c]}
    return {"passed": bool(result) and all(v["passed"] for v in result.values()),
            "complete": all(not v["to_run"] for v in result.values()), "datasets": result}


def rank_arms(paired: List[dict], dataset: str, budget: int, arms: Sequence[str],
              min_seeds: int = MIN_SEEDS) -> List[dict]:
    """The foreground rows of ``arms`` on ``dataset`` at ``budget``, best first: those with >= ``min_seeds``
    seeds before those still short of them (an arm ahead on fewer seeds cannot displace a settled one), each group
    by mean difference against scratch, largest first (ties keep their order)."""
    rows = [r for r in paired if r["dataset"] == dataset and r["cls"] == FG and r["budget"] == budget
            and r["arm"] in arms]
    return sorted(rows, key=lambda r: (r["n_seeds"] < min_seeds, -r["mean_diff"]))


def still_to_run(paired: List[dict], dataset: str, budgets: List[int], pretrained_arms: Sequence[str],
                 min_seeds: int = MIN_SEEDS, n_best: int = N_BEST) -> List[Tuple[int, str, int]]:
    """The runs the headline rule still needs on ``dataset``: every arm of ``pretrained_arms`` at the smallest of
    ``budgets``, and the ``n_best`` best of them there (largest mean foreground difference) at every other budget,
    each paired with scratch on >= ``min_seeds`` seeds (a pair needs scratch's run too, so scratch is covered).
    The best are ranked as :func:`headline` ranks them (:func:`rank_arms`).
    Returns (budget, arm, seeds paired so far) of each arm short of them, smallest budget first."""
    seeds = {(r["arm"], r["budget"]): r["n_seeds"] for r in paired if r["dataset"] == dataset and r["cls"] == FG}
    smallest = min(budgets)
    best = [r["arm"] for r in rank_arms(paired, dataset, smallest, pretrained_arms, min_seeds)[:n_best]]
    need = [(smallest, a) for a in pretrained_arms] + [(b, a) for b in sorted(budgets) if b != smallest
                                                       for a in best]
    return [(b, a, seeds.get((a, b), 0)) for b, a in need if seeds.get((a, b), 0) < min_seeds]


def fmt_points(x: Optional[float]) -> str:
    """A Dice difference in signed Dice points: 0.053 -> "+5.3"; "-" when missing."""
    return "-" if x is None or math.isnan(x) else f"{100 * x:+.1f}"


def fmt_p(p: Optional[float]) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def ema(values: Sequence[float], momentum: float = EMA_MOMENTUM) -> List[float]:
    """nnU-Net's exponential moving average of the pseudo Dice (NaN values leave it unchanged)."""
    out: List[float] = []
    for v in values:
        if not out or math.isnan(out[-1]):
            out.append(float(v))
        else:
            out.append(out[-1] if math.isnan(v) else momentum * out[-1] + (1 - momentum) * float(v))
    return out


def tail_change(values: Sequence[float], fraction: float = TAIL) -> Optional[float]:
    """max - min over the last ``fraction`` of the epochs (at least 2 epochs); None when too short or NaN."""
    v = list(values)
    k = max(2, math.ceil(fraction * len(v)))
    tail = v[-k:]
    if len(v) < k or any(math.isnan(x) for x in tail):
        return None
    return max(tail) - min(tail)


def fifth_means(values: Sequence[float], parts: int = round(1 / TAIL)) -> Optional[List[float]]:
    """Means of the five consecutive fifths of the epochs (at least 2 epochs each); None when too short or NaN."""
    v = [float(x) for x in values]
    if len(v) < 2 * parts or any(math.isnan(x) for x in v):
        return None
    return [float(np.mean(c)) for c in np.array_split(np.asarray(v), parts)]


def dice_plateau(pseudo_dice: Sequence[float]) -> Optional[Tuple[float, float]]:
    """(best mean of the first four fifths, mean of the last fifth) of the per-epoch pseudo Dice; None when too
    short or NaN."""
    means = fifth_means(pseudo_dice)
    return None if means is None else (max(means[:-1]), means[-1])


def dice_converged(pseudo_dice: Sequence[float], tol: float = DICE_RISE_TOL) -> Tuple[Optional[float], bool]:
    """How far the mean per-epoch pseudo Dice of the last fifth rises above the best earlier fifth, and whether it
    is < ``tol`` (no longer rising: no new high beyond the plateau reached before). Means of whole fifths, not the
    EMA's max - min, and against the best earlier fifth, not only the one before: with one labeled case the
    per-epoch pseudo Dice scatters by +-0.05 and fifth means of a flat curve by +-0.03."""
    plateau = dice_plateau(pseudo_dice)
    if plateau is None:
        return None, False
    rise = plateau[1] - plateau[0]
    return rise, rise < tol


def loss_flattened(val_loss: Sequence[float], fraction: float = LOSS_FLAT_FRACTION
                   ) -> Tuple[Optional[float], bool]:
    """Change of the EMA SSL validation loss over the last fifth as a fraction of its whole-run range, and whether
    it is < ``fraction`` (scale-free, so every method's loss is judged alike)."""
    smooth = ema(val_loss)
    change = tail_change(smooth)
    finite = [x for x in smooth if not math.isnan(x)]
    if change is None or not finite:
        return None, False
    span = max(finite) - min(finite)
    rel = 0.0 if span == 0 else change / span
    return rel, rel < fraction


def confusion_counts(ref: np.ndarray, pred: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Voxel counts [true class][predicted class] (labels outside ``classes`` ignored)."""
    k = max(classes) + 1
    ref, pred = np.asarray(ref, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    keep = (ref < k) & (pred < k) & (ref >= 0) & (pred >= 0)
    counts = np.bincount(ref[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    return counts[np.ix_(list(classes), list(classes))]


def class_fate(counts, i: int) -> np.ndarray:
    """Row ``i`` of voxel-confusion counts as fractions: where true class ``i``'s voxels went (sums to 1)."""
    row = np.asarray(counts[i], dtype=np.float64)
    return row / max(1, row.sum())
