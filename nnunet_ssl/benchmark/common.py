"""Shared helpers of the benchmarks (the low-label benchmark and the scripts in ``scripts/``).

* nnU-Net folders of a benchmark work directory (set in ``os.environ`` of this process, so nnunet_ssl, nnunetv2 and
  the stock ``nnUNetv2_*`` commands started from here all use them);
* labeled raw datasets made from a subset of the cases of a labeled nnU-Net raw dataset (default: the 200
  hippocampus cases in ``../shared/data/hippocampus``), written atomically and re-used when they already exist;
* planning, ingestion of unlabeled images (:func:`nnunet_ssl.data.ingest.ingest_unlabeled`), ReFs reference datasets
  (:func:`nnunet_ssl.data.reference.prepare_reference`) and tiny derived plans
  (:func:`nnunet_ssl.data.plans_tools.derive_plans`), each skipped when its result is on disk.

Every step prints what it does; user-fixable problems raise :class:`nnunet_ssl.errors.UserInputError`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from nnunet_ssl.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "hippocampus"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
TINY_SUFFIX = "Tiny"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# ----------------------------------------------------------------------------------------------------------------
# folders and environment
# ----------------------------------------------------------------------------------------------------------------

def setup_nnunet_folders(work_dir: str, results_name: str = "nnUNet_results") -> Dict[str, str]:
    """Create ``work_dir/nnUNet_raw|_preprocessed|<results_name>`` and set them in ``os.environ``."""
    work = Path(work_dir).expanduser().resolve()
    folders = {"nnUNet_raw": work / "nnUNet_raw", "nnUNet_preprocessed": work / "nnUNet_preprocessed",
               "nnUNet_results": work / results_name}
    for var, path in folders.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    return {k: str(v) for k, v in folders.items()}


@contextlib.contextmanager
def temporary_env(**values: Optional[str]):
    """Set (value str) or remove (value None) environment variables inside the block, restore afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def planning_env() -> Dict[str, str]:
    """Environment for nnU-Net's planning/preprocessing commands: ``nnUNet_n_proc_DA=0`` makes the planner call
    ``torch.set_num_threads(0)`` and fail, so it is raised to at least 1 there."""
    value = os.environ.get("nnUNet_n_proc_DA")
    if value is not None and value.strip().isdigit() and int(value) < 1:
        return {"nnUNet_n_proc_DA": "1"}
    return {}


# ----------------------------------------------------------------------------------------------------------------
# source dataset
# ----------------------------------------------------------------------------------------------------------------

