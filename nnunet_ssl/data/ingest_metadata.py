"""The metadata files ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`) writes: ``dataset.json``, our
``dataset_fingerprint.json`` and the ``nnunet_ssl_ingest.json`` record."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Dict, List

from nnunet_ssl.data.ingest_files import _version, _write_json


def _dataset_json(channel_names, file_ending: str, dataset_name: str, plans_identifier: str, downstream_name: str,
                  input_path: Path, reader_name: str) -> dict:
    return {
        "channel_names": channel_names,
        "labels": {"background": 0},
        "numTraining": 0,
        "file_ending": file_ending,
        "name": dataset_name,
        "description": f"Unlabeled images for self-supervised pre-training with the plans '{plans_identifier}' of "
                       f"{downstream_name}; made by nnunet_ssl ingest from {input_path}.",
        "overwrite_image_reader_writer": reader_name,
        "nnunet_ssl": {"unlabeled": True, "downstream_dataset": downstream_name,
                       "plans_identifier": plans_identifier},
    }


def _write_metadata(tmp_raw: Path, tmp_pre: Path, dataset_json: dict, plans: dict, plans_identifier: str,
                    ok: List[dict], cases, skipped: Dict[str, str], downstream_name: str, input_path: Path,
                    config_names, data_identifiers: Dict[str, str], file_ending: str, converted: bool,
                    reader_name: str, notes: List[str]) -> None:
    """dataset.json (raw and preprocessed), the plans, our fingerprint and the ingest record."""
    import numpy as np

    _write_json(dataset_json, tmp_raw / "dataset.json")
    _write_json(dataset_json, tmp_pre / "dataset.json")
    _write_json(plans, tmp_pre / f"{plans_identifier}.json")
    fingerprint = {
        "spacings": [r["spacing"] for r in ok],
        "shapes_after_crop": [r["shape_after_crop"] for r in ok],
        "foreground_intensity_properties_per_channel": {},
        "median_relative_size_after_cropping": float(np.median([r["relative_size_after_cropping"] for r in ok])),
        "nnunet_ssl": {
            "note": "Unlabeled dataset: there is no foreground, so no foreground intensity statistics. The "
                    "plans keep the downstream dataset's foreground_intensity_properties_per_channel "
                    "(used by CT normalisation).",
            "downstream_dataset": downstream_name,
        },
    }
    _write_json(fingerprint, tmp_pre / "dataset_fingerprint.json")
    _write_json({
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "nnunet_ssl_version": _version(),
        "input_folder": str(input_path),
        "downstream_dataset": downstream_name,
        "plans_identifier": plans_identifier,
        "configurations": list(config_names),
        "data_identifiers": data_identifiers,
        "file_ending": file_ending,
        "converted_to_nifti": converted,
        "image_reader_writer": reader_name,
        "cases": {r["case"]: cases[r["case"]].files for r in ok},
        "preprocessed_shapes": {r["case"]: r["preprocessed_shapes"] for r in ok},
        "skipped": dict(skipped),
        "notes": notes,
    }, tmp_pre / "nnunet_ssl_ingest.json")
