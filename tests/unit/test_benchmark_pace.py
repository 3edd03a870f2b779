"""The run-time estimate behind the benchmark driver's --deadline (nnunet_ssl.benchmark.pace) and its use."""
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_benchmark_report import _write_log

from nnunet_ssl.benchmark.pace import EPOCH_COST, Pace, parse_deadline, resume_epoch, stock_cost

REPO = Path(__file__).resolve().parents[2]
HIP_RESULTS = "Dataset401_LowLabelHippocampus"


CPU_SETTINGS = "num_epochs=50,num_iterations_per_epoch=20,num_val_iterations_per_epoch=10,batch_size=2,save_every=5"


def _run(root: Path, arm: str, trainer: str, fold: int, epochs: int, epoch_s: float, evaluated: bool = True,
         seconds=None, key="hippocampus", cfg="3d_fullres", iterations=None):
    run = root / key / "arms" / arm / f"b1_s{fold}"
    run.mkdir(parents=True, exist_ok=True)
    if evaluated:
        (run / "summary.json").write_text(json.dumps({"metric_per_case": []}))
    (run / "run.json").write_text(json.dumps({"fold": fold, "trainer": trainer, "settings": CPU_SETTINGS,
                                              "seconds": seconds or {"predict": 50.0, "evaluate": 10.0}}))
    _write_log(root / key / "arms" / arm / "nnUNet_results" / HIP_RESULTS / f"{trainer}__nnUNetPlans__{cfg}" /
               f"fold_{fold}", epochs, epoch_time=lambda e: epoch_s, iterations=iterations)


def _pretraining(root: Path, method: str, trainer: str, epochs: int, epoch_s: float, finished: bool,
                 key="hippocampus", cfg="3d_fullres", iterations=20):
    folder = (root / key / "pretrain" / method / "nnUNet_results" / "Dataset402_X" /
              f"{trainer}__nnUNetPlans__{cfg}" / "fold_all")
    _write_log(folder, epochs, epoch_time=lambda e: epoch_s, iterations=iterations)
    if finished:
        (folder / "checkpoint_final.pth").write_bytes(b"")


def _epoch(pace: Pace, key: str, name: str, iterations: int = 20) -> tuple:
    """(seconds per epoch of ``iterations`` steps or None, where from): the runs of these tests log 20 per epoch."""
    step, how = pace.step_seconds(key, name)
    return (None if step is None else step * iterations), how


def test_every_arm_and_pretraining_has_a_cost():
    from nnunet_ssl.benchmark.arms import ARMS, PRETRAIN_TRAINERS
    assert set(ARMS) | {f"pretrain:{m}" for m in PRETRAIN_TRAINERS} <= set(EPOCH_COST)



def test_pretraining_costs_match_the_recorded_acdc_paces(tmp_path):
    """The table's pre-training entries are per-step ratios, as Pace keeps paces: a recorded ACDC pre-training's step
    against the stock-cost fine-tuning steps recorded on the same day (the record holds runs of several machines; a
    session's runs share one) is within 20 % of the table's (the entries were per-epoch ratios, about half as large,
    until 2026-12-07)."""
    import re
    import shutil
    record = REPO / "docs" / "benchmarks" / "low_label_cpu_runs"
    if not (record / "acdc").is_dir():
        pytest.skip(f"no recorded ACDC runs in {record}")
    by_day = {}  # day -> the record's run and pre-training folders whose logs start that day
    for log in (record / "acdc").glob("*/*/**/training_log_*.txt"):
        day = re.match(r"training_log_(\d+_\d+_\d+)_", log.name).group(1)
        by_day.setdefault(day, set()).add(log.parent)
    checked = []
    for day, folders in by_day.items():
        copy = tmp_path / day
        for folder in folders:
            shutil.copytree(folder, copy / folder.relative_to(record))
        steps = {n: m for s, n, m in Pace._step_times(Pace(tmp_path / "none", copy).read("acdc"))}
        stock = [m for n, m in steps.items() if stock_cost(n)]  # pooled: one value
        for name in (n for n in steps if n.startswith("pretrain:") and n in EPOCH_COST and stock):
            checked.append(name)
            assert steps[name] / stock[0] == pytest.approx(EPOCH_COST[name], rel=0.2), (name, day)
    assert checked and ("pretrain:pgl" in checked or not (record / "acdc" / "pretrain" / "pgl").is_dir())

