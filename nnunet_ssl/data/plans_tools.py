"""Derived plans: the same preprocessing, a smaller network or batch (for CPU demos, tests and quick benchmarks).

``derive_plans`` copies ``<source>.json`` of a planned dataset to ``<target>.json`` and shrinks the architecture
(``features_per_stage`` capped), the batch size and optionally the patch size. The ``data_identifier`` of every
configuration is kept, so the derived plans reuse the preprocessed data of the source plans (no re-preprocessing).
"""
import copy
import json
import os
from typing import Optional, Sequence

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.paths import dataset_name_from_id, require_env_folder


def derive_plans(dataset: str, source: str = "nnUNetPlans", target: str = "nnUNetPlansTiny",
                 max_features: Optional[int] = 32, batch_size: Optional[int] = None,
                 patch_size: Optional[Sequence[int]] = None, configurations: Optional[Sequence[str]] = None) -> str:
    """Write ``<target>.json`` next to ``<source>.json``; return its path."""
    name = dataset_name_from_id(dataset)
    folder = os.path.join(require_env_folder("nnUNet_preprocessed"), name)
    src = os.path.join(folder, source + ".json")
    if not os.path.isfile(src):
        raise UserInputError(f"{src} not found: plan {name} first (nnUNetv2_plan_and_preprocess -d {name}).")
    with open(src) as f:
        plans = json.load(f)
    new = copy.deepcopy(plans)
    new["plans_name"] = target
    for cfg_name, cfg in new["configurations"].items():
        if configurations is not None and cfg_name not in configurations:
            continue
        if "data_identifier" not in cfg:
            continue
        kwargs = cfg.get("architecture", {}).get("arch_kwargs", {})
        if max_features is not None and "features_per_stage" in kwargs:
            kwargs["features_per_stage"] = [min(int(f), int(max_features)) for f in kwargs["features_per_stage"]]
        if batch_size is not None:
            cfg["batch_size"] = int(batch_size)
        if patch_size is not None:
            if len(patch_size) != len(cfg["patch_size"]):
                continue
            cfg["patch_size"] = [int(p) for p in patch_size]
    out = os.path.join(folder, target + ".json")
    with open(out, "w") as f:
        json.dump(new, f, indent=2)
    return out
