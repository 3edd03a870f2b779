"""Route checks: which fine-tuning route a method keeps, decided on validation cases, never on the test split.

A route-check arm (:attr:`Arm.route_check` names the arm whose route it challenges: ``mae-lpft`` -> ``mae``)
fine-tunes the same pre-trained checkpoint on another route. Each finished run scores the mean of nnU-Net's
per-epoch validation pseudo Dice over the last fifth of its epochs. Per dataset, the two arms' scores are averaged
over the budgets and seeds both finished; the route with the higher mean over the datasets wins. The check decides
only once it has a pair on every dataset it is meant for (the rule fixed before the checks ran,
docs/benchmarks.md); until then it waits, and the driver's ``--after`` keeps the lines it decides waiting too.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.arms import ARMS

FINISHED = ("evaluated", "trained")


def last_fifth_dice(run: dict) -> Optional[float]:
    """Mean validation pseudo Dice over the last fifth of a finished run's epochs; None while it trains or when
    its curve is too short to split into fifths."""
    if run.get("status") not in FINISHED:
        return None
    plateau = st.dice_plateau(run.get("curves", {}).get("pseudo_dice", []))
    return None if plateau is None else plateau[1]


def validation_scores(runs: List[dict], arm: str) -> Dict[Tuple[int, int], float]:
    """Per (budget, seed): the :func:`last_fifth_dice` of ``arm``'s finished runs among ``runs``."""
    out = {}
    for r in runs:
        score = last_fifth_dice(r) if r["arm"] == arm else None
        if score is not None:
            out[(r["budget"], r["seed"])] = score
    return out


def route_check(runs: Dict[str, List[dict]], check: str, datasets: Sequence[str]) -> dict:
    """The state of route check ``check`` over ``datasets`` (``runs``: per dataset, the report's runs):
    ``against`` (the arm whose route it challenges), ``pairs`` (per dataset with a shared finished run: the
    (budget, seed) pairs and the two arms' mean scores), ``missing`` (datasets without a pair), and ``winner``
    (the arm whose route wins, None while pairs are missing), with ``means`` = (against, check) over datasets."""
    against = ARMS[check].route_check
    pairs, missing = {}, []
    for key in datasets:
        ours, theirs = validation_scores(runs.get(key, []), against), validation_scores(runs.get(key, []), check)
        shared = sorted(set(ours) & set(theirs))
        if shared:
            pairs[key] = dict(runs=shared, against=float(np.mean([ours[s] for s in shared])),
                              check=float(np.mean([theirs[s] for s in shared])))
        else:
            missing.append(key)
    out = dict(check=check, against=against, pairs=pairs, missing=missing, winner=None, means=None)
    if pairs and not missing:
        means = tuple(float(np.mean([p[side] for p in pairs.values()])) for side in ("against", "check"))
        out.update(means=means, winner=check if means[1] > means[0] else against)
    return out


def route_check_lines(runs: Dict[str, List[dict]], datasets: Sequence[str]) -> List[str]:
    """The report's section on every route check that has a finished run: a table per dataset and the decision
    (or what it still waits for); empty when none ran."""
    checks = [route_check(runs, name, datasets) for name, arm in ARMS.items() if arm.route_check]
    checks = [c for c in checks if c["pairs"]]
    if not checks:
        return []
    lines = ["", "## Route checks", "",
             "Which fine-tuning route a method keeps, chosen on the validation cases (never the test split): each "
             "run's mean validation pseudo Dice over the last fifth of its epochs, averaged per dataset over the "
             "budgets and seeds both arms finished, then over the datasets; the higher mean keeps its route. The "
             "check decides once it has a pair on every dataset.", "",
             "| route check | against | dataset | budget / seed | against's pseudo Dice | check's pseudo Dice |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        for key, p in c["pairs"].items():
            runs_text = ", ".join(f"b{b} s{s}" for b, s in p["runs"])
            lines.append(f"| {c['check']} | {c['against']} | {key} | {runs_text} | {p['against']:.3f} | "
                         f"{p['check']:.3f} |")
    lines.append("")
    for c in checks:
        head = f"- `{c['check']}` against `{c['against']}`: "
        if c["winner"] is None:
            lines.append(head + "waits for " + ", ".join(c["missing"]) + ".")
        else:
            a, b = c["means"]
            kept = (f"`{c['against']}`'s route stays" if c["winner"] == c["against"]
                    else f"`{c['check']}`'s route ({ARMS[c['check']].route}) replaces `{c['against']}`'s")
            lines.append(head + f"mean over the datasets {a:.3f} against {b:.3f}: {kept}.")
    return lines