def test_parse_deadline_forms():
    now = datetime(2026, 12, 2, 23, 0).timestamp()
    assert parse_deadline("+90", now) == now + 5400
    assert parse_deadline("23:30", now) == now + 1800
    assert parse_deadline("00:30", now) == now + 5400  # past midnight: the next day's
    assert parse_deadline("22:00", now) == now + 23 * 3600  # already passed today: tomorrow's
    assert parse_deadline(str(int(now) + 60), now) == int(now) + 60
    for bad in ("soon", "25", "1:2:3"):
        with pytest.raises(ValueError):
            parse_deadline(bad, now)


def test_resume_epoch_is_the_last_checkpoint():
    assert [resume_epoch(c, 5) for c in (0, 4, 5, 9, 10, 23)] == [0, 0, 5, 5, 10, 20]
    assert resume_epoch(7, 1) == 7


def test_this_machine_first_then_scaled_then_record(tmp_path):
    work, record = tmp_path / "work", tmp_path / "record"
    _run(record, "scratch", "nnUNetTrainer_schedule", 0, 50, 100.0)
    _run(record, "mae", "SSLFinetuneTrainer_decoderWarmup", 0, 20, 120.0)
    pace = Pace(work, record)
    # nothing on this machine: the record's pace of the stock-cost arms, one median over all their epochs (mae's
    # 20 slower epochs among scratch's 50 do not set mae apart: both train the stock network)
    assert _epoch(pace, "hippocampus", "mae")[0] == 100.0
    assert _epoch(pace, "hippocampus", "scratch")[0] == 100.0
    # an arm the record lacks: scaled from the record's scratch
    s, how = _epoch(pace, "hippocampus", "ideal-semi")
    assert s == pytest.approx(100.0 * EPOCH_COST["ideal-semi"]) and "stock-cost arms'" in how and "record" in how
    # this machine's pace wins over the record's, even scaled from another arm
    _run(work, "scratch", "nnUNetTrainer_schedule", 1, 50, 40.0)
    assert _epoch(pace, "hippocampus", "mae")[0] == pytest.approx(40.0)
    assert _epoch(pace, "hippocampus", "scratch")[0] == 40.0
    # a pre-training is scaled from pre-trainings first (epochs of another kind)
    _pretraining(work, "ideal", "IDEALTrainer", 100, 30.0, finished=True)
    s, how = _epoch(pace, "hippocampus", "pretrain:mae")
    assert s == pytest.approx(30.0 * EPOCH_COST["pretrain:mae"] / EPOCH_COST["pretrain:ideal"]) and "ideal" in how
    assert pace.step_seconds("acdc", "scratch") == (None, "no epoch time of this dataset yet")


def test_estimate_counts_progress_pretraining_and_prediction(tmp_path):
    work, record = tmp_path / "work", tmp_path / "record"
    _run(work, "scratch", "nnUNetTrainer_schedule", 0, 50, 10.0, seconds={"predict": 50.0, "evaluate": 10.0})
    pace = Pace(work, record)
    schedule = {"num_epochs": 50, "save_every": 5, "num_iterations_per_epoch": 20}
    full = pace.estimate_run("hippocampus", "scratch", 1, 1, schedule)
    assert full.seconds == pytest.approx((50 + 2) * 10.0 + 60.0)  # 2 epochs: final validation; + predict/evaluate
    # a run stopped after 23 logged epochs continues from epoch 20
    _run(work, "scratch", "nnUNetTrainer_schedule", 1, 23, 10.0, evaluated=False)
    part = pace.estimate_run("hippocampus", "scratch", 1, 1, schedule)
    assert part.seconds == pytest.approx((30 + 2) * 10.0 + 60.0)
    assert (part.resumes_at, full.resumes_at) == (20, 0)
    # an arm whose pre-training has not run adds it; a finished one in the work dir does not
    pre = {"num_epochs": 100, "save_every": 5, "num_iterations_per_epoch": 20}
    with_pre = pace.estimate_run("hippocampus", "mae", 1, 2, schedule, "mae", "s", pre)
    assert with_pre.seconds == pytest.approx(full.seconds + 101 * 10.0 * EPOCH_COST["pretrain:mae"])
    assert "pre-training mae" in with_pre.detail and full.pretrain_seconds is None
    assert with_pre.pretrain_seconds == pytest.approx(101 * 10.0 * EPOCH_COST["pretrain:mae"])
    _pretraining(work, "mae", "MAETrainer", 100, 8.0, finished=True)
    assert pace.estimate_run("hippocampus", "mae", 1, 2, schedule, "mae", "s", pre).seconds == \
        pytest.approx(full.seconds)
    # recorded weights of the same settings count as a finished pre-training; of other settings they do not
    weights = record / "hippocampus" / "pretrain" / "ideal"
    weights.mkdir(parents=True)
    (weights / "run.json").write_text(json.dumps({"finished": True, "settings": "s"}))
    from nnunet_ssl.benchmark.record import WEIGHTS_FILE
    (weights / WEIGHTS_FILE).write_bytes(b"")
    assert pace.estimate_run("hippocampus", "ideal", 1, 2, schedule, "ideal", "s", pre).seconds == \
        pytest.approx(full.seconds)
    assert pace.estimate_run("hippocampus", "ideal", 1, 2, schedule, "ideal", "other", pre).seconds > full.seconds
    assert pace.estimate(key="acdc", arm="scratch", num_epochs=5, save_every=5, iterations=20).fits(0.0)  # unknown pace: run it


