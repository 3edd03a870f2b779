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

The steps live in small modules next to this one: :mod:`~nnunet_ssl.data.ingest_target` (the new dataset's id and
name, the downstream dataset and its plans), :mod:`~nnunet_ssl.data.ingest_inputs` (scanning and checking the
input images), :mod:`~nnunet_ssl.data.ingest_verify` (every file read in full: complete gzip stream, NIfTI data
size, size against the downstream dataset), :mod:`~nnunet_ssl.data.ingest_convert` (raw copy or conversion and
preprocessing of one case),
:mod:`~nnunet_ssl.data.ingest_metadata` (the JSON files), :mod:`~nnunet_ssl.data.ingest_commit` (temporary
folders, atomic rename, SIGTERM) and :mod:`~nnunet_ssl.data.ingest_files` (JSON helpers).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from nnunet_ssl.data.ingest_commit import (_StagedDataset, _remove_stale_temporaries, _restore_sigterm,
                                           _sigterm_as_exit)
from nnunet_ssl.data.ingest_convert import _case_tasks, _process_case, _raw_format
from nnunet_ssl.data.ingest_inputs import _check_channels, _check_headers, _collect_cases, _handle_bad
from nnunet_ssl.data.ingest_metadata import _dataset_json, _write_metadata
from nnunet_ssl.data.ingest_target import (_check_dataset_id, _check_id_free, _env_folder, _load_downstream,
                                           _new_dataset_name, _resolve_downstream, _select_configurations)
from nnunet_ssl.errors import UserInputError

__all__ = ["IngestReport", "ingest_unlabeled", "add_ingest_arguments", "run_ingest_from_args"]


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
# the public entry
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

    # ---- the new dataset's id and name, the downstream dataset
    dataset_id = _check_dataset_id(dataset_id)
    downstream_name = _resolve_downstream(downstream, raw_root, pre_root)
    dataset_name, full_name = _new_dataset_name(dataset_id, dataset_name, downstream_name)
    plans, downstream_json = _load_downstream(downstream_name, plans_identifier, raw_root, pre_root)
    config_names = _select_configurations(plans, configurations, downstream_name, plans_identifier)
    channel_names = downstream_json.get("channel_names", downstream_json.get("modality"))
    if not channel_names:
        raise UserInputError(f"The dataset.json of {downstream_name} has no 'channel_names'. Fix: add them (nnU-Net "
                             f"v2 dataset.json format) and re-run nnUNetv2_plan_and_preprocess.")
    n_channels = len(channel_names)

    # ---- is the id free?
    existing = _check_id_free(dataset_id, full_name, raw_root, pre_root, results_root, overwrite)
    _remove_stale_temporaries(dataset_id, (raw_root, pre_root))

    # ---- input files, their channels, the raw file format and a cheap header check of every file
    input_path, endings, cases, skipped = _collect_cases(input_folder, verbose)
    _check_channels(cases, channel_names, downstream_name)
    plans, file_ending, converted, reader_name, notes = _raw_format(plans, cases, downstream_name)
    _handle_bad(_check_headers(cases, endings, converted, _downstream_voxels(pre_root / downstream_name),
                               downstream_name), cases, skipped, skip_bad, verbose)

    # ---- everything checked: build into temporary siblings, rename at the end
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans["dataset_name"] = full_name
    dataset_json = _dataset_json(channel_names, file_ending, dataset_name, plans_identifier, downstream_name,
                                 input_path, reader_name)
    plans_manager = PlansManager(plans)
    data_identifiers: Dict[str, str] = {}
    for c in config_names:
        data_identifiers[c] = plans_manager.get_configuration(c).data_identifier

    if num_processes is None:
        num_processes = default_num_processes
    num_processes = max(0, min(int(num_processes), len(cases)))

    staged = _StagedDataset(raw_root, pre_root, full_name)
    if verbose:
        print(f"nnunet_ssl ingest: {len(cases)} case(s) from {input_path} -> {full_name} "
              f"(plans '{plans_identifier}' of {downstream_name}; configurations {', '.join(config_names)}; "
              f"{'converting to .nii.gz' if converted else 'copying ' + file_ending + ' files'})")
    previous_sigterm = _sigterm_as_exit()
    try:
        images_dir, targets = staged.create(data_identifiers, config_names)
        tasks = _case_tasks(cases, endings, input_path, images_dir, file_ending, converted, plans, dataset_json,
                            targets, n_channels)
        results = _run_tasks(tasks, num_processes, verbose)

        failed = {r["case"]: r["bad"] for r in results if not r["ok"]}
        _handle_bad(failed, cases, skipped, skip_bad, verbose)
        ok = sorted((r for r in results if r["ok"]), key=lambda r: r["case"])
        case_ids = [r["case"] for r in ok]

        # ---- metadata
        dataset_json["numTraining"] = len(case_ids)
        _write_metadata(staged.tmp_raw, staged.tmp_pre, dataset_json, plans, plans_identifier, ok, cases, skipped,
                        downstream_name, input_path, config_names, data_identifiers, file_ending, converted,
                        reader_name, notes)
        report = IngestReport(
            dataset_name=full_name, raw_folder=str(staged.final_raw), preprocessed_folder=str(staged.final_pre),
            cases=case_ids, skipped=dict(skipped), configurations=list(config_names),
            downstream_dataset=downstream_name, plans_identifier=plans_identifier, file_ending=file_ending,
            converted_to_nifti=converted, image_reader_writer=reader_name, notes=notes)

        # ---- commit: move old (ours, overwrite) aside, rename new into place, then delete old
        staged.commit(existing)
    except BaseException:
        staged.rollback()
        raise
    finally:
        _restore_sigterm(previous_sigterm)
    staged.discard_old()
    if verbose:
        print(report.summary())
    return report


def _downstream_voxels(downstream_pre: Path) -> Optional[int]:
    """Voxels of the downstream dataset's smallest case (its fingerprint), for the size sanity check."""
    from nnunet_ssl.data.ingest_files import _load_json
    from nnunet_ssl.data.ingest_verify import smallest_downstream_voxels
    try:
        return smallest_downstream_voxels(_load_json(downstream_pre / "dataset_fingerprint.json"))
    except (OSError, ValueError):
        return None


def _run_tasks(tasks: List[dict], num_processes: int, verbose: bool) -> List[dict]:
    """Run :func:`_process_case` on every task, serially or in ``spawn`` worker processes, with a progress bar."""
    import multiprocessing

    from tqdm import tqdm

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
    return results


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