def load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def write_json(obj, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class SourceDataset:
    """A labeled nnU-Net raw dataset (``dataset.json``, ``imagesTr``, ``labelsTr``) read-only."""

    def __init__(self, folder):
        self.folder = Path(folder).expanduser().resolve()
        dj = self.folder / "dataset.json"
        if not dj.is_file():
            raise UserInputError(
                f"{self.folder} is not a labeled nnU-Net raw dataset (no dataset.json). Fix: pass --source with a "
                f"folder holding dataset.json, imagesTr/ and labelsTr/ (the default is {DEFAULT_SOURCE}, the shared "
                f"hippocampus data).")
        self.dataset_json = load_json(dj)
        self.file_ending = self.dataset_json.get("file_ending", ".nii.gz")
        self.channels = sorted(int(c) for c in self.dataset_json.get("channel_names",
                                                                      self.dataset_json.get("modality", {})))
        if not self.channels:
            raise UserInputError(f"{dj} has no channel_names.")
        labels_dir = self.folder / "labelsTr"
        if not labels_dir.is_dir():
            raise UserInputError(f"{self.folder} has no labelsTr/: the benchmark needs a labeled dataset.")
        cases = sorted(p.name[: -len(self.file_ending)] for p in labels_dir.iterdir()
                       if p.name.endswith(self.file_ending) and not p.name.startswith("."))
        missing = [c for c in cases if not all(self.image(c, ch).is_file() for ch in self.channels)]
        if missing:
            raise UserInputError(f"{len(missing)} labeled case(s) of {self.folder} lack an image file, e.g. "
                                 f"{self.image(missing[0], self.channels[0])}. Fix the dataset or pass another "
                                 f"--source.")
        if not cases:
            raise UserInputError(f"{labels_dir} holds no label files ending in {self.file_ending}.")
        self.cases = cases

    def image(self, case: str, channel: int) -> Path:
        return self.folder / "imagesTr" / f"{case}_{channel:04d}{self.file_ending}"

    def label(self, case: str) -> Path:
        return self.folder / "labelsTr" / f"{case}{self.file_ending}"

    @property
    def foreground_labels(self) -> List[int]:
        out = []
        for name, v in self.dataset_json["labels"].items():
            if isinstance(v, (list, tuple)):
                raise UserInputError("region-based datasets (labels given as lists) are not supported here")
            if int(v) > 0:
                out.append(int(v))
        return sorted(out)

    @property
    def label_names(self) -> Dict[int, str]:
        return {int(v): k for k, v in self.dataset_json["labels"].items() if int(v) > 0}


def seeded_shuffle(items: Sequence[str], seed: int) -> List[str]:
    import numpy as np
    items = sorted(items)
    order = np.random.RandomState(int(seed)).permutation(len(items))
    return [items[i] for i in order]


def _copy_atomically(target: Path, fill) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _marker_cases(folder: Path) -> Optional[List[str]]:
    marker = folder / "benchmark_cases.json"
    return load_json(marker)["cases"] if marker.is_file() else None


def ensure_labeled_raw_dataset(source: SourceDataset, raw_root: str, dataset_id: int, name: str,
                               cases: Sequence[str]) -> str:
    """``nnUNet_raw/DatasetXXX_name`` with ``cases`` (images + labels) copied from ``source``. Re-used if it exists
    with exactly these cases; a different case list is an error (another --work-dir or other ids fix it)."""
    full = f"Dataset{dataset_id:03d}_{name}"
    target = Path(raw_root) / full
    cases = sorted(cases)
    clash = [p.name for p in Path(raw_root).glob(f"Dataset{dataset_id:03d}_*") if p.name != full]
    if clash:
        raise UserInputError(f"Dataset id {dataset_id} is taken by {clash[0]} in {raw_root}. Fix: use another "
                             f"--work-dir or other dataset ids.")
    if target.is_dir():
        existing = _marker_cases(target)
        if existing == cases:
            return full
        raise UserInputError(
            f"{target} exists with other cases than this run asks for ({len(existing or [])} vs {len(cases)}; "
            f"different --num-cases / --split-seed / source?). Fix: use another --work-dir, or delete that work "
            f"directory to start over.")

    def fill(tmp: Path):
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for c in cases:
            for ch in source.channels:
                shutil.copyfile(source.image(c, ch), tmp / "imagesTr" / source.image(c, ch).name)
            shutil.copyfile(source.label(c), tmp / "labelsTr" / source.label(c).name)
        dj = dict(source.dataset_json)
        dj["numTraining"] = len(cases)
        dj["name"] = name
        write_json(dj, tmp / "dataset.json")
        write_json({"source": str(source.folder), "cases": cases}, tmp / "benchmark_cases.json")

    log(f"writing {full} ({len(cases)} labeled cases from {source.folder})")
    _copy_atomically(target, fill)
    return full


def _folder_marker(folder: Path) -> Path:
    # next to the folder, never inside: nnU-Net's tools read every file of an image or label folder
    return folder.parent / f".{folder.name}.benchmark_cases.json"


def ensure_image_folder(source: SourceDataset, folder: str, cases: Sequence[str], with_labels_to: Optional[str] = None
                        ) -> None:
    """Copy the images of ``cases`` (nnU-Net naming ``CASE_XXXX``) to ``folder`` (and their labels to
    ``with_labels_to``), re-used when complete (a marker file next to each folder lists its cases)."""
    cases = sorted(cases)
    targets = [(Path(folder), "images")] + ([(Path(with_labels_to), "labels")] if with_labels_to else [])
    for path, kind in targets:
        marker = _folder_marker(path)
        if path.is_dir() and marker.is_file() and load_json(marker)["cases"] == cases:
            continue
        if marker.is_file() and load_json(marker)["cases"] != cases:
            raise UserInputError(f"{path} holds another case list than this run asks for. Fix: use another "
                                 f"--work-dir or delete it.")
        if path.exists():
            shutil.rmtree(path)

        def fill(tmp: Path, kind=kind):
            for c in cases:
                if kind == "images":
                    for ch in source.channels:
                        shutil.copyfile(source.image(c, ch), tmp / source.image(c, ch).name)
                else:
                    shutil.copyfile(source.label(c), tmp / source.label(c).name)

        path.parent.mkdir(parents=True, exist_ok=True)
        _copy_atomically(path, fill)
        write_json({"source": str(source.folder), "cases": cases}, marker)


def nifti_files(folder, file_ending: str = ".nii.gz") -> List[str]:
    return sorted(p for p in os.listdir(folder) if p.endswith(file_ending) and not p.startswith("."))


# ----------------------------------------------------------------------------------------------------------------
# planning, ingestion, reference, tiny plans
# ----------------------------------------------------------------------------------------------------------------

def _preprocessed_ok(dataset_name: str, plans: str, configuration: str, num_cases: int) -> bool:
    pre = Path(os.environ["nnUNet_preprocessed"]) / dataset_name
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file() or not (pre / "dataset.json").is_file():
        return False
    cfg = load_json(plans_file)["configurations"].get(configuration)
    if cfg is None or "data_identifier" not in cfg:
        return False
    data = pre / cfg["data_identifier"]
    if not data.is_dir():
        return False
    pkl = [p for p in os.listdir(data) if p.endswith(".pkl")]
    return len(pkl) >= num_cases


def ensure_planned(dataset_id: int, dataset_name: str, configuration: str, num_cases: int, num_processes: int,
                   log_file: Optional[str] = None) -> None:
    """``nnUNetv2_plan_and_preprocess -d ID -c CFG`` unless plans and preprocessed data exist."""
    from nnunet_ssl.cli.commands import run_nnunet
    if _preprocessed_ok(dataset_name, "nnUNetPlans", configuration, num_cases):
        log(f"{dataset_name}: planned and preprocessed ({configuration}), re-used")
        return
    log(f"{dataset_name}: planning and preprocessing ({num_cases} cases)")
    run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", dataset_id, "-c", configuration, "-np", num_processes],
               env=planning_env(), log_file=log_file)


