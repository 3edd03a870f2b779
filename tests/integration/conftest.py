"""Shared fixtures for integration tests that need real nnU-Net folders and a planned downstream dataset.

Fixtures
--------
``shared_data`` (session): ``Path`` of the read-only test data (``../shared/data`` beside the repository, or
    ``$NNUNET_SSL_SHARED_DATA``). Skips the test with a clear message when it is absent.
``nnunet_env`` (module): fresh ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` folders for the test
    module. While the module runs they are also set in ``os.environ``, restored afterwards. Returns
    :class:`NnUNetEnv` (``root``, ``raw``, ``preprocessed``, ``results`` and ``env``: a full environment dict for
    subprocesses such as ``nnUNetv2_train``). ``nnUNet_n_proc_DA`` is left alone on purpose:
    ``nnUNet_n_proc_DA=0`` makes ``nnUNetv2_plan_*`` fail (``torch.set_num_threads(0)``); set it per call for
    training.
``planned_downstream`` (module): labeled ``Dataset501_HippoSmall`` (12 hippocampus cases) in ``nnunet_env``,
    planned and preprocessed by the real ``nnUNetv2_plan_and_preprocess -d 501 -c 3d_fullres -np 2`` (plans
    ``nnUNetPlans`` with ``2d`` and ``3d_fullres``; only ``3d_fullres`` is preprocessed). Returns
    :class:`PlannedDownstream`; ``unused_case_ids`` lists hippocampus cases NOT in the dataset (use them as
    unlabeled images). The planning runs once per test session; each module gets its own copy.
``ssl_datasets`` (module; built once per session, copied into each module's folders): on top of
    ``planned_downstream``: tiny plans ``nnUNetPlansTiny`` (16 features, batch 2), 6 unused hippocampus images
    ingested as the unlabeled ``Dataset512_HippoUnlabeled`` and 6 further labeled cases prepared as the ReFs
    reference ``Dataset513_HippoRef`` (``nnunet_ssl prepare-reference``). Returns :class:`SSLDatasets`
    (``env``: subprocess environment with ``nnUNet_n_proc_DA=0``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

from helpers import REF_ID, REF_NAME, SSL_ID, SSL_NAME, TINY, nnunet_bin, run

DOWNSTREAM_ID = 501
DOWNSTREAM_NAME = "Dataset501_HippoSmall"
NUM_DOWNSTREAM_CASES = 12


def _shared_data_dir() -> Path:
    env = os.environ.get("NNUNET_SSL_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class NnUNetEnv:
    root: Path
    raw: Path
    preprocessed: Path
    results: Path
    env: Dict[str, str] = field(default_factory=dict)


@dataclass
class PlannedDownstream:
    dataset_id: int
    dataset_name: str
    plans_identifier: str
    raw_folder: Path
    preprocessed_folder: Path
    plans_file: Path
    case_ids: List[str]
    unused_case_ids: List[str]
    shared_data: Path

    def image_file(self, case_id: str) -> Path:
        """Shared hippocampus image of ``case_id`` (single channel)."""
        return self.shared_data / "hippocampus" / "imagesTr" / f"{case_id}_0000.nii.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not (path / "hippocampus" / "dataset.json").is_file():
        pytest.skip(f"shared test data not found at {path} (expected ../shared/data beside the repository with "
                    f"hippocampus/ and unlabeled_ct_mr/; or set NNUNET_SSL_SHARED_DATA)")
    return path


def _make_env(root: Path) -> NnUNetEnv:
    raw, pre, res = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    for p in (raw, pre, res):
        p.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)})
    # nnU-Net's final validation and prediction export spawn nnUNet_def_n_proc workers (8 by default): on the 2-core
    # test machines one worker is faster
    env.setdefault("nnUNet_def_n_proc", "1")
    return NnUNetEnv(root=root, raw=raw, preprocessed=pre, results=res, env=env)


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    e = _make_env(tmp_path_factory.mktemp("nnunet"))
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(k, e.env[k])
        yield e


@pytest.fixture(scope="session")
def _planned_downstream_template(tmp_path_factory, shared_data):
    """Plans Dataset501_HippoSmall once per session in its own folders (copied into each module's env)."""
    e = _make_env(tmp_path_factory.mktemp("nnunet_template"))
    hippo = shared_data / "hippocampus"
    labeled = sorted(p.name[: -len(".nii.gz")] for p in (hippo / "labelsTr").glob("*.nii.gz"))
    cases, unused = labeled[:NUM_DOWNSTREAM_CASES], labeled[NUM_DOWNSTREAM_CASES:]
    ds = e.raw / DOWNSTREAM_NAME
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for c in cases:
        shutil.copyfile(hippo / "imagesTr" / f"{c}_0000.nii.gz", ds / "imagesTr" / f"{c}_0000.nii.gz")
        shutil.copyfile(hippo / "labelsTr" / f"{c}.nii.gz", ds / "labelsTr" / f"{c}.nii.gz")
    dataset_json = json.loads((hippo / "dataset.json").read_text())
    dataset_json["numTraining"] = len(cases)
    dataset_json["name"] = "HippoSmall"
    (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    cmd = [nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(DOWNSTREAM_ID), "-c", "3d_fullres",
           "-np", "2"]
    proc = subprocess.run(cmd, env=e.env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return e, cases, unused


@pytest.fixture(scope="module")
def planned_downstream(nnunet_env, _planned_downstream_template, shared_data) -> PlannedDownstream:
    template, cases, unused = _planned_downstream_template
    for src_root, dst_root in ((template.raw, nnunet_env.raw), (template.preprocessed, nnunet_env.preprocessed)):
        if not (dst_root / DOWNSTREAM_NAME).exists():
            shutil.copytree(src_root / DOWNSTREAM_NAME, dst_root / DOWNSTREAM_NAME)
    return PlannedDownstream(
        dataset_id=DOWNSTREAM_ID,
        dataset_name=DOWNSTREAM_NAME,
        plans_identifier="nnUNetPlans",
        raw_folder=nnunet_env.raw / DOWNSTREAM_NAME,
        preprocessed_folder=nnunet_env.preprocessed / DOWNSTREAM_NAME,
        plans_file=nnunet_env.preprocessed / DOWNSTREAM_NAME / "nnUNetPlans.json",
        case_ids=list(cases),
        unused_case_ids=list(unused),
        shared_data=shared_data,
    )


@dataclass
class SSLDatasets:
    env: Dict[str, str]
    plans: str = TINY
    ssl_id: int = SSL_ID
    ssl_name: str = SSL_NAME
    ref_id: int = REF_ID
    ref_name: str = REF_NAME


@pytest.fixture(scope="session")
def _ssl_datasets_template(tmp_path_factory, _planned_downstream_template, shared_data) -> NnUNetEnv:
    """Builds the datasets of ``ssl_datasets`` once per session in their own folders."""
    from nnunet_ssl.data.ingest import ingest_unlabeled
    from nnunet_ssl.data.plans_tools import derive_plans
    template, _, unused = _planned_downstream_template
    e = _make_env(tmp_path_factory.mktemp("ssl_datasets_template"))
    for src_root, dst_root in ((template.raw, e.raw), (template.preprocessed, e.preprocessed)):
        shutil.copytree(src_root / DOWNSTREAM_NAME, dst_root / DOWNSTREAM_NAME)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(k, e.env[k])
        derive_plans(DOWNSTREAM_NAME, "nnUNetPlans", TINY, max_features=16, batch_size=2)
        folder = tmp_path_factory.mktemp("unlabeled")
        hippo = shared_data / "hippocampus"
        for c in unused[:6]:
            shutil.copyfile(hippo / "imagesTr" / f"{c}_0000.nii.gz", folder / f"{c}_0000.nii.gz")
        ingest_unlabeled(folder, SSL_ID, "HippoUnlabeled", DOWNSTREAM_ID, plans_identifier=TINY,
                         configurations=["3d_fullres"], num_processes=2, verbose=False)
    ref = e.raw / REF_NAME
    (ref / "imagesTr").mkdir(parents=True)
    (ref / "labelsTr").mkdir()
    for c in unused[6:12]:
        shutil.copyfile(hippo / "imagesTr" / f"{c}_0000.nii.gz", ref / "imagesTr" / f"{c}_0000.nii.gz")
        shutil.copyfile(hippo / "labelsTr" / f"{c}.nii.gz", ref / "labelsTr" / f"{c}.nii.gz")
    dj = json.loads((hippo / "dataset.json").read_text())
    dj["numTraining"] = 6
    (ref / "dataset.json").write_text(json.dumps(dj))
    run([nnunet_bin("nnunet_ssl"), "prepare-reference", "-r", REF_ID, "--ssl", SSL_ID, "-p", TINY],
        dict(e.env, nnUNet_n_proc_DA="0"))
    return e


@pytest.fixture(scope="module")
def ssl_datasets(nnunet_env, planned_downstream, _ssl_datasets_template) -> SSLDatasets:
    t = _ssl_datasets_template
    shutil.copyfile(t.preprocessed / DOWNSTREAM_NAME / f"{TINY}.json",
                    planned_downstream.preprocessed_folder / f"{TINY}.json")
    for name in (SSL_NAME, REF_NAME):
        for src_root, dst_root in ((t.raw, nnunet_env.raw), (t.preprocessed, nnunet_env.preprocessed)):
            if (src_root / name).exists() and not (dst_root / name).exists():
                shutil.copytree(src_root / name, dst_root / name)
    return SSLDatasets(env=dict(nnunet_env.env, nnUNet_n_proc_DA="0"))
