"""nnU-Net's folders and dataset names, read from the environment at call time (never cached at import)."""
import os
import re

from nnunet_ssl.errors import UserInputError

ENV_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def require_env_folder(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise UserInputError(f"{var} is not set. nnU-Net needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results: "
                             f"export {var}=/path/to/{var} (see nnU-Net's documentation/setting_up_paths.md).")
    return value


def _find_dataset(root: str, dataset_id: int):
    if not os.path.isdir(root):
        return None
    for entry in sorted(os.listdir(root)):
        if re.fullmatch(rf"Dataset{dataset_id:03d}_.+", entry):
            return entry
    return None


def dataset_name_from_id(dataset) -> str:
    """'4', 4, 'Dataset004_Hippocampus' -> 'Dataset004_Hippocampus' (looked up in preprocessed, then raw)."""
    text = str(dataset)
    if text.startswith("Dataset"):
        return text
    try:
        dataset_id = int(text)
    except ValueError:
        raise UserInputError(f"'{dataset}' is neither a dataset id nor a name of the form DatasetXXX_NAME.") from None
    for var in ("nnUNet_preprocessed", "nnUNet_raw"):
        root = os.environ.get(var)
        found = _find_dataset(root, dataset_id) if root else None
        if found:
            return found
    raise UserInputError(f"No dataset with id {dataset_id} in nnUNet_preprocessed "
                         f"({os.environ.get('nnUNet_preprocessed')}) or nnUNet_raw ({os.environ.get('nnUNet_raw')}).")
