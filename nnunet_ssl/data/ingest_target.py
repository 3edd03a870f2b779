"""The new dataset of ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`): nnU-Net's folders, the new id and name,
the downstream dataset with its plans and configurations, and whether the id is free to (over)write."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

from nnunet_ssl.data.ingest_files import _load_json
from nnunet_ssl.errors import UserInputError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def _env_folder(var: str, purpose: str) -> Path:
    value = os.environ.get(var)
    if not value:
        raise UserInputError(
            f"The environment variable {var} is not set, so nnunet_ssl does not know where nnU-Net's {purpose} "
            f"datasets live. Fix: export {var}=/path/to/{var} (the same folder nnU-Net uses; see nnU-Net's "
            f"documentation/setting_up_paths.md), then run again.")
    return Path(value).expanduser()


def _check_dataset_id(dataset_id) -> int:
    try:
        dataset_id = int(dataset_id)
    except (TypeError, ValueError):
        raise UserInputError(f"Dataset id '{dataset_id}' is not an integer. Fix: pass a free id between 1 and 999.")
    if not 1 <= dataset_id <= 999:
        raise UserInputError(f"Dataset id {dataset_id} is out of range. Fix: pass a free id between 1 and 999 "
                             f"(nnU-Net names datasets DatasetXXX_NAME with three digits).")
    return dataset_id


def _new_dataset_name(dataset_id: int, dataset_name: Optional[str], downstream_name: str) -> Tuple[str, str]:
    """``(name part, DatasetXXX_NAME)`` of the new dataset, checked."""
    if downstream_name[7:10] == f"{dataset_id:03d}":
        raise UserInputError(f"The new dataset id {dataset_id} is the id of the downstream dataset "
                             f"{downstream_name}. Fix: choose another, free id for the unlabeled images.")

    if dataset_name is None or str(dataset_name).strip() == "":
        dataset_name = downstream_name.split("_", 1)[1] + "Unlabeled" if "_" in downstream_name else "Unlabeled"
    dataset_name = str(dataset_name).strip()
    m = re.match(r"^Dataset(\d{3})_(.+)$", dataset_name)
    if m:
        if int(m.group(1)) != dataset_id:
            raise UserInputError(f"Dataset name '{dataset_name}' carries id {int(m.group(1))} but the dataset id is "
                                 f"{dataset_id}. Fix: pass only the name part (e.g. '{m.group(2)}').")
        dataset_name = m.group(2)
    if not _NAME_RE.match(dataset_name):
        raise UserInputError(f"Dataset name '{dataset_name}' is not usable as a folder name. Fix: use letters, "
                             f"digits, '_' and '-' only (e.g. 'BrainMRIUnlabeled').")
    return dataset_name, f"Dataset{dataset_id:03d}_{dataset_name}"


def _check_id_free(dataset_id: int, full_name: str, raw_root: Path, pre_root: Path, results_root: Optional[Path],
                   overwrite: bool) -> List[Path]:
    """The existing folders of this id (only ours, and only with ``overwrite``); raises when the id is taken."""
    existing = _dataset_folders_for_id(raw_root, dataset_id) + _dataset_folders_for_id(pre_root, dataset_id)
    if existing:
        if not overwrite:
            raise UserInputError(
                f"Dataset id {dataset_id} is already taken by {', '.join(str(p) for p in existing)}. Fix: choose "
                f"another id, or pass --overwrite (overwrite=True) to replace it; overwriting only works for an "
                f"unlabeled dataset made by nnunet_ssl ingest.")
        foreign = [p for p in existing if not _is_nnunet_ssl_dataset(p)]
        if foreign:
            raise UserInputError(
                f"Refusing to overwrite {', '.join(str(p) for p in foreign)}: it is not an unlabeled dataset made by "
                f"nnunet_ssl ingest (it may hold your labeled data). Fix: choose another, free dataset id.")
    if results_root is not None:
        clash = [p for p in _dataset_folders_for_id(results_root, dataset_id) if p.name != full_name]
        if clash:
            raise UserInputError(
                f"Dataset id {dataset_id} is used by {clash[0]} in nnUNet_results under another name, which would "
                f"make the id ambiguous for nnU-Net. Fix: choose another id, name the dataset "
                f"'{clash[0].name.split('_', 1)[1]}', or remove that results folder.")
    return existing


def _dataset_folders_for_id(root: Path, dataset_id: int) -> List[Path]:
    if not root.is_dir():
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def _is_nnunet_ssl_dataset(folder: Path) -> bool:
    """True only for folders written by :func:`ingest_unlabeled` (raw or preprocessed)."""
    dataset_json = folder / "dataset.json"
    if dataset_json.is_file():
        try:
            meta = _load_json(dataset_json).get("nnunet_ssl")
        except (OSError, ValueError, AttributeError):
            return False
        # a folder with labels is never ours, whatever its dataset.json says
        return isinstance(meta, dict) and meta.get("unlabeled") is True and not (folder / "labelsTr").exists()
    return (folder / "nnunet_ssl_ingest.json").is_file()


def _resolve_downstream(downstream: Union[str, int], raw_root: Path, pre_root: Path) -> str:
    if isinstance(downstream, str) and downstream.startswith("Dataset"):
        return downstream
    try:
        ds_id = int(downstream)
    except (TypeError, ValueError):
        raise UserInputError(
            f"Downstream dataset '{downstream}' is neither a dataset id (e.g. 501) nor a dataset name (e.g. "
            f"Dataset501_HippoSmall). Fix: pass the id or full name of the labeled dataset you will fine-tune on.")
    names = sorted({p.name for root in (pre_root, raw_root) for p in _dataset_folders_for_id(root, ds_id)})
    if not names:
        raise UserInputError(
            f"Downstream dataset {ds_id} was not found: no folder Dataset{ds_id:03d}_* in nnUNet_preprocessed "
            f"({pre_root}) or nnUNet_raw ({raw_root}). Fix: check the id, or set nnUNet_raw / nnUNet_preprocessed to "
            f"the folders that hold the downstream dataset.")
    if len(names) > 1:
        raise UserInputError(
            f"Downstream dataset id {ds_id} is ambiguous: found {names} in nnUNet_raw/nnUNet_preprocessed. Fix: pass "
            f"the full dataset name instead of the id, or remove the stale folder.")
    return names[0]


def _load_downstream(name: str, plans_identifier: str, raw_root: Path, pre_root: Path) -> Tuple[dict, dict]:
    pre_folder = pre_root / name
    ds_id = name[7:10]
    plan_cmd = (f"nnUNetv2_plan_and_preprocess -d {int(ds_id) if ds_id.isdigit() else name} -c 3d_fullres "
                f"(or only plan it: nnUNetv2_plan_experiment -d {int(ds_id) if ds_id.isdigit() else name})")
    if not pre_folder.is_dir():
        if not (raw_root / name).is_dir():
            raise UserInputError(
                f"Downstream dataset {name} was not found in nnUNet_preprocessed ({pre_root}) or nnUNet_raw "
                f"({raw_root}). Fix: check the name, or set nnUNet_raw / nnUNet_preprocessed to the folders that hold "
                f"the downstream dataset.")
        where = "exists in nnUNet_raw but "
        raise UserInputError(
            f"Downstream dataset {name} {where}has not been planned: {pre_folder} does not exist. nnunet_ssl copies "
            f"the downstream plans, so they must exist first. Fix: run {plan_cmd}.")
    plans_file = pre_folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        available = []
        for p in sorted(pre_folder.glob("*.json")):
            try:
                if "configurations" in _load_json(p):
                    available.append(p.stem)
            except (OSError, ValueError):
                pass
        hint = (f" Available plans: {', '.join(available)} (choose one with -p / plans_identifier)."
                if available else "")
        raise UserInputError(
            f"Downstream dataset {name} has no plans '{plans_identifier}': {plans_file} is missing.{hint} Fix: run "
            f"{plan_cmd}{' with the planner that makes these plans' if plans_identifier != 'nnUNetPlans' else ''}.")
    plans = _load_json(plans_file)
    dataset_json = None
    for candidate in (pre_folder / "dataset.json", raw_root / name / "dataset.json"):
        if candidate.is_file():
            dataset_json = _load_json(candidate)
            break
    if dataset_json is None:
        raise UserInputError(
            f"Downstream dataset {name} has no dataset.json (looked in {pre_folder} and {raw_root / name}). Fix: "
            f"re-run {plan_cmd}, which copies it into nnUNet_preprocessed.")
    return plans, dataset_json


def _select_configurations(plans: dict, configurations: Optional[Iterable[str]], downstream: str,
                           plans_identifier: str) -> List[str]:
    available = list(plans.get("configurations", {}).keys())
    if isinstance(configurations, str):
        configurations = [configurations]
    if configurations is not None:
        configurations = list(configurations)
    if not configurations:
        chosen = [c for c in available if "data_identifier" in plans["configurations"][c]]
        if not chosen:
            raise UserInputError(
                f"The plans '{plans_identifier}' of {downstream} have no configuration with a data_identifier "
                f"(configurations: {available}). Fix: re-plan the downstream dataset with nnUNetv2_plan_experiment.")
        return chosen
    chosen = []
    for c in configurations:
        if c not in available:
            raise UserInputError(
                f"Configuration '{c}' is not in the plans '{plans_identifier}' of {downstream}. Available "
                f"configurations: {', '.join(available)}. Fix: pick one of these with -c.")
        if c not in chosen:
            chosen.append(c)
    return chosen
