"""The report's figures (matplotlib, Agg backend): Dice vs labels, scratch's convergence, pre-training losses.

Each function returns False (and writes nothing) when there is nothing to draw.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

from nnunet_ssl.benchmark import stats as st
from nnunet_ssl.benchmark.arms import ARMS

ARM_ORDER = list(ARMS)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _color(arm: str) -> str:
    return f"C{ARM_ORDER.index(arm) % 10}" if arm in ARM_ORDER else "k"


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return True


def _marker(values) -> dict:
    return {"marker": "o", "ms": 3} if len(values) < 10 else {}


def _panels(n: int):
    """A figure with ``n`` panels side by side."""
    fig, axes = _pyplot().subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    return fig, list(axes[0])


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _shade_last_fifth(ax, n_epochs: int) -> None:
    if n_epochs >= 2:
        ax.axvspan(n_epochs - max(2, math.ceil(st.TAIL * n_epochs)) - 0.5, n_epochs - 0.5, color="0.9", zorder=0)


def dice_plot(agg: Dict[tuple, dict], key: str, word: str, path: Path) -> bool:
    """Foreground-mean test Dice vs labeled groups: a line per arm (mean over seeds), a point per seed."""
    mine = {(arm, b): a for (ds, arm, b), a in agg.items() if ds == key}
    if not mine:
        return False
    plt = _pyplot()
    budgets = sorted({b for _, b in mine})
    arms = sorted({a for a, _ in mine}, key=lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else 99)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, arm in enumerate(arms):
        shift = 1 + 0.03 * (i - (len(arms) - 1) / 2)  # spread the arms a little (log x)
        xs = [b for b in budgets if (arm, b) in mine]
        ax.plot([b * shift for b in xs], [mine[(arm, b)]["mean"][st.FG] for b in xs], marker="o", label=arm,
                color=_color(arm))
        for b in xs:
            seeds = mine[(arm, b)]["per_seed"]
            ax.scatter([b * shift] * len(seeds), [seeds[s][st.FG] for s in seeds], s=14, alpha=0.5,
                       color=_color(arm))
    ax.set_xscale("log")
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlim(min(budgets) / 1.5, max(budgets) * 1.5)
    ax.set_ylim(0, 1)
    _label(ax, f"{key}: lines = mean over seeds, points = seeds", f"labeled {word}s", "test Dice, foreground mean")
    return _save(fig, path)


def convergence_plot(runs: List[dict], path: Path) -> bool:
    """Pseudo Dice (thin) and its EMA (thick) per epoch of from-scratch runs, one panel per arm and budget (scratch,
    and scratch-2x where the schedule check ran), the last fifth shaded."""
    runs = [r for r in runs if r["curves"].get("pseudo_dice")]
    if not runs:
        return False
    panels = sorted({(r["budget"], r["arm"]) for r in runs})
    fig, axes = _panels(len(panels))
    for ax, (b, arm) in zip(axes, panels):
        mine = sorted((r for r in runs if (r["budget"], r["arm"]) == (b, arm)), key=lambda r: r["seed"])
        for r in mine:
            dice = r["curves"]["pseudo_dice"]
            c = f"C{r['seed'] % 10}"
            ax.plot(dice, color=c, alpha=0.3, lw=0.8, **_marker(dice))
            ax.plot(st.ema(dice), color=c, lw=1.8, label=f"seed {r['seed']}", **_marker(dice))
        done = [len(r["curves"]["pseudo_dice"]) for r in mine if r["status"] != "training"]
        if done:  # the criterion's window, judged on finished runs only
            _shade_last_fifth(ax, max(done))
        ax.set_ylim(0, 1)
        _label(ax, f"{arm}, budget {b}", "epoch", "pseudo Dice (thin) and EMA")
    return _save(fig, path)


def pretraining_plot(pres: List[dict], path: Path) -> bool:
    """SSL train and validation loss (and the validation EMA) per epoch, one panel per method."""
    pres = [p for p in pres if p["curves"].get("train_loss")]
    if not pres:
        return False
    fig, axes = _panels(len(pres))
    for ax, p in zip(axes, pres):
        c = p["curves"]
        m = _marker(c["train_loss"])
        ax.plot(c["train_loss"], label="train", color="C0", **m)
        if c.get("val_loss"):
            ax.plot(c["val_loss"], label="validation", color="C1", alpha=0.5, **m)
            ax.plot(st.ema(c["val_loss"]), label="validation EMA", color="C1", **m)
        _shade_last_fifth(ax, len(c["train_loss"]))
        _label(ax, f"{p['method']} ({p['trainer']})", "epoch", "SSL loss")
    return _save(fig, path)
