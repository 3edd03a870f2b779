"""Unlabeled images -> nnU-Net raw + preprocessed dataset planned with a DOWNSTREAM dataset's plans.

Self-supervised pre-training on dataset PT and fine-tuning on dataset FT only transfers every weight when both use
the same network. nnU-Net's own recipe (``nnUNetv2_move_plans_between_datasets``) needs labels on PT; this module
does the same job for a folder of unlabeled images::

    from nnunet_ssl.data.ingest import ingest_unlabeled
    report = ingest_unlabeled("/data/unlabeled_ct", 502, "AbdomenUnlabeled", downstream=501)

What it writes (all into hidden temporary siblings first, renamed into place at the very end, so a failure or
Ctrl-C leaves nothing behind):

``$nnUNet_raw/DatasetXXX_NAME/``
    ``imagesTr/<case>_XXXX<ending>``: the input files, copied. They are converted to ``.nii.gz`` with SimpleITK
    (origin, spacing and direction preserved; ``.nii`` is only gzip-compressed) when the input mixes file endings,
    uses a detached-header format (``.mhd``, ``.nhdr``), or uses an ending the downstream plans' reader cannot read.
    If that reader cannot read ``.nii.gz`` either, our plans use ``SimpleITKIO`` instead (said in the report).
    ``dataset.json``: the downstream ``channel_names``, ``labels = {"background": 0}`` (nnU-Net's LabelManager
    accepts a background-only label dict: one segmentation head, no foreground labels), ``numTraining``,
    ``file_ending``, ``overwrite_image_reader_writer`` (the reader our plans use) and
    ``"nnunet_ssl": {"unlabeled": true, "downstream_dataset": ..., "plans_identifier": ...}``. There is no
    ``labelsTr``.

``$nnUNet_preprocessed/DatasetXXX_NAME/``
    ``<plans_identifier>.json``: the downstream plans with only ``dataset_name`` changed (as
    ``nnUNetv2_move_plans_between_datasets`` does; spacing, patch size, architecture, normalisation schemes and the
    downstream ``foreground_intensity_properties_per_channel`` are kept, CT normalisation needs the latter).
    ``dataset.json`` (same as raw), ``dataset_fingerprint.json`` (our own: per-case ``spacings`` and
    ``shapes_after_crop``, ``median_relative_size_after_cropping``; ``foreground_intensity_properties_per_channel``
    is empty because there is no foreground without labels; nnU-Net's fingerprint extractor needs label files).
    One folder per configuration's ``data_identifier`` with the cases preprocessed by the plans' preprocessor class
    (``run_case(images, seg_file=None, ...)``) and saved like nnU-Net 2.8 does (``nnUNetDatasetBlosc2``:
    ``case.b2nd``, ``case_seg.b2nd``, ``case.pkl``). Without a label file nnU-Net's cropping makes the
    segmentation 0 inside the nonzero mask and -1 outside; ``class_locations`` is ``{}`` (no foreground labels), so
    nnU-Net's data loader falls back to random crops for "foreground" samples.
    ``nnunet_ssl_ingest.json``: input folder, downstream dataset, plans, configurations, cases, skipped files.
    No ``splits_final.json`` (nnU-Net makes a 5-fold split on first training; with fewer than 5 cases use fold
    ``all``) and no ``gt_segmentations`` (there are no labels to validate against).

The pre-trained network equals the downstream one except for the segmentation head (1 output channel here).
nnU-Net's ``load_pretrained_weights`` skips ``.seg_layers.`` anyway.

nnunetv2 is imported inside the functions, so ``import nnunet_ssl.data.ingest`` (and the CLI's ``--help``) stay fast.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from nnunet_ssl.errors import UserInputError

__all__ = ["IngestReport", "ingest_unlabeled", "add_ingest_arguments", "run_ingest_from_args"]

# Endings nnU-Net's readers know plus formats SimpleITK reads that we convert. Longest first for suffix matching.
_DETACHED_HEADER_ENDINGS = (".mhd", ".nhdr")
_EXTRA_ENDINGS = (".nii", ".nii.gz", ".mhd", ".nhdr", ".nrrd", ".mha", ".gipl", ".tif", ".tiff", ".png", ".bmp")
_TIF_ENDINGS = (".tif", ".tiff")
_COMPANION_ENDINGS = (".raw", ".zraw", ".raw.gz", ".json")  # data files of .mhd/.nhdr, spacing files of .tif
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TMP_TAG = ".nnunet_ssl-tmp-"
_OLD_TAG = ".nnunet_ssl-old-"


@dataclass
class IngestReport:
    """What :func:`ingest_unlabeled` did."""

    dataset_name: str
    raw_folder: str
    preprocessed_folder: str
    cases: List[str]
    skipped: Dict[str, str]  # input file -> reason
    configurations: List[str]
    downstream_dataset: str = ""
    plans_identifier: str = "nnUNetPlans"
    file_ending: str = ".nii.gz"
    converted_to_nifti: bool = False
    image_reader_writer: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def num_cases(self) -> int:
        return len(self.cases)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"Ingested {self.num_cases} unlabeled case(s) as {self.dataset_name} "
            f"(plans '{self.plans_identifier}' of {self.downstream_dataset}, configurations: "
            f"{', '.join(self.configurations)})",
            f"  raw:          {self.raw_folder}",
            f"  preprocessed: {self.preprocessed_folder}",
        ]
        if self.converted_to_nifti:
            lines.append("  images were converted to .nii.gz (geometry preserved)")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s):")
            lines.extend(f"    {f}: {r}" for f, r in self.skipped.items())
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------

def _env_folder(var: str, purpose: str) -> Path:
    value = os.environ.get(var)
    if not value:
        raise UserInputError(
            f"The environment variable {var} is not set, so nnunet_ssl does not know where nnU-Net's {purpose} "
            f"datasets live. Fix: export {var}=/path/to/{var} (the same folder nnU-Net uses; see nnU-Net's "
            f"documentation/setting_up_paths.md), then run again.")
    return Path(value).expanduser()


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _write_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=4, sort_keys=False, default=_json_default)


def _load_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _short_error(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines:
        text = lines[-1]
        if text.startswith("sitk::ERROR:"):
            text = text[len("sitk::ERROR:"):].strip()
    text = text or type(e).__name__
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


def _known_image_endings() -> List[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = set(_EXTRA_ENDINGS)
    for rw in LIST_OF_IO_CLASSES:
        endings.update(e.lower() for e in rw.supported_file_endings)
    return sorted(endings, key=len, reverse=True)


def _split_ending(filename: str, endings: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    low = filename.lower()
    for e in endings:
        if low.endswith(e) and len(filename) > len(e):
            return filename[: -len(e)], e
    return None, None


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


# ----------------------------------------------------------------------------------------------------------------
# downstream dataset
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# input folder
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class _Case:
    case_id: str
    files: Dict[int, str]  # channel -> path
    ending: str


def _scan_input(input_folder: Path, endings: Sequence[str]) -> Tuple[Dict[str, _Case], Dict[str, str], List[str]]:
    """Group image files by case. Returns cases, ignored files (-> reason), subfolders."""
    cases: Dict[str, _Case] = {}
    ignored: Dict[str, str] = {}
    subdirs: List[str] = []
    seen: Dict[Tuple[str, int], str] = {}
    companions = []
    for entry in sorted(os.scandir(input_folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subdirs.append(entry.name)
            continue
        stem, ending = _split_ending(entry.name, endings)
        if ending is None:
            companions.append(entry)
            continue
        m = _CHANNEL_RE.match(stem)
        case_id, channel = (m.group("case"), int(m.group("channel"))) if m else (stem, 0)
        if (case_id, channel) in seen:
            raise UserInputError(
                f"Two input files map to channel {channel:04d} of case '{case_id}': {seen[(case_id, channel)]} and "
                f"{entry.path}. nnU-Net names channels CASE_XXXX<ending>; a file without a _XXXX suffix counts as "
                f"channel 0000. Fix: rename or remove one of them.")
        seen[(case_id, channel)] = entry.path
        case = cases.setdefault(case_id, _Case(case_id, {}, ending))
        case.files[channel] = entry.path
        if case.ending != ending:
            case.ending = "mixed"
    for entry in companions:
        low = entry.name.lower()
        is_companion = any(low.endswith(e) for e in _COMPANION_ENDINGS)
        if not is_companion:
            ignored[entry.path] = "not an image file nnU-Net reads (unknown file ending)"
    return cases, ignored, subdirs


def _read_header(path: str) -> dict:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return {"dim": reader.GetDimension(), "size": tuple(reader.GetSize()), "spacing": tuple(reader.GetSpacing()),
            "components": reader.GetNumberOfComponents()}


def _header_problem(path: str, uses_sitk: bool) -> Tuple[Optional[str], Optional[dict]]:
    """Cheap check before any work: readable header, 3D, one component. Returns (problem, header)."""
    if not uses_sitk:
        return None, None
    try:
        h = _read_header(path)
    except Exception as e:  # noqa: BLE001 - any reader error means "unreadable"
        return f"not readable as an image ({_short_error(e)})", None
    if h["dim"] == 2 or (h["dim"] == 3 and min(h["size"]) == 1):
        return (f"2D image (size {list(h['size'])}); nnunet_ssl ingests 3D volumes only. Stack 2D slices into a "
                f"3D volume, or train on 2D data with nnU-Net's own tools"), h
    if h["dim"] == 4:
        return (f"4D image (size {list(h['size'])}); store each channel/time point as its own 3D file "
                f"CASE_0000, CASE_0001, ..."), h
    if h["dim"] != 3:
        return f"{h['dim']}D image; nnunet_ssl ingests 3D volumes only", h
    if h["components"] != 1:
        return (f"{h['components']}-component (vector/RGB) pixels; store each component as its own 3D file "
                f"CASE_0000, CASE_0001, ..."), h
    return None, h


# ----------------------------------------------------------------------------------------------------------------
# per-case work (runs in worker processes)
# ----------------------------------------------------------------------------------------------------------------

def _write_raw_copy(src: str, dst: str, src_ending: str, dst_ending: str, sidecar: Optional[str]) -> None:
    if src_ending == dst_ending:
        shutil.copyfile(src, dst)
    elif src_ending == ".nii" and dst_ending == ".nii.gz":
        with open(src, "rb") as fi, gzip.open(dst, "wb", compresslevel=6) as fo:
            shutil.copyfileobj(fi, fo, 1 << 20)
    else:
        import SimpleITK as sitk

        img = sitk.ReadImage(src)
        if src_ending in _TIF_ENDINGS and sidecar is not None and img.GetDimension() == 3:
            # nnU-Net's Tiff3DIO keeps the spacing in CASE.json, in numpy axis order
            spacing = _load_json(Path(sidecar)).get("spacing")
            if spacing is not None and len(spacing) == 3:
                img.SetSpacing([float(s) for s in spacing[::-1]])
        sitk.WriteImage(img, dst, True)


def _process_case(task: dict) -> dict:
    """Copy/convert one case into raw imagesTr and preprocess it for every requested data_identifier.

    Never raises for problems with the case's files: returns ``{"ok": False, "bad": {file: reason}}`` instead and
    removes what it wrote for this case.
    """
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    case = task["case"]
    sources: List[str] = task["sources"]
    result = {"case": case, "ok": False, "bad": {}}
    written: List[str] = []

    def fail(bad: Dict[str, str]) -> dict:
        for f in written:
            try:
                os.remove(f)
            except OSError:
                pass
        result["bad"] = bad
        return result

    raw_files = []
    for ch, src in enumerate(sources):
        dst = os.path.join(task["images_dir"], f"{case}_{ch:04d}{task['file_ending']}")
        try:
            _write_raw_copy(src, dst, task["src_endings"][ch], task["file_ending"], task.get("sidecar"))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            written.append(dst)
            return fail({src: f"not readable as an image ({_short_error(e)})"})
        written.append(dst)
        raw_files.append(dst)
    if task.get("sidecar") and task.get("copy_sidecar"):
        dst = os.path.join(task["images_dir"], f"{case}.json")
        shutil.copyfile(task["sidecar"], dst)
        written.append(dst)

    plans_manager = PlansManager(task["plans"])
    dataset_json = task["dataset_json"]
    label_manager = plans_manager.get_label_manager(dataset_json)
    foreground = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    n_channels = task["num_channels"]

    for config_name, out_dir in task["targets"]:
        cm = plans_manager.get_configuration(config_name)
        preprocessor = cm.preprocessor_class(verbose=False)
        try:
            data, seg, props = preprocessor.run_case(raw_files, None, plans_manager, cm, dataset_json)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            return fail(_diagnose(sources, raw_files, plans_manager, e))
        if data.shape[0] != n_channels:
            return fail({src: f"holds {data.shape[0]} channels after reading, expected {n_channels} (one 3D image "
                              f"per channel file)" for src in sources})
        if data.ndim != 4:
            return fail({src: f"read as a {data.ndim - 1}D image; only 3D volumes are supported" for src in sources})
        if not np.all(np.isfinite(data)):
            return fail({src: "contains NaN or infinite values" for src in sources})
        # no labels: no foreground locations to oversample (nnU-Net's loader then crops randomly)
        props["class_locations"] = {(tuple(k) if isinstance(k, list) else k): [] for k in foreground}
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16, copy=False)
        blocks, chunks = comp_blosc2_params(data.shape, tuple(cm.patch_size), data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(cm.patch_size), seg.itemsize)
        out = os.path.join(out_dir, case)
        written.extend([out + ".b2nd", out + "_seg.b2nd", out + ".pkl"])
        nnUNetDatasetBlosc2.save_case(data, seg, props, out, chunks=chunks, blocks=blocks, chunks_seg=chunks_seg,
                                      blocks_seg=blocks_seg)
        if "spacing" not in result:
            tf = plans_manager.transpose_forward
            shape_t = list(props["shape_after_cropping_and_before_resampling"])
            shape = [0] * len(shape_t)
            for i, ax in enumerate(tf):
                shape[ax] = int(shape_t[i])
            result["spacing"] = [float(s) for s in props["spacing"]]
            result["shape_after_crop"] = shape
            result["relative_size_after_cropping"] = float(
                np.prod(shape_t, dtype=np.float64) / np.prod(props["shape_before_cropping"], dtype=np.float64))
        result.setdefault("preprocessed_shapes", {})[cm.data_identifier] = [int(s) for s in data.shape]
    result["ok"] = True
    return result


def _diagnose(sources: List[str], raw_files: List[str], plans_manager, error: Exception) -> Dict[str, str]:
    """Find which file of a failed case is at fault."""
    rw = plans_manager.image_reader_writer_class()
    bad = {}
    shapes = []
    for src, f in zip(sources, raw_files):
        try:
            data, props = rw.read_images([f])
            shapes.append((tuple(data.shape[1:]), tuple(props.get("spacing", ()))))
        except Exception as e:  # noqa: BLE001
            bad[src] = f"not readable by nnU-Net's {type(rw).__name__} ({_short_error(e)})"
    if bad:
        return bad
    if len(set(shapes)) > 1:
        desc = ", ".join(f"{os.path.basename(s)}: shape {sh} spacing {sp}" for s, (sh, sp) in zip(sources, shapes))
        return {src: f"the channels of this case differ in shape or spacing ({desc})" for src in sources}
    return {src: f"preprocessing failed ({_short_error(error)})" for src in sources}


# ----------------------------------------------------------------------------------------------------------------
# main entry point
# ----------------------------------------------------------------------------------------------------------------

def ingest_unlabeled(input_folder: Union[str, os.PathLike], dataset_id: int, dataset_name: Optional[str],
                     downstream: Union[str, int], plans_identifier: str = "nnUNetPlans",
                     configurations: Optional[Sequence[str]] = None, num_processes: Optional[int] = None,
                     skip_bad: bool = False, overwrite: bool = False, verbose: bool = True) -> IngestReport:
    """Turn a folder of unlabeled 3D images into nnU-Net dataset ``Dataset{dataset_id:03d}_{dataset_name}``.

    Args:
        input_folder: folder with images (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``, ``.tif`` ...).
            Channels by nnU-Net's suffix (``case_0000.nii.gz``, ``case_0001.nii.gz``); a file without a ``_XXXX``
            suffix is a single-channel case. Subfolders and hidden files are ignored.
        dataset_id: the new dataset's id (1-999), must be free in nnUNet_raw and nnUNet_preprocessed.
        dataset_name: name part of the new dataset; None -> ``<downstream name>Unlabeled``.
        downstream: id or name of the planned, labeled dataset whose plans (hence network) to use.
        plans_identifier: downstream plans file to copy (``nnUNetPlans``, ``nnUNetResEncUNetMPlans``, ...).
        configurations: configurations to preprocess; default every one with a data_identifier in the plans.
        num_processes: worker processes (default ``nnunetv2.configuration.default_num_processes``); 0/1 = serial.
        skip_bad: skip cases with unreadable files (listed in the report) instead of failing.
        overwrite: replace an existing dataset with this id, only if nnunet_ssl made it (never a labeled one).
        verbose: print progress and skipped files.

    Raises:
        UserInputError: for anything the user can fix; nothing is left on disk for the new id (also after
            Ctrl-C or SIGTERM; temporaries of a killed -9 run are removed by the next run for the same id).

    Workers are started with ``spawn`` (like nnU-Net): a script calling this with ``num_processes > 1`` needs an
    ``if __name__ == "__main__":`` guard.
    """
    raw_root = _env_folder("nnUNet_raw", "raw")
    pre_root = _env_folder("nnUNet_preprocessed", "preprocessed")
    results_env = os.environ.get("nnUNet_results")
    results_root = Path(results_env).expanduser() if results_env else None

    # ---- the new dataset's id and name
    try:
        dataset_id = int(dataset_id)
    except (TypeError, ValueError):
        raise UserInputError(f"Dataset id '{dataset_id}' is not an integer. Fix: pass a free id between 1 and 999.")
    if not 1 <= dataset_id <= 999:
        raise UserInputError(f"Dataset id {dataset_id} is out of range. Fix: pass a free id between 1 and 999 "
                             f"(nnU-Net names datasets DatasetXXX_NAME with three digits).")

    downstream_name = _resolve_downstream(downstream, raw_root, pre_root)
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
    full_name = f"Dataset{dataset_id:03d}_{dataset_name}"

    plans, downstream_json = _load_downstream(downstream_name, plans_identifier, raw_root, pre_root)
    config_names = _select_configurations(plans, configurations, downstream_name, plans_identifier)
    channel_names = downstream_json.get("channel_names", downstream_json.get("modality"))
    if not channel_names:
        raise UserInputError(f"The dataset.json of {downstream_name} has no 'channel_names'. Fix: add them (nnU-Net "
                             f"v2 dataset.json format) and re-run nnUNetv2_plan_and_preprocess.")
    n_channels = len(channel_names)

    # ---- is the id free?
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

    _remove_stale_temporaries(dataset_id, (raw_root, pre_root))

    # ---- input files
    input_path = Path(input_folder).expanduser()
    if not input_path.is_dir():
        raise UserInputError(f"Input folder {input_path} does not exist or is not a folder. Fix: pass the folder "
                             f"that holds the unlabeled images with -i.")
    input_path = input_path.resolve()
    endings = _known_image_endings()
    cases, skipped, subdirs = _scan_input(input_path, endings)
    if not cases:
        hint = f" It has subfolders ({', '.join(subdirs[:5])}): point -i at the folder with the image files." \
            if subdirs else ""
        others = f" Found only: {', '.join(os.path.basename(f) for f in list(skipped)[:5])}." if skipped else ""
        raise UserInputError(
            f"No images found in input folder {input_path} (it is empty or holds no file with an image ending "
            f"nnU-Net reads: {', '.join(sorted(set(endings)))}).{others}{hint} Fix: put the unlabeled 3D images "
            f"there, one file per channel named CASE_0000.nii.gz (single-channel files may omit _0000).")

    if verbose:
        for f, reason in skipped.items():
            print(f"nnunet_ssl ingest: ignoring {f}: {reason}")

    # channel layout must match the downstream dataset (not skippable: it is a naming problem)
    for c in cases.values():
        channels = sorted(c.files)
        if channels != list(range(n_channels)):
            files = ", ".join(os.path.basename(c.files[ch]) for ch in channels)
            raise UserInputError(
                f"Case '{c.case_id}' has {len(channels)} channel(s) (channel ids {['%04d' % ch for ch in channels]}: "
                f"{files}) but the downstream dataset {downstream_name} has {n_channels} channel(s) "
                f"({channel_names}). Fix: give every case exactly the channels _0000 ... _{n_channels - 1:04d} "
                f"(files without a _XXXX suffix count as _0000), or pick a downstream dataset with matching "
                f"channels.")

    # ---- how raw files are written: copy when the plans' reader reads the (single) ending, else .nii.gz
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    plans = dict(plans)
    notes: List[str] = []
    reader_name = plans.get("image_reader_writer", "SimpleITKIO")
    try:
        reader_cls = recursive_find_reader_writer_by_name(reader_name)
    except RuntimeError:
        raise UserInputError(f"The plans of {downstream_name} name the image reader '{reader_name}', which nnU-Net "
                             f"cannot find. Fix: re-plan the downstream dataset or install its reader.")
    case_endings = {c.ending for c in cases.values()}
    single = next(iter(case_endings)) if len(case_endings) == 1 else None
    reader_endings = [e.lower() for e in reader_cls.supported_file_endings]
    if single is not None and single != "mixed" and single not in _DETACHED_HEADER_ENDINGS \
            and single in reader_endings:
        file_ending, converted = single, False
    else:
        file_ending, converted = ".nii.gz", True
        why = ("the input mixes file endings" if single in (None, "mixed") else
               f"{single} has a separate data file" if single in _DETACHED_HEADER_ENDINGS else
               f"the downstream reader {reader_name} cannot read {single}")
        notes.append(f"images converted to .nii.gz because {why}")
        if ".nii.gz" not in reader_endings:
            notes.append(f"plans use SimpleITKIO instead of the downstream reader {reader_name}, which cannot read "
                         f".nii.gz; the axis convention may differ from the downstream dataset's")
            reader_name = SimpleITKIO.__name__
            plans["image_reader_writer"] = reader_name

    # ---- cheap header check of every file (unreadable, 2D, 4D, vector pixels)
    import numpy as np

    bad_cases: Dict[str, Dict[str, str]] = {}
    for c in cases.values():
        problems = {}
        headers = []
        for ch in sorted(c.files):
            f = c.files[ch]
            _, ending = _split_ending(os.path.basename(f), endings)
            uses_sitk = not (ending in _TIF_ENDINGS and not converted)
            problem, header = _header_problem(f, uses_sitk)
            if problem:
                problems[f] = problem
            elif header is not None:
                headers.append((f, header))
        if not problems and len(headers) > 1:
            ref = headers[0][1]
            if any(h["size"] != ref["size"] or not np.allclose(h["spacing"], ref["spacing"], rtol=1e-4)
                   for _, h in headers[1:]):
                desc = ", ".join(f"{os.path.basename(f)}: size {list(h['size'])} spacing "
                                 f"{[round(s, 4) for s in h['spacing']]}" for f, h in headers)
                problems = {f: f"the channels of case '{c.case_id}' differ in size or spacing ({desc})"
                            for f, _ in headers}
        if problems:
            bad_cases[c.case_id] = problems
    _handle_bad(bad_cases, cases, skipped, skip_bad, verbose)

    # ---- everything checked: build into temporary siblings, rename at the end
    import multiprocessing

    from tqdm import tqdm
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans["dataset_name"] = full_name
    dataset_json = {
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
    plans_manager = PlansManager(plans)
    data_identifiers: Dict[str, str] = {}
    for c in config_names:
        data_identifiers[c] = plans_manager.get_configuration(c).data_identifier

    if num_processes is None:
        num_processes = default_num_processes
    num_processes = max(0, min(int(num_processes), len(cases)))

    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_raw = raw_root / f".{full_name}{_TMP_TAG}{token}"
    tmp_pre = pre_root / f".{full_name}{_TMP_TAG}{token}"
    final_raw, final_pre = raw_root / full_name, pre_root / full_name
    moved_old: List[Tuple[Path, Path]] = []
    placed: List[Path] = []
    if verbose:
        print(f"nnunet_ssl ingest: {len(cases)} case(s) from {input_path} -> {full_name} "
              f"(plans '{plans_identifier}' of {downstream_name}; configurations {', '.join(config_names)}; "
              f"{'converting to .nii.gz' if converted else 'copying ' + file_ending + ' files'})")
    previous_sigterm = _sigterm_as_exit()
    try:
        raw_root.mkdir(parents=True, exist_ok=True)
        pre_root.mkdir(parents=True, exist_ok=True)
        images_dir = tmp_raw / "imagesTr"
        images_dir.mkdir(parents=True)
        tmp_pre.mkdir(parents=True)
        targets = []
        for ident in dict.fromkeys(data_identifiers.values()):
            (tmp_pre / ident).mkdir()
            config = next(c for c in config_names if data_identifiers[c] == ident)
            targets.append((config, str(tmp_pre / ident)))

        tasks = []
        for c in cases.values():
            sources = [c.files[ch] for ch in sorted(c.files)]
            src_endings = [_split_ending(os.path.basename(s), endings)[1] for s in sources]
            sidecar = input_path / f"{c.case_id}.json"
            is_tif = any(e in _TIF_ENDINGS for e in src_endings)
            tasks.append({
                "case": c.case_id, "sources": sources, "src_endings": src_endings, "images_dir": str(images_dir),
                "file_ending": file_ending, "plans": plans, "dataset_json": dataset_json, "targets": targets,
                "num_channels": n_channels,
                "sidecar": str(sidecar) if is_tif and sidecar.is_file() else None,
                "copy_sidecar": is_tif and not converted,
            })

        results = []
        with tqdm(total=len(tasks), desc="Ingesting cases", disable=not verbose) as bar:
            if num_processes <= 1:
                for t in tasks:
                    results.append(_process_case(t))
                    bar.update()
            else:
                # leaving the with-block terminates the workers, also on errors and Ctrl-C
                with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                    workers = list(pool._pool)  # a dead worker is replaced silently and its task never returns
                    pending = pool.imap_unordered(_process_case, tasks)
                    while len(results) < len(tasks):
                        try:
                            r = pending.next(timeout=0.5)
                        except multiprocessing.TimeoutError:
                            if not all(w.is_alive() for w in workers):
                                raise UserInputError(
                                    "A worker process died while ingesting (most often: out of memory; also: the "
                                    "calling script lacks an `if __name__ == '__main__':` guard). Fix: use fewer "
                                    "processes (-np 1), or guard the script's entry point.") from None
                            continue
                        results.append(r)
                        bar.update()

        failed = {r["case"]: r["bad"] for r in results if not r["ok"]}
        _handle_bad(failed, cases, skipped, skip_bad, verbose)
        ok = sorted((r for r in results if r["ok"]), key=lambda r: r["case"])
        case_ids = [r["case"] for r in ok]

        # ---- metadata
        dataset_json["numTraining"] = len(case_ids)
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
        report = IngestReport(
            dataset_name=full_name, raw_folder=str(final_raw), preprocessed_folder=str(final_pre), cases=case_ids,
            skipped=dict(skipped), configurations=list(config_names), downstream_dataset=downstream_name,
            plans_identifier=plans_identifier, file_ending=file_ending, converted_to_nifti=converted,
            image_reader_writer=reader_name, notes=notes)
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

        # ---- commit: move old (ours, overwrite) aside, rename new into place, then delete old
        for p in existing:
            aside = p.with_name(f".{p.name}{_OLD_TAG}{token}")
            p.rename(aside)
            moved_old.append((p, aside))
        tmp_raw.rename(final_raw)
        placed.append(final_raw)
        tmp_pre.rename(final_pre)
        placed.append(final_pre)
    except BaseException:
        for p in placed:
            shutil.rmtree(p, ignore_errors=True)
        for original, aside in moved_old:
            try:
                aside.rename(original)
            except OSError:
                pass
        shutil.rmtree(tmp_raw, ignore_errors=True)
        shutil.rmtree(tmp_pre, ignore_errors=True)
        raise
    finally:
        _restore_sigterm(previous_sigterm)
    for _, aside in moved_old:
        shutil.rmtree(aside, ignore_errors=True)
    if verbose:
        print(report.summary())
    return report


def _handle_bad(bad_cases: Dict[str, Dict[str, str]], cases: Dict[str, "_Case"], skipped: Dict[str, str],
                skip_bad: bool, verbose: bool) -> None:
    if not bad_cases:
        return
    if not skip_bad:
        lines = [f"  {f}: {reason}" for problems in bad_cases.values() for f, reason in problems.items()]
        raise UserInputError(
            f"{len(lines)} input file(s) cannot be used:\n" + "\n".join(lines) +
            "\nFix: repair or remove these files, or pass --skip-bad (skip_bad=True) to ingest the other cases "
            "without them.")
    for case_id, problems in bad_cases.items():
        for f, reason in problems.items():
            skipped[f] = reason
        for f in cases[case_id].files.values():
            if f not in problems:
                skipped[f] = f"another channel of case '{case_id}' cannot be used"
        del cases[case_id]
        if verbose:
            for f, reason in problems.items():
                print(f"nnunet_ssl ingest: skipping case '{case_id}': {f}: {reason}")
    if not cases:
        raise UserInputError(
            "No readable images left after skipping the bad files listed above "
            f"({', '.join(os.path.basename(f) for f in skipped)}). Fix: repair the images or point -i at a folder "
            "with readable 3D images.")


def _remove_stale_temporaries(dataset_id: int, roots: Iterable[Path]) -> None:
    """Remove temporary folders of this dataset id left by ingest processes that no longer run (e.g. killed -9)."""
    prefix = f".Dataset{dataset_id:03d}_"
    for root in roots:
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if not (p.name.startswith(prefix) and _TMP_TAG in p.name):
                continue
            try:
                pid = int(p.name.split(_TMP_TAG, 1)[1].split("-", 1)[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except (ValueError, PermissionError, OSError):
                pass


def _sigterm_as_exit():
    """Make SIGTERM raise SystemExit (so the cleanup runs) while ingesting; returns the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return None

    def _handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, _handler)
    except (ValueError, OSError):
        return None
    return (signal.SIG_DFL if previous is None else previous,)


