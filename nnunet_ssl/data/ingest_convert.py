"""One case of ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`): how raw files are written (copied, or converted
to ``.nii.gz`` when the plans' reader cannot read them), the per-case tasks, and the worker that writes a case's
raw files and preprocesses it with the downstream plans into every configuration's folder."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnunet_ssl.data.ingest_files import _load_json, _short_error
from nnunet_ssl.data.ingest_inputs import _DETACHED_HEADER_ENDINGS, _TIF_ENDINGS, _Case, _split_ending
from nnunet_ssl.errors import UserInputError


def _raw_format(plans: dict, cases: Dict[str, _Case], downstream_name: str) -> Tuple[dict, str, bool, str, List[str]]:
    """How raw files are written: copy when the plans' reader reads the (single) ending, else ``.nii.gz``.

    Returns ``(plans, file_ending, converted, reader_name, notes)``; ``plans`` is a copy, with ``SimpleITKIO`` as
    reader when the downstream reader cannot read ``.nii.gz``.
    """
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
    return plans, file_ending, converted, reader_name, notes


def _case_tasks(cases: Dict[str, _Case], endings, input_path: Path, images_dir: Path, file_ending: str,
                converted: bool, plans: dict, dataset_json: dict, targets, n_channels: int) -> List[dict]:
    """One :func:`_process_case` task per case (plain, picklable dicts for the worker processes)."""
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
    return tasks


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
            from nnunet_ssl.data.ingest_verify import nonfinite_reason
            return fail(nonfinite_reason(raw_files, sources, plans_manager.image_reader_writer_class,
                                         list(dict.fromkeys(cm.normalization_schemes))))
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