def _driver(work: Path, record: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_low_label.py"), "--profile", "cpu",
                           "--work-dir", str(work), "--record-dir", str(record), "--stage", "runs",
                           "--datasets", "hippocampus", "--arms", "scratch", "--budgets", "1", "--seeds", "0", "1",
                           *extra], capture_output=True, text=True, timeout=300)


def test_driver_deadline_starts_nothing_that_cannot_finish(tmp_path):
    """--deadline: a run estimated past it is listed as not started (no dataset set up, nothing trained); the
    dry run prints the estimate; a malformed deadline is a usage error."""
    work, record = tmp_path / "work", tmp_path / "record"
    _run(record, "scratch", "nnUNetTrainer_schedule", 0, 50, 100.0)  # seed 0 recorded: 100 s per epoch
    dry = _driver(work, record, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "hippocampus/scratch/b1_s1" in dry.stdout and "about 1h27m still to do" in dry.stdout
    out = _driver(work, record, "--deadline", "+30")
    assert out.returncode == 0, out.stderr
    assert "hippocampus/scratch/b1_s1: not started: needs about 1h27m" in out.stdout
    assert not (work / "nnUNet_raw").exists() or not any((work / "nnUNet_raw").iterdir())
    assert not (work / "hippocampus" / "arms").exists()
    bad = _driver(work, record, "--deadline", "soon")
    assert bad.returncode == 2 and "--deadline 'soon'" in bad.stderr
    _run(record, "scratch", "nnUNetTrainer_schedule", 1, 50, 100.0)  # every run recorded: nothing to do, said so
    done = _driver(work, record, "--deadline", "+30")
    assert done.returncode == 0 and "nothing to do" in done.stdout and "nothing started" not in done.stdout


def test_deadline_continues_a_stopped_run_that_cannot_finish(tmp_path, capsys):
    """A run stopped on this machine with a checkpoint continues under a --deadline it cannot meet (a run longer
    than a session finishes over several on the same machine); one that has not started, or has no checkpoint yet,
    does not start."""
    import argparse
    from nnunet_ssl.benchmark.arms import ARMS
    from nnunet_ssl.benchmark.driver import Run
    from nnunet_ssl.benchmark.main import dataset_specs, deadline_decision
    work, record = tmp_path / "work", tmp_path / "record"
    _run(record, "scratch", "nnUNetTrainer_schedule", 0, 50, 100.0)  # 100 s per epoch: a run needs about 1h27m
    args = argparse.Namespace(profile="cpu", deadline=time.time() + 1800)
    specs, pace = dataset_specs(args), Pace(work, record)
    run = Run("hippocampus", ARMS["scratch"], 1, 1)
    assert deadline_decision(pace, args, specs, run) == ""
    assert "not started: needs about" in capsys.readouterr().out
    _run(work, "scratch", "nnUNetTrainer_schedule", 1, 4, 100.0, evaluated=False)  # 4 epochs: no checkpoint yet
    assert deadline_decision(pace, args, specs, run) == ""
    _run(work, "scratch", "nnUNetTrainer_schedule", 1, 12, 100.0, evaluated=False)  # checkpoint of epoch 10
    assert deadline_decision(pace, args, specs, run) == "run"
    assert "hippocampus/scratch/b1_s1: continues from epoch 10 although it needs about" in capsys.readouterr().out
    # a stopped pre-training (GMIM's: 100 epochs of 20 iterations; here 30 s per epoch, 7 logged) continues alone
    gmim = Run("hippocampus", ARMS["gmim"], 1, 0)
    _pretraining(work, "gmim", "GMIMTrainer", 4, 30.0, finished=False)
    assert deadline_decision(pace, args, specs, gmim) == ""
    _pretraining(work, "gmim", "GMIMTrainer", 7, 30.0, finished=False)
    assert deadline_decision(pace, args, specs, gmim) == "pretrain"
    assert "its pre-training continues from epoch 5 although it needs about" in capsys.readouterr().out


def test_queue_runs_deadline_pass_then_the_rest(tmp_path):
    """The queue's DEADLINE: a first pass with one fixed --deadline for every line, then the rest without it."""
    queue = tmp_path / "queue.txt"
    queue.write_text("--datasets hippocampus --arms scratch  # a comment\n\n--datasets acdc --arms scratch\n")
    fake = tmp_path / "python"  # stands in for the driver: prints its arguments (the queue's python -c runs first)
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then exec {sys.executable} \"$@\"; fi\necho ARGS \"$@\"\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "WORK": str(tmp_path / "w"), "PYTHON": str(fake), "DEADLINE": "+60",
           "PYTHONPATH": str(REPO), "COMMIT": "1", "RECORD": str(tmp_path / "no_record")}
    out = subprocess.run(["bash", str(REPO / "scripts" / "benchmark_queue.sh"), str(queue)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = [line for line in out.stdout.splitlines() if line.startswith("ARGS")]
    assert len(calls) == 4
    deadlines = {c.split("--deadline ")[1].split()[0] for c in calls[:2]}
    assert len(deadlines) == 1 and abs(int(deadlines.pop()) - (time.time() + 3600)) < 120
    assert "--datasets hippocampus" in calls[0] and "--datasets acdc" in calls[1]
    assert all(c.endswith("--commit-record") for c in calls)  # COMMIT=1: the driver commits after every run
    assert all("--deadline" not in c for c in calls[2:]) and "--datasets hippocampus" in calls[2]
    assert "queue done" in out.stdout


def test_deadline_decision_runs_a_pretraining_alone_when_only_it_fits(tmp_path):
    """A run too long for the deadline whose pre-training alone fits: the pre-training runs (its checkpoint and
    recorded weights outlive the session), the fine-tuning does not start."""
    from nnunet_ssl.benchmark import main as bm
    from nnunet_ssl.benchmark.arms import ARMS
    from nnunet_ssl.benchmark.driver import Run
    work, record = tmp_path / "work", tmp_path / "record"
    _run(work, "scratch", "nnUNetTrainer_schedule", 0, 50, 60.0, seconds={"predict": 0.0, "evaluate": 0.0})
    specs = bm.dataset_specs(bm.parse_args(["--profile", "cpu"]))
    pace = Pace(work, record)
    run = Run("hippocampus", ARMS["mae"], 1, 0)  # 52 x 60 s fine-tuning + 101 x 60 s x cost MAE pre-training
    assert EPOCH_COST["pretrain:mae"] == 1.0  # (the minutes below: 52 + 101 = 153 in all, 101 the pre-training)
    def decide(minutes):
        args = bm.parse_args(["--profile", "cpu", "--work-dir", str(work), "--deadline", f"+{minutes}"])
        return bm.deadline_decision(pace, args, specs, run)
    assert decide(200) == "run"
    assert decide(120) == "pretrain"
    assert decide(60) == ""


def test_record_pace_is_scaled_by_this_machines_speed(tmp_path):
    """The record's epoch times come from other machines: where this machine ran an arm of another dataset that the
    record holds from elsewhere, the record's times are scaled by the ratio; a recorded copy of this machine's own
    run (the same epoch times) is no measure of speed and does not count."""
    work, record = tmp_path / "work", tmp_path / "record"
    _run(record, "scratch", "nnUNetTrainer_schedule", 0, 50, 100.0)  # hippocampus, on the old machine
    pace = Pace(work, record)
    assert _epoch(pace, "hippocampus", "scratch")[0] == 100.0  # nothing to compare with yet
    _run(record, "scratch", "nnUNetTrainer_schedule", 0, 50, 60.0, key="acdc", cfg="2d")  # old machine
    _run(work, "ideal", "SSLFinetuneTrainer", 0, 50, 30.0, key="acdc", cfg="2d")  # this machine: twice as fast
    _run(record, "ideal", "SSLFinetuneTrainer", 0, 50, 30.0, key="acdc", cfg="2d")  # its copy in the record
    s, how = _epoch(pace, "hippocampus", "scratch")
    assert s == pytest.approx(50.0) and "x 0.50" in how and "acdc" in how
    s, _ = _epoch(pace, "hippocampus", "ideal-semi")  # scaled from the record's scratch, then by speed
    assert s == pytest.approx(100.0 * EPOCH_COST["ideal-semi"] * 0.5)
    # pre-trainings are compared with pre-trainings only: none on both sides here, so the same 0.5 applies
    assert pace.speed_factor(["acdc"])[0] == pytest.approx(0.5)
    # this machine's own epochs of the dataset still win
    _run(work, "scratch", "nnUNetTrainer_schedule", 1, 50, 70.0)
    assert _epoch(pace, "hippocampus", "scratch")[0] == 70.0


def test_speed_factor_pairs_the_pooled_stock_paces(tmp_path):
    """The estimates pool the stock-cost fine-tuning arms into one pace per source; the speed factor compares those
    pooled paces too. Here the record's stock-cost arms ran at 60 s (3 scratch runs) and 30 s (1 MAE run), pooled
    60; this machine ran MAE at 15: the factor is 0.25 (so the record's pooled 60 becomes this machine's 15), where
    pairing MAE's own medians would have said 0.5."""
    work, record = tmp_path / "work", tmp_path / "record"
    for seed in range(3):
        _run(record, "scratch", "nnUNetTrainer_schedule", seed, 50, 60.0, key="acdc", cfg="2d")
    _run(record, "mae", "SSLFinetuneTrainer_decoderWarmup", 0, 50, 30.0, key="acdc", cfg="2d")
    _run(work, "mae", "SSLFinetuneTrainer_decoderWarmup", 1, 50, 15.0, key="acdc", cfg="2d")
    pace = Pace(work, record)
    factor, how = pace.speed_factor(["acdc"])
    assert factor == pytest.approx(0.25) and "acdc" in how
    _run(record, "scratch", "nnUNetTrainer_schedule", 0, 50, 40.0)  # hippocampus, the old machine only
    assert _epoch(pace, "hippocampus", "gmim")[0] == pytest.approx(10.0)  # the record's pooled 40 x 0.25


def test_unknown_arm_is_scaled_by_its_ratio_measured_on_another_dataset_of_the_same_configuration(tmp_path,
                                                                                                   monkeypatch):
    """An arm never run on this dataset: scaled from one that was by the two arms' epoch-time ratio measured on
    another dataset of the same configuration (same machine), not by the EPOCH_COST table's margin; without such a
    pair, or where the other dataset's network differs (ACDC 2d against hippocampus 3d_fullres), the table."""
    from dataclasses import replace

    from nnunet_ssl.benchmark import datasets
    work, record = tmp_path / "work", tmp_path / "record"
    _run(work, "scratch", "nnUNetTrainer_schedule", 0, 50, 60.0)  # hippocampus
    pace = Pace(work, record)
    assert _epoch(pace, "hippocampus", "ideal-semi")[0] == pytest.approx(60.0 * EPOCH_COST["ideal-semi"])
    _run(work, "scratch", "nnUNetTrainer_schedule", 0, 100, 40.0, key="acdc", cfg="2d")
    _run(work, "ideal-semi", "IDEALSemiSupervisedTrainer_decoderWarmup", 0, 30, 104.0, evaluated=False, key="acdc",
         cfg="2d")
    # the real datasets: ACDC's 2d ratio says nothing of hippocampus' 3d network
    assert pace.measured_ratios("hippocampus", "ideal-semi") == {}
    assert _epoch(pace, "hippocampus", "ideal-semi")[0] == pytest.approx(60.0 * EPOCH_COST["ideal-semi"])
    # had ACDC the same configuration, its ratio would count
    monkeypatch.setitem(datasets.DATASETS, "acdc", replace(datasets.DATASETS["acdc"], configuration="3d_fullres"))
    _run(work, "scratch", "nnUNetTrainer_schedule", 0, 100, 40.0, key="acdc")
    _run(work, "ideal-semi", "IDEALSemiSupervisedTrainer_decoderWarmup", 0, 30, 104.0, evaluated=False, key="acdc")
    pace = Pace(work, record)
    s, how = _epoch(pace, "hippocampus", "ideal-semi")
    assert s == pytest.approx(60.0 * 2.6) and "acdc" in how and "x 2.60" in how
    assert _epoch(pace, "acdc", "ideal-semi")[0] == 104.0  # its own epochs still win
    # a pair measured only with another base arm: that base is used where this dataset has it
    assert "ideal" not in pace.measured_ratios("hippocampus", "ideal-semi")
    est = pace.estimate("hippocampus", "ideal-semi", num_epochs=50, save_every=5, iterations=20)
    assert est.seconds == pytest.approx((50 + 2) * 60.0 * 2.6 + 60.0)


def test_paces_compare_per_training_step_across_epoch_lengths(tmp_path):
    """ACDC fine-tunes 40 iterations per epoch, its pre-trainings 20: an epoch time counts per training step (the
    log's NNUNET_SSL_SETTINGS line, else the run's settings, else nnU-Net's 250), and an estimate multiplies by the
    run's own iterations. Without that, a 40-iteration run estimated from 20-iteration epochs came out at half."""
    work, record = tmp_path / "work", tmp_path / "record"
    _pretraining(record, "ideal", "IDEALTrainer", 100, 30.0, finished=True, key="acdc", cfg="2d", iterations=20)
    pace = Pace(work, record)
    step, how = pace.step_seconds("acdc", "scratch")  # from the pre-training's steps, by the cost table
    assert step == pytest.approx(30.0 / 20 * EPOCH_COST["scratch"] / EPOCH_COST["pretrain:ideal"])
    est = pace.estimate("acdc", "scratch", num_epochs=100, save_every=5, iterations=40)
    assert est.seconds == pytest.approx((100 + 2) * step * 40)
    assert f"100 epochs x {step * 40:.0f} s" in est.detail  # 40 steps of the pre-training's, not 20
    # the log names 40 iterations although run.json's settings say 20: the log wins (it is what trained)
    _run(work, "scratch", "nnUNetTrainer_schedule", 0, 100, 80.0, key="acdc", cfg="2d", iterations=40)
    assert pace.step_seconds("acdc", "scratch")[0] == pytest.approx(2.0)
    # no line in the log: the run's settings (CPU_SETTINGS: 20); no settings either: nnU-Net's 250
    # (an arm with a pace of its own: the stock-cost arms share one)
    _run(work, "ideal-semi", "IDEALSemiSupervisedTrainer_decoderWarmup", 0, 50, 40.0, key="acdc", cfg="2d")
    assert pace.step_seconds("acdc", "ideal-semi")[0] == pytest.approx(2.0)
    info = work / "acdc" / "arms" / "ideal-semi" / "b1_s0" / "run.json"
    info.write_text(json.dumps({"fold": 0, "trainer": "IDEALSemiSupervisedTrainer_decoderWarmup"}))
    assert pace.step_seconds("acdc", "ideal-semi")[0] == pytest.approx(40.0 / 250)


def test_a_longer_pretraining_is_paced_by_its_methods_own_steps(tmp_path):
    """pgl-2x runs PGLTrainer for twice the epochs: until it has epochs of its own, PGL's pre-training's steps pace
    it (not another method's scaled by the table: that estimate was 43 s an epoch where PGL took 52)."""
    work, record = tmp_path / "work", tmp_path / "record"
    _pretraining(record, "gmim", "GMIMTrainer", 100, 20.0, finished=True)
    pace = Pace(work, record)
    s, how = _epoch(pace, "hippocampus", "pretrain:pgl-2x")
    assert s == pytest.approx(20.0 * EPOCH_COST["pretrain:pgl-2x"] / EPOCH_COST["pretrain:gmim"]) and "gmim" in how
    _pretraining(record, "pgl", "PGLTrainer", 100, 52.0, finished=True)
    assert _epoch(pace, "hippocampus", "pretrain:pgl-2x") == (pytest.approx(52.0),
                                                              "pretrain:pgl's median step on the record")
    _pretraining(work, "pgl-2x", "PGLTrainer", 3, 40.0, finished=False)  # its own epochs win
    assert _epoch(pace, "hippocampus", "pretrain:pgl-2x") == (pytest.approx(40.0),
                                                              "pretrain:pgl-2x's median step on this machine")