def _restore_sigterm(previous) -> None:
    if previous is None:
        return
    import signal

    try:
        signal.signal(signal.SIGTERM, previous[0])
    except (ValueError, OSError):
        pass


def _version() -> str:
    try:
        from nnunet_ssl import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------

def add_ingest_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``nnunet_ssl ingest`` options to ``parser`` (dest names match :func:`ingest_unlabeled`)."""
    parser.add_argument("-i", "--input", dest="input_folder", required=True,
                        help="folder with the unlabeled 3D images (CASE_0000.nii.gz, ...; files without a _XXXX "
                             "suffix are single-channel cases)")
    parser.add_argument("-d", "--dataset-id", dest="dataset_id", type=int, required=True,
                        help="id of the new unlabeled dataset (1-999, must be free)")
    parser.add_argument("-n", "--name", dest="dataset_name", default=None,
                        help="name of the new dataset (default: <downstream name>Unlabeled)")
    parser.add_argument("--downstream", dest="downstream", required=True,
                        help="id or name of the planned, labeled dataset you will fine-tune on; its plans (and so "
                             "its network) are used")
    parser.add_argument("-p", "--plans", dest="plans_identifier", default="nnUNetPlans",
                        help="plans identifier of the downstream dataset (default: nnUNetPlans)")
    parser.add_argument("-c", "--configurations", dest="configurations", nargs="+", default=None,
                        help="configurations to preprocess (default: every configuration of the plans with a "
                             "data_identifier, e.g. 2d 3d_fullres 3d_lowres)")
    parser.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=None,
                        help="worker processes (default: nnU-Net's default_num_processes; 0 or 1 = serial)")
    parser.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                        help="skip unreadable images (listed at the end) instead of stopping")
    parser.add_argument("--overwrite", dest="overwrite", action="store_true",
                        help="replace an existing dataset with this id, only if nnunet_ssl ingest made it")
    parser.add_argument("--quiet", dest="quiet", action="store_true", help="no progress output")
    return parser


def run_ingest_from_args(args: argparse.Namespace) -> IngestReport:
    """Run :func:`ingest_unlabeled` from parsed :func:`add_ingest_arguments` options. UserInputError propagates."""
    return ingest_unlabeled(
        input_folder=args.input_folder,
        dataset_id=args.dataset_id,
        dataset_name=getattr(args, "dataset_name", None),
        downstream=args.downstream,
        plans_identifier=getattr(args, "plans_identifier", "nnUNetPlans"),
        configurations=getattr(args, "configurations", None),
        num_processes=getattr(args, "num_processes", None),
        skip_bad=getattr(args, "skip_bad", False),
        overwrite=getattr(args, "overwrite", False),
        verbose=not getattr(args, "quiet", False),
    )
