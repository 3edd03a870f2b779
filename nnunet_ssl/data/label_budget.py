"""Label budgets: fine-tune with only N labeled cases of a fold's training cases.

Used through the trainers' ``NNUNET_SSL_SETTINGS`` (:class:`nnunet_ssl_trainers.fold_label_budget.FoldLabelBudget`)::

    label_budget=N            # N labeled cases, chosen with label_seed (default 0)
    label_seed=S
    labeled_cases_file=PATH   # or an explicit list: .json (a list, or {"labeled": [...]}) or .txt (one id a line)
    budget_rest=unused        # the fold's other training cases: unused (default) or unlabeled (semi-supervised pool)

Selection rule (deterministic and nested): the fold's training keys are sorted, permuted with
``numpy.random.RandomState(seed)`` and the first N are taken. The permutation does not depend on N, so for one seed
the 5-case set is a subset of the 10-case set, and so on. Validation keys are never touched.

Everything here is plain Python (no nnU-Net import), so it is tested without a trainer.
"""
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.settings import Setting

__all__ = ["LABEL_BUDGET_SETTINGS", "BUDGET_REST_CHOICES", "BudgetSplit", "seeded_selection", "read_case_list",
           "apply_label_budget"]

BUDGET_REST_CHOICES = ("unused", "unlabeled")
LABEL_BUDGET_SETTINGS = {
    "label_budget": Setting(int, min=1),
    "label_seed": int,
    "labeled_cases_file": str,
    "budget_rest": Setting(str, choices=BUDGET_REST_CHOICES),
}


@dataclass
class BudgetSplit:
    """The labeled cases of a fold and what is left of its training cases."""

    labeled: List[str]
    rest: List[str]
    budget_rest: str = "unused"
    source: str = ""
    num_train_cases: int = 0
    notes: List[str] = field(default_factory=list)

    @property
    def unlabeled(self) -> List[str]:
        """Cases moved into the unlabeled pool (empty unless ``budget_rest=unlabeled``)."""
        return list(self.rest) if self.budget_rest == "unlabeled" else []

    def summary(self) -> str:
        rest_what = "moved to the unlabeled pool" if self.budget_rest == "unlabeled" else "not used"
        lines = [f"Label budget: {len(self.labeled)} of the {self.num_train_cases} training cases of this fold are "
                 f"labeled ({self.source}); the other {len(self.rest)} are {rest_what} (budget_rest="
                 f"{self.budget_rest}). Validation cases are unchanged.",
                 f"  labeled cases: {', '.join(self.labeled)}"]
        if self.rest:
            lines.append(f"  {'unlabeled' if self.budget_rest == 'unlabeled' else 'unused'} cases: "
                         f"{', '.join(self.rest)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"labeled": list(self.labeled), "rest": list(self.rest), "budget_rest": self.budget_rest,
                "source": self.source, "num_train_cases": self.num_train_cases}


def seeded_selection(train_keys: Sequence[str], budget: int, seed: int = 0) -> List[str]:
    """The first ``budget`` keys of the seeded permutation of the sorted keys (nested in ``budget``), sorted."""
    keys = sorted(set(str(k) for k in train_keys))
    order = np.random.RandomState(int(seed)).permutation(len(keys))
    return sorted(keys[i] for i in order[:int(budget)])


