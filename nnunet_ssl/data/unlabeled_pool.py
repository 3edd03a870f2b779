"""The unlabeled pool of a semi-supervised trainer: nnU-Net datasets whose labels are never read.

Sources (any combination):

* an unlabeled dataset made by ``nnunet_ssl ingest --downstream ...`` (preprocessed with the training dataset's
  plans), named by the environment variable ``NNUNET_SSL_UNLABELED_DATASET`` (id or ``DatasetXXX_NAME``);
  :func:`resolve_unlabeled_dataset` checks it exists, is preprocessed for the configuration and was planned like the
  training dataset (:func:`nnunet_ssl.data.plans_compat.plans_differences`), and explains every problem;
* training cases of the fold outside a label budget (``budget_rest=unlabeled``).

:class:`UnlabeledPool` joins them behind nnU-Net's dataset interface (``identifiers``, ``load_case``), so
:class:`UnlabeledDataLoader` (nnU-Net's ``nnUNetDataLoader``: random crops only, no foreground oversampling, so
labels cannot steer the sampling) and nnU-Net's training transforms produce the batches. Cases are drawn uniformly
over the pool.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.data.plans_compat import ALL_ASPECTS, DATA_ASPECTS, plans_differences, resolve_configuration
from nnunet_ssl.trainer_names import UNLABELED_DATASET_ENV
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

__all__ = ["UNLABELED_DATASET_ENV", "PoolSource", "resolve_unlabeled_dataset", "UnlabeledPool",
           "UnlabeledDataLoader"]



@dataclass
class PoolSource:
    """Cases of one preprocessed folder that join the pool; ``prefix`` keeps their keys unique in the pool."""

    name: str
    folder: str
    identifiers: List[str]
    prefix: str = ""


def _load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _plans_candidates(folder: str, plans_name: str, configuration: str) -> List[Tuple[str, dict, bool]]:
    """(path, plans, same_name) of the plans files in ``folder`` that know ``configuration``; same name first."""
    out = []
    same = os.path.join(folder, plans_name + ".json")
    if os.path.isfile(same):
        out.append((same, _load_json(same), True))
        return out
    for fname in sorted(os.listdir(folder)):
        path = os.path.join(folder, fname)
        if not fname.endswith(".json") or not os.path.isfile(path):
            continue
        try:
            content = _load_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and "configurations" in content:
            out.append((path, content, False))
    return out


def resolve_unlabeled_dataset(value: str, plans: dict, configuration: str, num_input_channels: Optional[int],
                              training_dataset: str) -> PoolSource:
    """Find and check the unlabeled dataset named ``value`` (id or name). Raises :class:`UserInputError`.

    ``plans`` are the training plans (their ``plans_name`` is looked up first in the unlabeled dataset; if the
    unlabeled dataset was ingested with other plans, e.g. before ``derive_plans`` made a smaller network, a plans
    file with the same ``data_identifier`` is accepted when everything that shapes the preprocessed data matches).
    """
    from nnunet_ssl.paths import dataset_name_from_id, require_env_folder

    where = f"{UNLABELED_DATASET_ENV}={value}"
    pre_root = require_env_folder("nnUNet_preprocessed")
    try:
        name = dataset_name_from_id(str(value).strip())
    except UserInputError as e:
        raise UserInputError(f"{where}: unlabeled dataset not found. {e} Fix: ingest the unlabeled images with the "
                             f"plans of {training_dataset} (nnunet_ssl ingest -i FOLDER -d ID --downstream "
                             f"{training_dataset}) and set {UNLABELED_DATASET_ENV} to its id.") from None
    folder = os.path.join(pre_root, name)
    if not os.path.isdir(folder):
        raise UserInputError(f"{where}: unlabeled dataset not found: {folder} does not exist. Fix: ingest the "
                             f"unlabeled images (nnunet_ssl ingest -i FOLDER -d ID --downstream {training_dataset}) or "
                             f"correct the id/name.")
    if name == training_dataset:
        raise UserInputError(f"{where} names the training dataset itself. Its validation cases would leak into "
                             f"training. Fix: use an ingested unlabeled dataset, or put the fold's unused training "
                             f"cases into the pool with NNUNET_SSL_SETTINGS=label_budget=N,budget_rest=unlabeled.")
    plans_name = plans.get("plans_name", "nnUNetPlans")
    candidates = _plans_candidates(folder, plans_name, configuration)
    if not candidates:
        raise UserInputError(f"{where}: {folder} holds no nnU-Net plans file, so it was not ingested/preprocessed "
                             f"with the plans of {training_dataset}. Fix: nnunet_ssl ingest -i FOLDER -d ID "
                             f"--downstream {training_dataset} -p {plans_name}.")
    names = (f"plans of {training_dataset}", f"plans of {name}")
    reports = []
    chosen = None
    for path, other, same_name in candidates:
        aspects = ALL_ASPECTS if same_name else DATA_ASPECTS
        diffs = plans_differences(plans, other, configuration, aspects=aspects, names=names)
        if not diffs:
            chosen = (path, other)
            break
        reports.append((path, diffs))
    if chosen is None:
        lines = []
        for path, diffs in reports:
            lines.append(f"  {os.path.basename(path)}:")
            lines += [f"    {d}" for d in diffs]
        raise UserInputError(
            f"{where}: {name} was planned differently from {training_dataset} ({plans_name}, configuration "
            f"{configuration}):\n" + "\n".join(lines) + f"\nFix: re-ingest the unlabeled images with these plans "
            f"(nnunet_ssl ingest -i FOLDER -d ID --downstream {training_dataset} -p {plans_name} --overwrite).")
    cfg = resolve_configuration(chosen[1], configuration)
    data_folder = os.path.join(folder, cfg["data_identifier"])
    if not os.path.isdir(data_folder):
        raise UserInputError(f"{where}: {name} is not preprocessed for configuration {configuration}: the folder "
                             f"{data_folder} is missing. Fix: nnunet_ssl ingest -i FOLDER -d ID --downstream "
                             f"{training_dataset} -p {plans_name} -c {configuration} --overwrite.")
    dataset_json_path = os.path.join(folder, "dataset.json")
    if num_input_channels is not None and os.path.isfile(dataset_json_path):
        channels = _load_json(dataset_json_path).get("channel_names", {})
        if channels and len(channels) != int(num_input_channels):
            raise UserInputError(f"{where}: {name} has {len(channels)} input channel(s) ({channels}), the training "
                                 f"dataset {num_input_channels}. Fix: ingest images with the same channels.")
    try:
        identifiers = sorted(infer_dataset_class(data_folder).get_identifiers(data_folder))
    except (AssertionError, KeyError):
        identifiers = []
    if not identifiers:
        raise UserInputError(f"{where}: {data_folder} holds no preprocessed case. Fix: re-run nnunet_ssl ingest for "
                             f"{name}.")
    return PoolSource(name=name, folder=data_folder, identifiers=identifiers, prefix=f"{name}:")


class UnlabeledPool:
    """Several preprocessed folders behind nnU-Net's dataset interface (``identifiers``, ``load_case``)."""

    def __init__(self, sources: Sequence[PoolSource]):
        self.sources = list(sources)
        self._where: Dict[str, Tuple[object, str]] = {}
        for src in self.sources:
            if not src.identifiers:
                continue
            dataset = infer_dataset_class(src.folder)(src.folder, list(src.identifiers))
            for ident in src.identifiers:
                key = src.prefix + ident
                if key in self._where:
                    raise ValueError(f"duplicate case key {key} in the unlabeled pool")
                self._where[key] = (dataset, ident)
        self.identifiers = sorted(self._where)
        if not self.identifiers:
            raise UserInputError("The unlabeled pool is empty.")

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getitem__(self, key):
        return self.load_case(key)

    def load_case(self, key):
        dataset, ident = self._where[key]
        return dataset.load_case(ident)

    def describe(self) -> str:
        parts = [f"{len(s.identifiers)} case(s) from {s.name}" for s in self.sources if s.identifiers]
        return f"unlabeled pool: {len(self.identifiers)} case(s) ({'; '.join(parts)})"


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader taking random crops only (labels never steer where patches are taken)."""

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager, transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                         probabilistic_oversampling=False, transforms=transforms)
        self.has_ignore = False  # an ignore label would otherwise make get_bbox read class_locations

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        return super().get_bbox(data_shape, False, None, None, verbose)
