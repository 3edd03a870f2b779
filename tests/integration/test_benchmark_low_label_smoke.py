"""The low-label benchmark end to end on the real shared data (its smoke profile: numbers meaningless, pipeline real).

``scripts/benchmark_low_label.py --profile smoke`` runs hippocampus with two arms (stock scratch; MAE pre-training
on the non-test images, then ``SSLFinetuneTrainer_decoderWarmup``) through the real ``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_predict`` and ``nnUNetv2_evaluate_simple``; ACDC only through setup (its patient-level
split and folds; training it too would double the test's 4 CPU-minutes). Checked: the splits, the report's files
and numbers, and that a second invocation redoes nothing.
"""
import csv
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
TIMEOUT = 2400  # about 4 CPU-minutes of work; much longer wall time on busy shared cores


def _invoke(args, log: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "NNUNET_SSL_"))}
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = proc.stdout + proc.stderr
    log.write_text(output)
    assert proc.returncode == 0, f"benchmark failed ({proc.returncode}); last output:\n{output[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def smoke(shared_data, tmp_path_factory):
    nnunet_bin("nnUNetv2_train")  # skips with the fix when nnU-Net is not installed here
    for key in ("hippocampus", "acdc"):
        if not (shared_data / key / "dataset.json").is_file():
            pytest.skip(f"{shared_data / key} is absent: the benchmark's datasets live in ../shared/data")
    root = tmp_path_factory.mktemp("low_label_smoke")
    work, out = root / "work", root / "out"
    common = ["--profile", "smoke", "--work-dir", work, "--out", out, "--num-processes", "1"]
    hippo = common + ["--datasets", "hippocampus", "--arms", "scratch", "mae", "--record-weights", "mae"]
    first = _invoke(hippo, root / "first.log")
    _invoke(common + ["--datasets", "acdc", "--arms", "scratch", "--stage", "setup"], root / "acdc.log")
    second = _invoke(hippo, root / "second.log")
    shutil.copytree(out, root / "out_second")  # the report of this machine's runs (seed 1 is added below)
    # a new machine: no work dir, only the record beside the report (committed in the cpu profile)
    new = ["--profile", "smoke", "--work-dir", root / "new_machine", "--out", out, "--datasets", "hippocampus",
           "--arms", "scratch", "mae"]
    plan = _invoke(new + ["--dry-run"], root / "new_plan.log")
    _invoke(new + ["--stage", "report"], root / "new_report.log")
    untouched = not (root / "new_machine").exists()  # a dry run and a report set nothing up
    # and a run the record lacks: fine-tuned on the new machine from the recorded MAE weights, not pre-trained again
    shutil.copyfile(out / "low_label_smoke.md", root / "report_before_seed1.md")
    seed1 = _invoke(new + ["--arms", "mae", "--seeds", "1", "--num-processes", "1"], root / "new_seed1.log")
    return dict(work=work, out=out, out_second=root / "out_second", first=first, second=second, new_plan=plan,
                root=root, seed1=seed1, untouched=untouched)


def _json(path):
    return json.loads(Path(path).read_text())


def test_hippocampus_split_and_pretraining_images(smoke):
    split = _json(smoke["work"] / "hippocampus" / "split.json")
    test = sorted(c for g in split["test_groups"] for c in split["cases_of"][g])
    assert len(test) == 3 and len(split["val_groups"]) == 1
    unlabeled = _json(smoke["work"] / "hippocampus" / "inputs" / ".unlabeled_images.benchmark_cases.json")["cases"]
    assert not set(unlabeled) & set(test)
    assert set(unlabeled) | set(test) == {c for cs in split["cases_of"].values() for c in cs}


def test_acdc_setup_is_patient_level(smoke):
    work = smoke["work"]
    split = _json(work / "acdc" / "split.json")
    assert len(split["test_groups"]) == 2 and all(len(split["cases_of"][g]) == 2 for g in split["test_groups"])
    assert sorted(p.name for p in (work / "acdc" / "test" / "labelsTs").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for g in split["test_groups"] for c in split["cases_of"][g])
    folds = _json(work / "nnUNet_preprocessed" / "Dataset271_LowLabelAcdc" / "splits_final.json")
    assert len(folds) == 30
    patients = {c.rsplit("_frame", 1)[0] for c in folds[0]["train"]}  # fold 0 = budget 1, seed 0
    assert len(patients) == 1 and len(folds[0]["train"]) == 2
    assert not patients & set(split["test_groups"]) and len(folds[0]["val"]) == 2
    plans = _json(work / "nnUNet_preprocessed" / "Dataset271_LowLabelAcdc" / "nnUNetPlansTiny16.json")
    assert max(plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]) <= 16


