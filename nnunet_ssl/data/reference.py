"""The ReFs reference dataset: a labeled nnU-Net dataset preprocessed with the SAME plans as the unlabeled one.

How the user names it (nnU-Net habit: an environment variable, like ``nnUNet_raw``):

    export NNUNET_SSL_REFERENCE_DATASET=Dataset020_Reference     # or its id

or a file ``nnunet_ssl_reference.json`` (``{"reference_dataset": "Dataset020_Reference"}``) in the unlabeled
dataset's preprocessed folder, written by ``nnunet_ssl prepare-reference``; the variable wins.

``nnunet_ssl prepare-reference -r REF --ssl SSL_DATASET`` preprocesses REF with the unlabeled dataset's plans
(nnU-Net's own recipe: ``nnUNetv2_extract_fingerprint``, ``nnUNetv2_move_plans_between_datasets``,
``nnUNetv2_preprocess``) and writes that file. Its labels may differ from the downstream task: ReFs gives it a
segmentation head of its own, dropped after pre-training.

The reference gets plans of its own, ``<plans>_ssl<SSL id>`` (e.g. ``nnUNetPlans_ssl512.json``, data in
``nnUNetPlans_ssl512_3d_fullres``): the reference dataset's own plans and preprocessed data (a user's edited
``nnUNetPlans.json``) are never touched. The marker file records that identifier (``reference_plans``);
:func:`resolve_reference` reads it. A reference prepared by hand with nnU-Net's recipe under the unlabeled dataset's
plans name is still found.
"""
import json
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.paths import dataset_name_from_id, require_env_folder
from nnunet_ssl.data.plans_compat import DATA_ASPECTS, plans_differences
from nnunet_ssl.trainer_names import REFERENCE_ENV

REFERENCE_FILE = "nnunet_ssl_reference.json"


@dataclass
class ReferenceDataset:
    name: str
    folder: str            # preprocessed data folder (data_identifier)
    dataset_json: dict
    plans_file: str
    plans_name: str = ""   # the reference's plans identifier (``<plans>_ssl<id>`` when prepared by nnunet_ssl)


def _load(path):
    with open(path) as f:
        return json.load(f)


def named_reference(ssl_preprocessed_folder: str) -> Optional[str]:
    value = os.environ.get(REFERENCE_ENV, "").strip()
    if value:
        return value
    path = os.path.join(ssl_preprocessed_folder, REFERENCE_FILE)
    if os.path.isfile(path):
        return str(_load(path)["reference_dataset"])
    return None


def reference_plans_name(plans: str, ssl_dataset: str) -> str:
    """The plans identifier ``prepare-reference`` gives the reference of ``ssl_dataset``: ``<plans>_ssl<id>``."""
    return f"{plans}_ssl{ssl_dataset.split('_')[0][len('Dataset'):]}"


def reference_plans_of(pre: str, ssl_dataset: str, reference: str, plans: str) -> str:
    """The plans identifier under which ``reference`` holds the plans of ``ssl_dataset``: the one recorded in the
    marker, else ``<plans>_ssl<id>`` if present, else ``plans`` itself (a reference prepared by hand)."""
    marker = os.path.join(pre, ssl_dataset, REFERENCE_FILE)
    if os.path.isfile(marker):
        m = _load(marker)
        if m.get("reference_dataset") == reference and m.get("plans", plans) == plans and m.get("reference_plans"):
            return str(m["reference_plans"])
    own = reference_plans_name(plans, ssl_dataset)
    return own if os.path.isfile(os.path.join(pre, reference, own + ".json")) else plans