def ensure_ingested(image_folder: str, ssl_id: int, ssl_name: str, downstream: str, plans: str, configuration: str,
                    num_cases: int, num_processes: int) -> str:
    """Ingest ``image_folder`` as unlabeled dataset ``ssl_id`` with the downstream plans (skipped if done)."""
    full = f"Dataset{ssl_id:03d}_{ssl_name}"
    if _preprocessed_ok(full, plans, configuration, num_cases):
        log(f"{full}: ingested with plans {plans}, re-used")
        return full
    from nnunet_ssl.data.ingest import ingest_unlabeled
    pre = Path(os.environ["nnUNet_preprocessed"]) / full
    overwrite = pre.exists() or (Path(os.environ["nnUNet_raw"]) / full).exists()
    log(f"{full}: ingesting {num_cases} images of {image_folder} as unlabeled (plans {plans} of {downstream})")
    with temporary_env(**planning_env()):
        report = ingest_unlabeled(image_folder, ssl_id, ssl_name, downstream, plans_identifier=plans,
                                  configurations=[configuration], num_processes=num_processes,
                                  overwrite=overwrite, verbose=False)
    if report.skipped:
        log(f"  note: ingest skipped {len(report.skipped)} file(s): {report.skipped}")
    return report.dataset_name


def ensure_reference(reference: str, ssl_dataset: str, plans: str, configuration: str, num_cases: int,
                     num_processes: int) -> str:
    """``prepare_reference`` (fingerprint, plans of the unlabeled dataset, preprocessing) unless done."""
    from nnunet_ssl.data.reference import REFERENCE_FILE, prepare_reference, reference_plans_of
    pre = Path(os.environ["nnUNet_preprocessed"])
    marker = pre / ssl_dataset / REFERENCE_FILE
    # the reference is preprocessed under its own plans identifier (its own plans are never touched)
    ref_plans = reference_plans_of(str(pre), ssl_dataset, reference, plans)
    if marker.is_file() and load_json(marker).get("reference_dataset") == reference \
            and _preprocessed_ok(reference, ref_plans, configuration, num_cases):
        log(f"{reference}: ReFs reference of {ssl_dataset} (plans {plans}), re-used")
        return reference
    log(f"{reference}: preparing as ReFs reference of {ssl_dataset} (plans {plans})")
    with temporary_env(**planning_env()):
        prepare_reference(reference, ssl_dataset, plans=plans, configurations=[configuration],
                          num_processes=num_processes)
    return reference


def tiny_plans_name(base: str) -> str:
    return base + TINY_SUFFIX


def ensure_derived_plans(datasets: Iterable[str], base: str, target: str, max_features: Optional[int] = 32,
                         batch_size: Optional[int] = None, patch_size: Optional[Sequence[int]] = None,
                         configuration: str = "3d_fullres") -> None:
    """``derive_plans`` for each dataset (cheap and deterministic: always rewritten). Derived plans keep the
    ``data_identifier``, so they re-use the preprocessed data of ``base``."""
    from nnunet_ssl.data.plans_tools import derive_plans
    for ds in datasets:
        derive_plans(ds, base, target, max_features=max_features, batch_size=batch_size, patch_size=patch_size,
                     configurations=[configuration])


def plans_summary(dataset_name: str, plans: str, configuration: str) -> dict:
    p = load_json(Path(os.environ["nnUNet_preprocessed"]) / dataset_name / f"{plans}.json")
    cfg = p["configurations"][configuration]
    arch = cfg.get("architecture", {})
    kw = arch.get("arch_kwargs", {})
    return {"plans": plans, "configuration": configuration, "patch_size": cfg.get("patch_size"),
            "batch_size": cfg.get("batch_size"), "spacing": cfg.get("spacing"),
            "network": arch.get("network_class_name", "").rsplit(".", 1)[-1],
            "features_per_stage": kw.get("features_per_stage"), "n_stages": kw.get("n_stages")}


def check_dataset_id(value: int, what: str) -> int:
    if not 1 <= int(value) <= 999:
        raise UserInputError(f"{what} {value} is out of range: nnU-Net dataset ids are 1..999.")
    return int(value)


def fold_arg(text: str) -> str:
    """argparse ``type`` of a fold option: a fold number or ``all`` (as nnU-Net's commands take it)."""
    if text != "all" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a fold number or 'all', not {text!r}")
    return text


def run_main(main) -> None:
    """Run ``main()``; print user errors without a traceback (exit 2), Ctrl-C as exit 130."""
    try:
        sys.exit(main() or 0)
    except UserInputError as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is kept; run the same command again to continue.",
              file=sys.stderr, flush=True)
        sys.exit(130)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    return _SAFE.sub("_", str(text))