def test_report_files_and_numbers(smoke):
    out, work = smoke["out_second"], smoke["work"]
    md = (out / "low_label_smoke.md").read_text()
    for name in ("dice", "convergence", "pretraining"):
        assert (out / f"low_label_smoke_hippocampus_{name}.png").stat().st_size > 1000
    with open(out / "low_label_smoke_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 2 and {r["arm"] for r in rows} == {"scratch", "mae"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    for arm in ("scratch", "mae"):
        summary = _json(work / "hippocampus" / "arms" / arm / "b1_s0" / "summary.json")
        fg = summary["foreground_mean"]["Dice"]
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| 1 | {arm} | ") and ln.endswith("| 1 |"))
        assert f"| {fg:.3f} | 1 |" in row  # the Dice table's foreground mean is nnU-Net's
        assert len(list((work / "hippocampus" / "arms" / arm / "b1_s0" / "predictions").glob("*.nii.gz"))) == 3
        assert f"| 1 | {arm} | 0 | evaluated | 2 |" in md  # convergence table: 2 epochs parsed from nnU-Net's log
    assert "| 1 | mae | 3 (1 x 3) |" in md  # paired against scratch
    assert "| mae | MAETrainer | finished | 1 |" in md
    # one seed cannot meet the headline, nor fail it while the other seeds and arms are still to run
    head = next(ln for ln in md.splitlines() if ln.startswith("| hippocampus | 1 | mae |"))
    assert "gain not shown yet; still to run" in head and "mae 1" in head, head
    assert "Overall: **not decided yet" in md


def test_second_invocation_redoes_nothing(smoke):
    assert "2 runs, 0 to do" in smoke["second"] and "re-used" in smoke["second"]
    for cmd in ("$ nnUNetv2_train", "$ nnUNetv2_predict", "$ nnUNetv2_evaluate_simple", "$ nnUNetv2_plan"):
        assert cmd not in smoke["second"] and cmd in smoke["first"]


def test_a_new_machine_continues_from_the_record(smoke):
    """Finished runs are recorded beside the report; without the work dir they are not run again and the report
    built from the record alone has the same tables."""
    record = smoke["out"] / "low_label_smoke_runs" / "hippocampus"
    for arm in ("scratch", "mae"):
        kept = sorted(p.name for p in (record / "arms" / arm / "b1_s0").iterdir())
        assert kept[:2] == ["run.json", "summary.json"] and kept[2].startswith("training_log_"), kept
        assert _json(record / "arms" / arm / "b1_s0" / "summary.json") == _json(
            smoke["work"] / "hippocampus" / "arms" / arm / "b1_s0" / "summary.json")
    assert _json(record / "pretrain" / "mae" / "run.json")["finished"] is True
    assert "2 runs, 0 to do" in smoke["new_plan"]
    assert smoke["untouched"]
    before = (smoke["out_second"] / "low_label_smoke.md").read_text().splitlines()
    after = (smoke["root"] / "report_before_seed1.md").read_text().splitlines()  # built from the record alone
    tables = [ln for ln in before if ln.startswith("| ") and "Built" not in ln]
    assert tables and tables == [ln for ln in after if ln.startswith("| ") and "Built" not in ln]


def test_a_new_machine_fine_tunes_from_recorded_weights(smoke):
    weights = smoke["out"] / "low_label_smoke_runs" / "hippocampus" / "pretrain" / "mae" / "pretrained_weights_fp16.pth"
    assert weights.stat().st_size > 1000
    log = smoke["seed1"]
    assert "pre-training mae: the recorded weights" in log
    assert "$ nnUNetv2_train Dataset402" not in log  # no pre-training on the unlabeled dataset again
    assert "$ nnUNetv2_train Dataset401" in log  # the fine-tuning
    run = smoke["out"] / "low_label_smoke_runs" / "hippocampus" / "arms" / "mae" / "b1_s1"
    assert _json(run / "run.json")["pretrained_from"] == str(weights)
    assert (run / "summary.json").is_file()
    md = (smoke["out"] / "low_label_smoke.md").read_text()
    assert "| 1 | mae | 1 | evaluated | 2 |" in md  # seed 1 in the report beside seed 0