def resolve_reference(ssl_dataset: str, ssl_plans: dict, configuration: str, num_input_channels: int,
                      ssl_dataset_json: dict) -> ReferenceDataset:
    """Find and check the reference dataset of a ReFs run; explain every problem with its fix."""
    pre = require_env_folder("nnUNet_preprocessed")
    value = named_reference(os.path.join(pre, ssl_dataset))
    plans_name = ssl_plans.get("plans_name", "nnUNetPlans")
    fix = (f"nnunet_ssl prepare-reference -r REFERENCE_ID --ssl {ssl_dataset} -p {plans_name} -c {configuration}")
    if value is None:
        raise UserInputError(f"ReFs needs a labeled reference dataset: set {REFERENCE_ENV}=<id or DatasetXXX_NAME> "
                             f"(preprocessed with the plans of {ssl_dataset}: {fix}).")
    try:
        name = dataset_name_from_id(value)
    except UserInputError as e:
        raise UserInputError(f"Reference dataset '{value}' not found ({e}). Fix: {fix}") from None
    if name == ssl_dataset:
        raise UserInputError(f"The reference dataset {name} is the unlabeled pre-training dataset itself; ReFs "
                             f"needs a separate labeled dataset.")
    ref_plans_name = reference_plans_of(pre, ssl_dataset, name, plans_name)
    plans_file = os.path.join(pre, name, ref_plans_name + ".json")
    if not os.path.isfile(plans_file):
        raise UserInputError(f"Reference dataset {name} is not preprocessed with the plans '{plans_name}' of "
                             f"{ssl_dataset} ({plans_file} missing). Fix: {fix}")
    ref_plans = _load(plans_file)
    # under its own plans identifier the data identifier differs by name only
    aspects = DATA_ASPECTS if ref_plans_name == plans_name else tuple(a for a in DATA_ASPECTS
                                                                       if a != "data_identifier")
    diffs = plans_differences(ssl_plans, ref_plans, configuration, aspects=aspects,
                              names=(f"unlabeled {ssl_dataset}", f"reference {name}"))
    if diffs:
        raise UserInputError(f"Reference dataset {name} was planned differently from {ssl_dataset}:\n  "
                             + "\n  ".join(diffs) + f"\nFix: {fix}")
    data_identifier = ref_plans["configurations"][configuration]["data_identifier"]
    folder = os.path.join(pre, name, data_identifier)
    if not os.path.isdir(folder) or not os.listdir(folder):
        raise UserInputError(f"Reference dataset {name} is planned but not preprocessed for {configuration}: "
                             f"{folder} is missing or empty. Fix: nnUNetv2_preprocess -d {name} -plans_name "
                             f"{ref_plans_name} -c {configuration}")
    ref_json = _load(os.path.join(pre, name, "dataset.json"))
    ref_channels = len(ref_json.get("channel_names", ref_json.get("modality", {})))
    if ref_channels != num_input_channels:
        raise UserInputError(f"Reference dataset {name} has {ref_channels} input channels, the unlabeled dataset "
                             f"{ssl_dataset} has {num_input_channels}. Both must have the same channels.")
    downstream = (ssl_dataset_json.get("nnunet_ssl") or {}).get("downstream_dataset")
    if downstream and downstream == name:
        warnings.warn(f"The ReFs reference dataset {name} is also the downstream dataset the unlabeled data was "
                      f"planned for: if you evaluate on it, its labels have been seen during pre-training. Use a "
                      f"different labeled dataset as reference, or evaluate on cases outside it.")
    return ReferenceDataset(name, folder, ref_json, plans_file, ref_plans_name)


def _json_differences(a: dict, b: dict) -> List[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def prepare_reference(reference: str, ssl_dataset: str, plans: str = "nnUNetPlans",
                      configurations: Optional[List[str]] = None, num_processes: int = 2) -> str:
    """Preprocess a labeled dataset with the plans of the unlabeled dataset, under a plans identifier of its own
    (:func:`reference_plans_name`), and record it as its reference. The reference's existing plans, preprocessed
    data and ``dataset.json`` are left as they are."""
    from nnunet_ssl.cli.commands import run_nnunet
    pre = require_env_folder("nnUNet_preprocessed")
    raw = require_env_folder("nnUNet_raw")
    ssl_name = dataset_name_from_id(ssl_dataset)
    ref_name = dataset_name_from_id(reference)
    if not os.path.isfile(os.path.join(pre, ssl_name, plans + ".json")):
        raise UserInputError(f"{ssl_name} has no plans '{plans}': ingest it first (nnunet_ssl ingest).")
    ref_id = ref_name.split("_")[0][len("Dataset"):]
    ssl_id = ssl_name.split("_")[0][len("Dataset"):]
    ref_plans = reference_plans_name(plans, ssl_name)
    # nnUNetv2_preprocess reads dataset.json from the preprocessed folder (the planner normally copies it there)
    raw_json, pre_json = os.path.join(raw, ref_name, "dataset.json"), os.path.join(pre, ref_name, "dataset.json")
    if os.path.isfile(pre_json):
        differ = _json_differences(_load(pre_json), _load(raw_json)) if os.path.isfile(raw_json) else []
        if differ:
            raise UserInputError(
                f"{pre_json} differs from {raw_json} (keys: {', '.join(differ)}). nnUNetv2_preprocess would use the "
                f"preprocessed one; nnunet_ssl does not replace your file. Make the two agree (copy the one you "
                f"mean over the other), then run prepare-reference again.")
    if not os.path.isfile(os.path.join(pre, ref_name, "dataset_fingerprint.json")):
        run_nnunet("nnUNetv2_extract_fingerprint", ["-d", ref_id, "-np", num_processes])
    run_nnunet("nnUNetv2_move_plans_between_datasets", ["-s", ssl_id, "-t", ref_id, "-sp", plans, "-tp", ref_plans])
    if not os.path.isfile(pre_json):
        import shutil
        shutil.copyfile(raw_json, pre_json)
    configs = configurations or ["3d_fullres"]
    run_nnunet("nnUNetv2_preprocess", ["-d", ref_id, "-plans_name", ref_plans, "-c", *configs,
                                       "-np", *([num_processes] * len(configs))])
    with open(os.path.join(pre, ssl_name, REFERENCE_FILE), "w") as f:
        json.dump({"reference_dataset": ref_name, "plans": plans, "reference_plans": ref_plans}, f, indent=2)
    return ref_name
