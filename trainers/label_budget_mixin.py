"""Label budget for nnU-Net trainers: a mixin over ``do_split``.

    NNUNET_SSL_SETTINGS="label_budget=10,label_seed=0" nnUNetv2_train DATASET 3d_fullres 0 -tr SSLFinetuneTrainer

Only the selected training cases of the fold reach the dataloader (hence the supervised loss); the validation keys
are unchanged. The rule and the settings are in :mod:`nnunet_ssl.data.label_budget`. The choice is printed to the
training log and written to ``label_budget.json`` in the output folder. Put the mixin before the trainer class:
``class MyTrainer(LabelBudgetMixin, nnUNetTrainer)``, and add ``LABEL_BUDGET_SETTINGS`` to ``tunable_settings``.
"""
import json
import os

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.data.label_budget import LABEL_BUDGET_SETTINGS, BudgetSplit, apply_label_budget  # noqa: F401


class LabelBudgetMixin:
    # defaults; NNUNET_SSL_SETTINGS overrides them per instance
    label_budget = None
    label_seed = 0
    labeled_cases_file = None
    budget_rest = "unused"
    #: trainers that train on an unlabeled pool set this to True (then budget_rest=unlabeled is allowed)
    uses_unlabeled_pool = False

    _budget_cache = None  # (tuple(train keys), BudgetSplit or None)

    def label_budget_split(self, tr_keys, val_keys):
        """The :class:`BudgetSplit` of the fold (computed once, logged once) or None without a budget."""
        key = tuple(sorted(str(k) for k in tr_keys))
        if self._budget_cache is not None and self._budget_cache[0] == key:
            return self._budget_cache[1]
        rest_mode = (self.budget_rest or "unused").strip().lower()
        if rest_mode == "unlabeled" and not self.uses_unlabeled_pool:
            raise UserInputError(f"budget_rest=unlabeled: {self.__class__.__name__} does not train on unlabeled "
                                 f"data. Fix: drop budget_rest (the other cases are then unused) or use "
                                 f"-tr IDEALSemiSupervisedTrainer.")
        split = apply_label_budget(tr_keys, val_keys, label_budget=self.label_budget, label_seed=self.label_seed,
                                   labeled_cases_file=self.labeled_cases_file, budget_rest=rest_mode,
                                   fold=self.fold)
        self._budget_cache = (key, split)
        if split is not None:
            self.print_to_log_file(split.summary())
            if getattr(self, "local_rank", 0) == 0 and self.output_folder is not None:
                os.makedirs(self.output_folder, exist_ok=True)
                with open(os.path.join(self.output_folder, "label_budget.json"), "w") as f:
                    json.dump(dict(split.to_dict(), fold=self.fold, label_budget=self.label_budget,
                                   label_seed=self.label_seed, labeled_cases_file=self.labeled_cases_file,
                                   validation=sorted(str(k) for k in val_keys)), f, indent=2)
        return split

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        split = self.label_budget_split(tr_keys, val_keys)
        if split is None:
            return tr_keys, val_keys
        return list(split.labeled), val_keys

    def unlabeled_rest_keys(self):
        """Training cases of the fold outside the budget that join the unlabeled pool (``budget_rest=unlabeled``)."""
        if self._budget_cache is None:
            self.do_split()
        split = self._budget_cache[1] if self._budget_cache is not None else None
        return split.unlabeled if split is not None else []
