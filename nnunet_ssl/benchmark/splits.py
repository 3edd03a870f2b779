"""Seeded, group-aware splits of a benchmark dataset, and the label subsets written as nnU-Net folds.

* The test groups (cases, or patients for ACDC) are fixed by ``split_seed``; they are never pre-trained on and
  never used for any choice.
* Validation groups: labeled, used for nnU-Net's pseudo-Dice curve during fine-tuning (to show that a run has
  converged) and to compare fine-tuning routes (the pseudo Dice, ``scripts/probe_features.py``), never for
  checkpoint selection (every arm is evaluated with ``checkpoint_final.pth``).
* The pool is everything else. The labeled subset of budget ``b`` and seed ``s`` is the first ``b`` groups of the
  pool shuffled with seed ``s``, so the subsets of one seed are nested (budget 1 is inside budget 2).
* ``splits_final.json`` holds one nnU-Net fold per (budget, seed): fold = ``budget_index * MAX_SEEDS + seed``,
  train = the labeled subset, val = the validation groups. Folds do not move when seeds are added.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

import numpy as np

from nnunet_ssl.benchmark.datasets import BenchDataset
from nnunet_ssl.errors import UserInputError

MAX_SEEDS = 10


def seeded_shuffle(items: Sequence[str], seed: int) -> List[str]:
    items = sorted(items)
    order = np.random.RandomState(int(seed)).permutation(len(items))
    return [items[i] for i in order]


@dataclass
class Split:
    split_seed: int
    test_groups: List[str]
    val_groups: List[str]
    pool_groups: List[str]
    cases_of: Dict[str, List[str]]

    def cases(self, groups: Sequence[str]) -> List[str]:
        return sorted(c for g in groups for c in self.cases_of[g])

    @property
    def test(self) -> List[str]:
        return self.cases(self.test_groups)

    @property
    def val(self) -> List[str]:
        return self.cases(self.val_groups)

    @property
    def non_test(self) -> List[str]:
        return self.cases(self.val_groups + self.pool_groups)

    def labeled_groups(self, budget: int, seed: int) -> List[str]:
        if budget > len(self.pool_groups):
            raise UserInputError(f"label budget {budget} exceeds the {len(self.pool_groups)} groups of the pool")
        return sorted(seeded_shuffle(self.pool_groups, seed)[:budget])

    def labeled(self, budget: int, seed: int) -> List[str]:
        return self.cases(self.labeled_groups(budget, seed))

    def to_dict(self) -> dict:
        return asdict(self)


def make_split(ds: BenchDataset, cases: Sequence[str], split_seed: int = 0) -> Split:
    groups = ds.groups(list(cases))
    order = seeded_shuffle(list(groups), split_seed)
    n_test, n_val = ds.num_test_groups, ds.num_val_groups
    if n_test + n_val + max(ds.budgets) > len(order):
        raise UserInputError(f"{ds.key}: {len(order)} {ds.group_word}s cannot hold {n_test} test, {n_val} "
                             f"validation and {max(ds.budgets)} labeled ones")
    return Split(split_seed, sorted(order[:n_test]), sorted(order[n_test:n_test + n_val]),
                 sorted(order[n_test + n_val:]), groups)


def fold_of(ds: BenchDataset, budget: int, seed: int) -> int:
    if budget not in ds.budgets:
        raise UserInputError(f"{ds.key}: budget {budget} is not one of {list(ds.budgets)}")
    if not 0 <= seed < MAX_SEEDS:
        raise UserInputError(f"seed {seed} outside 0..{MAX_SEEDS - 1}")
    return ds.budgets.index(budget) * MAX_SEEDS + seed


def nnunet_folds(ds: BenchDataset, split: Split) -> List[dict]:
    """The ``splits_final.json`` list: one fold per (budget, seed), see :func:`fold_of`."""
    folds = []
    for budget in ds.budgets:
        for seed in range(MAX_SEEDS):
            folds.append({"train": split.labeled(budget, seed), "val": split.val})
    return folds
