"""Length checks: is a schedule or a pre-training long enough? Decided on validation cases, never the test split.

A length-check arm (:attr:`Arm.length_check` names the arm it repeats) trains like that arm with the fine-tuning
(``scratch-2x``: :attr:`Arm.epochs_factor`, twice as long) or the pre-training (``ideal-pre2x``, ``pgl-pre2x``,
``pgl-pre1.5x``: :data:`arms.PRETRAIN_EPOCHS_FACTOR` as long).
Per dataset and budget, both arms' finished runs of the same seeds score the mean of nnU-Net's per-epoch validation
pseudo Dice over the last fifth of their epochs (:func:`route_checks.validation_scores`); when the longer one's
mean is ``stats.LENGTH_CHECK_POINTS`` Dice points or more above, the length is too short. The test split's paired
difference is shown beside it and decides nothing (the rule moved from the test Dice to the validation cases on
2026-12-07, before any pre-training length check ran; the one schedule check that had run says "long enough" on
either).
"""
from __future__ import annotations

from typing import List

import numpy as np

from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.arms import ARMS, PRETRAIN_EPOCHS_FACTOR
from nnunet_ssl.benchmark.route_checks import validation_scores


_pts = st.fmt_points


def length_checks(runs: List[dict], arm: str) -> List[dict]:
    """Per budget where ``arm`` and the arm it repeats both finished seeds (``runs``: one dataset's runs, as the
    report reads them): budget, seeds, the two means (``base``, ``longer``) and ``too_short``."""
    base = ARMS[arm].length_check
    ours, theirs = validation_scores(runs, base), validation_scores(runs, arm)
    out = []
    for budget in sorted({b for b, _ in set(ours) & set(theirs)}):
        seeds = sorted(s for b, s in set(ours) & set(theirs) if b == budget)
        a = float(np.mean([ours[(budget, s)] for s in seeds]))
        b = float(np.mean([theirs[(budget, s)] for s in seeds]))
        out.append(dict(budget=budget, seeds=seeds, base=a, longer=b,
                        too_short=100 * (b - a) >= st.LENGTH_CHECK_POINTS))
    return out


def length_check_sentence(runs: List[dict], paired: List[dict], key: str, arm: str) -> str:
    """What the length check ``arm`` says on dataset ``key``, per budget: decided by :func:`length_checks` on
    ``runs``; ``paired`` (``stats.paired_vs`` against the arm it repeats) adds the test split's difference."""
    a = ARMS[arm]
    if a.epochs_factor != 1:
        what, fix = "schedule", "every arm needs the longer one"
        text = f"Schedule check: `{arm}` is stock nnU-Net with twice the epochs on scratch's label subsets."
    else:
        what, fix = "pre-training", "the method's pre-training needs the longer one"
        factor = PRETRAIN_EPOCHS_FACTOR[a.pretrain]
        text = (f"Pre-training length check: `{arm}` fine-tunes like `{a.length_check}`, from a pre-training "
                + ("twice" if factor == 2 else f"{factor:g}x") + " as long.")
    text += (f" Decided on the validation cases (mean pseudo Dice over the last fifth of the epochs, same seeds as "
             f"`{a.length_check}`); the test split's paired difference decides nothing.")
    test = {r["budget"]: r for r in paired
            if r["dataset"] == key and r["arm"] == arm and r["cls"] == st.FG}
    for c in length_checks(runs, arm):
        n = len(c["seeds"])
        text += (f" Budget {c['budget']} ({n} seed{'' if n == 1 else 's'}): validation {c['longer']:.3f} against "
                 f"{c['base']:.3f}, {_pts(c['longer'] - c['base'])} points, "
                 f"{'at least' if c['too_short'] else 'below'} the {st.LENGTH_CHECK_POINTS:g} that would lengthen "
                 f"the {what}: " + (f"it is too short, {fix}." if c["too_short"] else "it is long enough."))
        r = test.get(c["budget"])
        if r is not None:
            text += (f" Test split: {_pts(r['mean_diff'])} points [{_pts(r['ci_low'])}, {_pts(r['ci_high'])}], "
                     f"p {st.fmt_p(r['p'])}.")
    return text


def length_check_lines(runs: List[dict], rows: List[dict], labels, key: str, arms: List[str]) -> List[str]:
    """The sentences of the length checks among ``arms`` that finished a run on dataset ``key`` (``runs``: its
    runs; ``rows``: per-case Dice rows of every dataset, ``labels``: classes per dataset, for the test split's
    paired difference)."""
    out = []
    for name in arms:
        ref = ARMS[name].length_check
        if not ref or not length_checks(runs, name):
            continue
        mine = [r for r in rows if r["dataset"] == key and r["arm"] in (name, ref)]
        out += ["", length_check_sentence(runs, st.paired_vs(mine, labels, reference=ref), key, name)]
    return out
