"""The trainers of the cost benchmark: found by name, built in this process, with a few batches prefetched.

* :func:`trainer_class`: stock ``nnUNetTrainer`` or nnU-Net's own lookup (``nnUNetv2_train -tr NAME``: nnU-Net's
  trainers, then the ``nnUNet_extTrainer`` folders, where :mod:`nnunet_ssl.autoregister` puts ours). The library
  never imports the trainer package itself.
* :func:`build`: a trainer built the way nnU-Net's ``get_trainer_from_args`` does (plans dict with
  ``continue_training=False``, dataset.json, device), then ``on_train_start()``, ``on_epoch_start()`` and
  ``on_train_epoch_start()`` like ``run_training``; ``--prefetch`` batches of its training loader are drawn (and of
  the ReFs reference loader and the unlabeled loader of ``IDEALSemiSupervisedTrainer``, which ``train_step`` draws
  itself, replaced by a cycle of them), so timing never includes data loading.
* :func:`refs_base`: the plain SSL trainer whose objective a ReFs fish trainer uses (its time target).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import traceback
from pathlib import Path
from typing import List, Optional

from nnunet_ssl.benchmark import common as bc
from nnunet_ssl.benchmark.cost_measure import batch_bytes
from nnunet_ssl.errors import UserInputError
from nnunet_ssl.trainer_names import METHOD_TRAINERS

STOCK_TRAINER = "nnUNetTrainer"
SSL_BASE_TRAINER = "nnUNetSSLTrainer"  # the base of the pre-training trainers (they train on the unlabeled dataset)


def trainer_class(name: str):
    """The trainer class ``nnUNetv2_train -tr NAME`` would use (the same class objects as the trainer package's)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    if name == STOCK_TRAINER:
        return nnUNetTrainer
    from nnunet_ssl.cli.doctor import find_trainer_quietly
    try:
        return find_trainer_quietly(name)
    except RuntimeError:
        raise UserInputError(f"trainer '{name}' not found by nnU-Net's lookup (neither among nnU-Net's trainers nor "
                             f"in nnUNet_extTrainer={os.environ.get('nnUNet_extTrainer', '')}). Fix: check the "
                             f"name (`nnunet_ssl doctor` lists ours).") from None


def dataset_for(cls, data: dict) -> str:
    """Pre-training trainers train on the unlabeled dataset, the others on the labeled downstream dataset."""
    return data["unlabeled"] if issubclass(cls, trainer_class(SSL_BASE_TRAINER)) else data["downstream"]


def refs_base(name: str) -> Optional[str]:
    """The plain SSL trainer with the objective a ReFs fish trainer uses (None for non-ReFs, cosine or
    no-matching variants). A ReFs trainer names its objective in ``objective_class``, as the SSL trainers do."""
    if not name.startswith("ReFsTrainer") or name.endswith(("_cosine", "_noMatching")):
        return None
    try:
        objective = trainer_class(name).objective_class
    except Exception:
        return None
    if objective is None:
        return None
    for plain in METHOD_TRAINERS.values():
        if plain.startswith("ReFsTrainer"):
            continue
        try:
            if trainer_class(plain).objective_class is objective:
                return plain
        except Exception:
            continue
    return None


class Bench:
    """One built trainer with its prefetched batches."""

    def __init__(self, name: str):
        self.name = name
        self.trainer = None
        self.dataset = None
        self.batches: List[dict] = []
        self.error: Optional[str] = None
        self.state_bytes: Optional[int] = None
        self.batch_bytes = 0
        self._i = 0

    def next_batch(self):
        b = self.batches[self._i % len(self.batches)]
        self._i += 1
        return b


def finish_loader(loader):
    """Stop a loader's worker processes, if it has any (errors ignored)."""
    fin = getattr(loader, "_finish", None)
    if fin is not None:
        try:
            fin()
        except Exception:
            pass


def build(name: str, data: dict, args, device, log_path: Path) -> Bench:
    """Build trainer ``name`` (console output to ``log_path``); a failure is kept in ``Bench.error``, not raised."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    b = Bench(name)
    buf = io.StringIO()
    try:
        cls = trainer_class(name)
        b.dataset = dataset_for(cls, data)
        pre = Path(os.environ["nnUNet_preprocessed"]) / b.dataset
        plans = load_json(str(pre / f"{data['plans']}.json"))
        plans["continue_training"] = False
        if args.batch_size is not None:
            plans["configurations"][args.configuration]["batch_size"] = int(args.batch_size)
        dataset_json = load_json(str(pre / "dataset.json"))
        with contextlib.redirect_stdout(buf):
            t = cls(plans=plans, configuration=args.configuration, fold="all", dataset_json=dataset_json,
                    device=device)
            t.on_train_start()
            t.on_epoch_start()
            t.on_train_epoch_start()
        b.trainer = t
        b.batches = [next(t.dataloader_train) for _ in range(args.prefetch)]
        b.batch_bytes = sum(batch_bytes(x) for x in b.batches)
        for attr in ("dataloader_ref", "dataloader_unlabeled"):
            dl = getattr(t, attr, None)
            if dl is not None:
                extra = [next(dl) for _ in range(args.prefetch)]
                b.batch_bytes += sum(batch_bytes(x) for x in extra)
                finish_loader(dl)
                setattr(t, attr, itertools.cycle(extra))
        if device.type == "cuda":
            torch.cuda.synchronize()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit from exit_on_user_error included: report, go on with the others
        tail = "\n".join(buf.getvalue().strip().splitlines()[-8:])
        b.error = f"{type(e).__name__}: {e}".strip()
        with open(log_path, "a") as f:
            f.write(f"\n===== {name}: build FAILED\n{buf.getvalue()}\n{traceback.format_exc()}\n")
        bc.log(f"  {name}: could not be built ({b.error}); see {log_path}" + (f"\n{tail}" if tail else ""))
        return b
    with open(log_path, "a") as f:
        f.write(f"\n===== {name}\n{buf.getvalue()}\n")
    return b
