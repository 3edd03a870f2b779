"""The low-label benchmark end to end on real hippocampus data (its smoke profile: numbers meaningless, pipeline real).

``scripts/benchmark_low_label.py --profile smoke`` with two arms (scratch; MAE pre-training then
``SSLFinetuneTrainer``) and an *external* labeled test folder: 3 hippocampus cases outside the profile's seeded
16-case subset, so they are unseen by pre-training and fine-tuning. The script drives the real
``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``, ``nnUNetv2_predict`` and ``nnUNetv2_evaluate_simple``.
Checked: the split uses exactly the external cases, the report files hold every arm x test case x class with a
paired comparison against scratch, and a second invocation redoes nothing (the issue's "resumable").
"""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import nnunet_bin

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_low_label.py"
TIMEOUT = 2400  # about 3-5 minutes of work on 2 free cores


def _bench_common():
    from nnunet_ssl.benchmark import common
    return common


def _invoke(args, env, log: Path) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    log.write_text(output)
    assert proc.returncode == 0, f"benchmark failed ({proc.returncode}); last output:\n{output[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def smoke(shared_data, tmp_path_factory):
    nnunet_bin("nnUNetv2_train")  # skips with the fix when nnU-Net is not installed here
    root = tmp_path_factory.mktemp("low_label_smoke")
    source = shared_data / "hippocampus"
    bc = _bench_common()
    cases = bc.SourceDataset(source).cases
    subset = set(bc.seeded_shuffle(cases, 0)[:16])  # the smoke profile's --max-cases 16
    outside = sorted(set(cases) - subset)[:3]
    images, labels = root / "ext" / "imagesTs", root / "ext" / "labelsTs"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for case in outside:
        shutil.copy(source / "imagesTr" / f"{case}_0000.nii.gz", images)
        shutil.copy(source / "labelsTr" / f"{case}.nii.gz", labels)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_SSL_"))}
    args = ["--profile", "smoke", "--source", source, "--arms", "scratch", "mae", "--work-dir", root / "work",
            "--out", root / "out", "--test-images", images, "--test-labels", labels, "-np", "1"]
    first = _invoke(args, env, root / "first.log")
    second = _invoke(args, env, root / "second.log")
    return dict(root=root, work=root / "work", out=root / "out", test=outside, first=first, second=second)


def test_external_test_folder_is_the_test_split(smoke):
    split = json.loads((smoke["work"] / "split.json").read_text())
    assert split["external_test"] is True
    assert split["test"] == smoke["test"]
    assert not set(split["test"]) & set(split["pool"] + split["reference"])


def test_report_holds_every_arm_case_and_class(smoke):
    with open(smoke["out"] / "low_label_smoke_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["arm"], r["budget"], r["seed"], r["case"], r["class_id"]) for r in rows}
    want = {(arm, "3", "0", case, cls) for arm in ("scratch", "mae") for case in smoke["test"] for cls in ("1", "2")}
    assert want <= got
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 or r["dice"] in ("", "nan")
    with open(smoke["out"] / "low_label_smoke_paired_vs_scratch.csv") as f:
        paired = list(csv.DictReader(f))
    assert {r["arm"] for r in paired} == {"mae"}
    md = (smoke["out"] / "low_label_smoke.md").read_text()
    assert "| scratch | 3 |" in md and "| mae | 3 |" in md
    # the curves table is parsed from nnU-Net's real training logs: a train loss for both arms, both epoch columns
    curves = md.split("## Fine-tuning curves")[1].split("\n## ")[0]
    assert "first epoch with every class >= 0.5" in curves
    rows = [ln.split("|")[1:-1] for ln in curves.splitlines() if ln.startswith(("| scratch | 3 |", "| mae | 3 |"))]
    assert len(rows) == 2 and all(len(cells) == 11 for cells in rows)
    for cells in rows:
        float(cells[2])  # train loss at epoch 0
        assert all(x.strip() == "never" or x.strip().isdigit() for x in cells[-1].split(","))
    assert (smoke["out"] / "low_label_smoke.png").stat().st_size > 1000
    # every fine-tuning run went through nnUNetv2_predict on the external images
    for arm in ("scratch", "mae"):
        pred = smoke["work"] / "runs" / arm / "budget3" / "seed0" / "predictions"
        assert sorted(p.name for p in pred.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in smoke["test"]]


def test_second_invocation_redoes_nothing(smoke):
    assert "2 of 2 fine-tune/predict runs already finished" in smoke["second"]
    assert "pre-training mae: done" in smoke["second"] and "re-used" in smoke["second"]
    assert "$ nnUNetv2_train" not in smoke["second"] and "$ nnUNetv2_predict" not in smoke["second"]
    assert "$ nnUNetv2_train" in smoke["first"]
