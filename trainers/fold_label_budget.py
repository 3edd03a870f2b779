"""The label budget of one trainer's fold: which training cases keep their labels, logged and written once.

    NNUNET_SSL_SETTINGS="label_budget=10,label_seed=0" nnUNetv2_train DATASET 3d_fullres 0 -tr SSLFinetuneTrainer

Only the selected training cases of the fold reach the dataloader (hence the supervised loss); the validation keys
are unchanged. The rule and the settings are in :mod:`nnunet_ssl.data.label_budget`. The choice is printed to the
training log and written to ``label_budget.json`` in the output folder.

A trainer holds one :class:`FoldLabelBudget` and calls it from its ``do_split`` (composition, not a mixin: the
class chain between our trainers and ``nnUNetTrainer`` stays short). The settings stay attributes of the trainer
(``label_budget``, ``label_seed``, ``labeled_cases_file``, ``budget_rest``, ``uses_unlabeled_pool``), so
``NNUNET_SSL_SETTINGS`` sets them like any other.
"""
import json
import os

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.data.label_budget import apply_label_budget


class FoldLabelBudget:
    def __init__(self, trainer):
        self.trainer = trainer
        self._cache = None  # (tuple(train keys), BudgetSplit or None)

    def split(self, tr_keys, val_keys):
        """The :class:`BudgetSplit` of the fold (computed once, logged once) or None without a budget."""
        t = self.trainer
        key = tuple(sorted(str(k) for k in tr_keys))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rest_mode = (t.budget_rest or "unused").strip().lower()
        if rest_mode == "unlabeled" and not t.uses_unlabeled_pool:
            raise UserInputError(f"budget_rest=unlabeled: {t.__class__.__name__} does not train on unlabeled "
                                 f"data. Fix: drop budget_rest (the other cases are then unused) or use "
                                 f"-tr IDEALSemiSupervisedTrainer.")
        split = apply_label_budget(tr_keys, val_keys, label_budget=t.label_budget, label_seed=t.label_seed,
                                   labeled_cases_file=t.labeled_cases_file, budget_rest=rest_mode, fold=t.fold)
        self._cache = (key, split)
        if split is not None:
            t.print_to_log_file(split.summary())
            if getattr(t, "local_rank", 0) == 0 and t.output_folder is not None:
                os.makedirs(t.output_folder, exist_ok=True)
                with open(os.path.join(t.output_folder, "label_budget.json"), "w") as f:
                    json.dump(dict(split.to_dict(), fold=t.fold, label_budget=t.label_budget,
                                   label_seed=t.label_seed, labeled_cases_file=t.labeled_cases_file,
                                   validation=sorted(str(k) for k in val_keys)), f, indent=2)
        return split

    def labeled_keys(self, tr_keys, val_keys):
        """``do_split``'s result under the budget: the budget's labeled cases, the validation keys unchanged."""
        split = self.split(tr_keys, val_keys)
        return (list(tr_keys) if split is None else list(split.labeled)), val_keys

    def unlabeled_rest(self):
        """Training cases of the fold outside the budget that join the unlabeled pool (``budget_rest=unlabeled``);
        the trainer's ``do_split`` computes the split first when it has not run yet."""
        if self._cache is None:
            self.trainer.do_split()
        split = self._cache[1] if self._cache is not None else None
        return split.unlabeled if split is not None else []