def read_case_list(path: str) -> List[str]:
    """Case ids from ``path``: ``.json`` (a list, or a dict with a ``labeled`` list) or text (one id a line;
    blank lines and ``#`` comments ignored). Duplicates are dropped, order kept."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise UserInputError(f"labeled_cases_file '{path}' does not exist. Fix: give the path of a .json list or a "
                             f".txt file with one case id per line.")
    if path.lower().endswith(".json"):
        try:
            with open(path) as f:
                content = json.load(f)
        except ValueError as e:
            raise UserInputError(f"labeled_cases_file '{path}' is not valid JSON ({e}). Fix: write a JSON list of "
                                 f"case ids, e.g. [\"case_001\", \"case_007\"].") from None
        if isinstance(content, dict) and "labeled" in content:
            content = content["labeled"]
        if not isinstance(content, list) or not all(isinstance(c, str) for c in content):
            raise UserInputError(f"labeled_cases_file '{path}' must hold a JSON list of case ids (strings) or a dict "
                                 f"with such a list under \"labeled\"; found {type(content).__name__}.")
        ids = [c.strip() for c in content]
    else:
        with open(path) as f:
            ids = [line.split("#", 1)[0].strip() for line in f]
    return list(dict.fromkeys(i for i in ids if i))


def _fold_text(fold) -> str:
    return f"fold {fold}" if fold is not None else "this fold"


def apply_label_budget(train_keys: Sequence[str], val_keys: Sequence[str] = (), label_budget: Optional[int] = None,
                       label_seed: int = 0, labeled_cases_file: Optional[str] = None, budget_rest: str = "unused",
                       fold=None) -> Optional[BudgetSplit]:
    """Split a fold's training keys into labeled cases and the rest. Returns None when no budget is set.

    Raises :class:`UserInputError` for a budget < 1 or larger than the fold's training cases, both a budget and a
    list file, an unknown ``budget_rest``, ids in the list file that are not training cases of the fold, and
    ``budget_rest=unlabeled`` without a budget.
    """
    budget_rest = (budget_rest or "unused").strip().lower()
    if budget_rest not in BUDGET_REST_CHOICES:
        raise UserInputError(f"budget_rest={budget_rest} is not valid. Fix: budget_rest=unused (the fold's other "
                             f"training cases are not used, default) or budget_rest=unlabeled (they join the "
                             f"unlabeled pool of a semi-supervised trainer).")
    if labeled_cases_file is not None and str(labeled_cases_file).strip() == "":
        labeled_cases_file = None
    if label_budget is not None and labeled_cases_file is not None:
        raise UserInputError(f"Both label_budget={label_budget} and labeled_cases_file={labeled_cases_file} are "
                             f"set. Fix: give either a number of labeled cases (with label_seed) or an explicit "
                             f"list, not both.")
    if label_budget is None and labeled_cases_file is None:
        if budget_rest == "unlabeled":
            raise UserInputError("budget_rest=unlabeled moves the training cases outside the label budget to the "
                                 "unlabeled pool, but no budget is set, so there are none. Fix: add label_budget=N "
                                 "(or labeled_cases_file=PATH) to NNUNET_SSL_SETTINGS.")
        return None

    train = sorted(set(str(k) for k in train_keys))
    if label_budget is not None:
        label_budget = int(label_budget)
        if label_budget < 1:
            raise UserInputError(f"label_budget={label_budget}: the budget must be at least 1 labeled case. Fix: "
                                 f"label_budget=N with 1 <= N <= {len(train)} (the training cases of "
                                 f"{_fold_text(fold)}).")
        if label_budget > len(train):
            raise UserInputError(f"label_budget={label_budget} is larger than the {len(train)} training cases of "
                                 f"{_fold_text(fold)}. Fix: choose label_budget <= {len(train)} (or another fold "
                                 f"split).")
        labeled = seeded_selection(train, label_budget, label_seed)
        source = f"seeded choice, label_budget={label_budget}, label_seed={label_seed}"
    else:
        requested = read_case_list(labeled_cases_file)
        if not requested:
            raise UserInputError(f"labeled_cases_file '{labeled_cases_file}' lists no case: the budget must be at "
                                 f"least 1 labeled case. Fix: write at least one case id into it.")
        train_set, val_set = set(train), set(str(k) for k in val_keys)
        unknown = [c for c in requested if c not in train_set]
        if unknown:
            in_val = [c for c in unknown if c in val_set]
            absent = [c for c in unknown if c not in val_set]
            parts = []
            if absent:
                parts.append(f"{len(absent)} unknown case id(s) not in the training cases of {_fold_text(fold)}: "
                             f"{', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
            if in_val:
                parts.append(f"{len(in_val)} case(s) that are validation cases of {_fold_text(fold)}: "
                             f"{', '.join(in_val[:10])}{' ...' if len(in_val) > 10 else ''}")
            raise UserInputError(
                f"labeled_cases_file '{labeled_cases_file}' lists " + " and ".join(parts) +
                f". Case ids look like '{train[0] if train else 'case_000'}' (no channel suffix, no file ending). "
                f"Fix: list only training cases of this fold (see splits_final.json in the preprocessed dataset "
                f"folder).")
        labeled = sorted(requested)
        source = f"list {labeled_cases_file}"
    labeled_set = set(labeled)
    rest = [k for k in train if k not in labeled_set]
    return BudgetSplit(labeled=labeled, rest=rest, budget_rest=budget_rest, source=source,
                       num_train_cases=len(train))
