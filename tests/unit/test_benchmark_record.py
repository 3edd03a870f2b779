"""The benchmark's record: finished runs copied where git keeps them, skipped by the driver and read by the report
when the machine (and its work directory) is gone."""
import json
import shutil
from pathlib import Path

import pytest

from test_benchmark_report import _summary, _write_log, fake_work  # noqa: F401 (fixture)

from nnunet_ssl.benchmark import record as rec
from nnunet_ssl.benchmark import report as rp
from nnunet_ssl.benchmark import run_logs as rl
from nnunet_ssl.benchmark.arms import ARMS, PRETRAIN_TRAINERS
from nnunet_ssl.benchmark.driver import Run, run_is_done

CFG = {"hippocampus": "3d_fullres"}


def _sync(work, record):
    return rec.sync(work, record, ["hippocampus"], CFG, PRETRAIN_TRAINERS)


def test_sync_copies_evaluated_runs_and_finished_pretrainings_once(fake_work, tmp_path):
    record = tmp_path / "record"
    assert _sync(fake_work, record) == 4 + 1  # scratch and mae, seeds 0 and 1; the MAE pre-training
    run = record / "hippocampus" / "arms" / "mae" / "b1_s0"
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "summary.json", "training_log_2026_1_1_00_00_00.txt"]
    assert (run / "summary.json").read_bytes() == (fake_work / "hippocampus/arms/mae/b1_s0/summary.json").read_bytes()
    assert not (record / "hippocampus" / "arms" / "scratch" / "b2_s0").exists()  # still training: not recorded
    pre = record / "hippocampus" / "pretrain" / "mae"
    assert json.loads((pre / "run.json").read_text()) == {"seconds": 60.0, "ran_as": "MAETrainer_old, the same settings",
                                                          "finished": True}
    assert json.loads((record / "hippocampus" / "split.json").read_text())["test_groups"][0] == "hippocampus_001"
    assert "nnUNetv2_train X" in (record / "commands.sh").read_text()
    assert _sync(fake_work, record) == 0  # nothing new
    # a run evaluated again (another machine re-ran it) replaces its record
    summary = fake_work / "hippocampus" / "arms" / "mae" / "b1_s0" / "summary.json"
    summary.write_text(json.dumps(_summary({"hippocampus_001": {1: 0.9, 2: 0.9}})))
    assert _sync(fake_work, record) == 1 and (run / "summary.json").read_text() == summary.read_text()


def test_recorded_runs_are_done_and_reported_without_the_work_dir(fake_work, tmp_path):
    record = tmp_path / "record"
    out_work, out_record = tmp_path / "out_work", tmp_path / "out_record"
    _sync(fake_work, record)
    from_work = rp.build_report(fake_work, "cpu", out_work, record=tmp_path / "empty").read_text()
    shutil.rmtree(fake_work)  # the machine is gone
    assert run_is_done(fake_work, Run("hippocampus", ARMS["mae"], 1, 0), record)
    assert not run_is_done(fake_work, Run("hippocampus", ARMS["mae"], 1, 0))
    assert not run_is_done(fake_work, Run("hippocampus", ARMS["scratch"], 2, 0), record)
    from_record = rp.build_report(fake_work, "cpu", out_record, record=record).read_text()
    for line in ("| 1 | scratch | 0.520 ± 0.014 | 0.400 ± 0.000 | 0.460 ± 0.007 | 2 |",  # Dice table
                 "| 1 | mae | 6 (2 x 3) | +10.0 [+10.0, +10.0] | 0.031 | 6 / 6 |",  # paired
                 "| 1 | scratch | 0 | evaluated | 50 | 0.800 | 0.795 | 0.800 -> 0.800 | +0.000 | yes |",  # curves
                 "| mae | MAETrainer | finished | 100 |", "| scratch | 2 | 25m50s | 31s | 12s | 51m14s |"):
        assert line in from_work and line in from_record, line
    assert (out_record / "low_label_cpu_per_case.csv").read_text() == (out_work / "low_label_cpu_per_case.csv"
                                                                       ).read_text()
    assert "nnUNetv2_train X" in from_record  # example commands from the record's commands.sh


def test_a_run_in_both_places_is_read_once_and_the_further_one_wins(fake_work, tmp_path):
    record = tmp_path / "record"
    _sync(fake_work, record)
    # the work dir holds a re-start of mae b1_s0 (no evaluation yet): the record's evaluation is reported
    (fake_work / "hippocampus" / "arms" / "mae" / "b1_s0" / "summary.json").unlink()
    runs = rl.read_runs([fake_work, record], "hippocampus")
    keys = [(r["arm"], r["budget"], r["seed"]) for r in runs]
    assert len(keys) == len(set(keys)) == 5
    mae = next(r for r in runs if (r["arm"], r["seed"]) == ("mae", 0))
    assert mae["status"] == "evaluated" and mae["folder"].is_relative_to(record) and len(mae["rows"]) == 3
    assert len(mae["curves"]["pseudo_dice"]) == 50
    _write_log(record / "hippocampus" / "pretrain" / "gmim", 3, val=lambda e: 1.0)  # recorded, unfinished
    pres = {p["method"]: p for p in rl.read_pretrainings([fake_work, record], "hippocampus")}
    assert pres["mae"]["finished"] and not pres["gmim"]["finished"] and len(pres["gmim"]["curves"]["val_loss"]) == 3


def test_recorded_weights_restart_fine_tuning_on_a_new_machine(tmp_path):
    """Weights recorded for a method (half precision, no optimizer or heads) are where fine-tuning starts once the
    work directory's checkpoint is gone, only for the same pre-training settings, and load into the network."""
    import torch
    from real_networks import PLAIN, architecture, build

    from nnunet_ssl.benchmark.datasets import DATASETS
    from nnunet_ssl.benchmark.driver import DatasetSetup, pretrained_start, training_environment
    from nnunet_ssl.benchmark.splits import make_split
    from nnunet_ssl.weights.transfer import transfer_weights
    work, record = tmp_path / "work", tmp_path / "record"
    ds = DATASETS["hippocampus"]
    cases = [f"hippocampus_{i:03d}" for i in range(60)]
    s = DatasetSetup(ds, make_split(ds, cases, 0), "Dataset401_LowLabelHippocampus", "", "", [1, 2], {},
                     unlabeled="Dataset402_LowLabelHippocampusUnlabeled")
    torch.manual_seed(0)
    net = build(architecture(PLAIN, [[1, 1, 1], [2, 2, 2]], features=[4, 8]))
    folder = work / "hippocampus" / "pretrain" / "mae"
    train = folder / "nnUNet_results" / s.unlabeled / "MAETrainer__nnUNetPlans__3d_fullres" / "fold_all"
    _write_log(train, 4, val=lambda e: 1.0)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": {"state": {0: torch.zeros(1000)}},
                "ssl_state": {"decoder_head": {"w": torch.zeros(1000)}}, "trainer_name": "MAETrainer",
                "nnunet_ssl": {"kind": "pretraining", "transfer_decoder": False}}, train / "checkpoint_final.pth")
    (folder / "run.json").write_text(json.dumps({"settings": "num_epochs=100", "seconds": 1.0}))
    cfg = {"hippocampus": "3d_fullres"}
    assert rec.sync(work, record, ["hippocampus"], cfg, PRETRAIN_TRAINERS) == 1  # logs only: weights not asked
    assert not (record / "hippocampus" / "pretrain" / "mae" / rec.WEIGHTS_FILE).exists()
    assert rec.sync(work, record, ["hippocampus"], cfg, PRETRAIN_TRAINERS, weights_of=("mae",)) == 1
    weights = record / "hippocampus" / "pretrain" / "mae" / rec.WEIGHTS_FILE
    from nnunet_ssl.weights.checkpoint import load_checkpoint_file
    kept = load_checkpoint_file(weights)  # the loader fine-tuning uses (weights only, no code)
    assert "optimizer_state" not in kept and "ssl_state" not in kept and kept["trainer_name"] == "MAETrainer"
    assert all(v.dtype == torch.float16 for v in kept["network_weights"].values() if v.is_floating_point())
    assert rec.sync(work, record, ["hippocampus"], cfg, PRETRAIN_TRAINERS, weights_of=("mae",)) == 0

    ckpt = train / "checkpoint_final.pth"
    assert pretrained_start(work, s, "mae", "num_epochs=100", record) == ckpt  # the machine's own checkpoint first
    shutil.rmtree(work)  # a new machine
    assert pretrained_start(work, s, "mae", "num_epochs=100", record) == weights
    assert pretrained_start(work, s, "mae", "num_epochs=50", record) is None  # another pre-training: run it
    assert pretrained_start(work, s, "mae", "num_epochs=100") is None
    run = Run("hippocampus", ARMS["mae"], 1, 0)
    assert training_environment(work, s, run, False, "num_epochs=100", record) == {"NNUNET_SSL_PRETRAINED":
                                                                                    str(weights)}
    # MAE's decoder is not transferred (transfer_decoder False): only the encoder is kept, each tensor once
    from nnunet_ssl.weights.network_parts import is_encoder_key
    assert kept["network_weights"] and all(is_encoder_key(k) for k in kept["network_weights"])
    encoder_bytes = sum(p.numel() for p in net.encoder.parameters()) * 2
    assert encoder_bytes < weights.stat().st_size < 1.5 * encoder_bytes + 20000
    fresh = build(architecture(PLAIN, [[1, 1, 1], [2, 2, 2]], features=[4, 8]))
    assert transfer_weights(fresh, kept, load_decoder=False).loaded
    for k, v in net.state_dict().items():
        if is_encoder_key(k):
            assert torch.allclose(fresh.state_dict()[k], v, rtol=1e-3, atol=1e-4), k


def test_compact_checkpoint_keeps_a_transferred_decoder():
    import torch
    from real_networks import PLAIN, architecture, build

    from nnunet_ssl.weights.transfer import transfer_weights
    net = build(architecture(PLAIN, [[1, 1, 1], [2, 2, 2]], features=[4, 8]))
    kept = rec.compact_checkpoint({"network_weights": net.state_dict(), "optimizer_state": {}, "trainer_name": "IDEAL",
                                   "nnunet_ssl": {"kind": "pretraining", "transfer_decoder": True}})
    assert set(kept["network_weights"]) == set(net.state_dict()) and "optimizer_state" not in kept
    assert kept["nnunet_ssl"]["recorded_half_precision"] and not kept["nnunet_ssl"]["recorded_encoder_only"]
    fresh = build(architecture(PLAIN, [[1, 1, 1], [2, 2, 2]], features=[4, 8]))
    transfer_weights(fresh, kept)
    for k, v in net.state_dict().items():
        if ".seg_layers." not in k and v.is_floating_point():
            assert torch.allclose(fresh.state_dict()[k], v, rtol=1e-3, atol=1e-4), k


def test_a_queue_line_whose_runs_are_recorded_sets_nothing_up(tmp_path, capsys):
    """--stage runs with every run in the record: no work dir, no planning, no ingestion (seconds, not minutes)."""
    from nnunet_ssl.benchmark.driver import run_settings
    from nnunet_ssl.benchmark.main import dataset_specs, main, parse_args, schedule_of
    record, work = tmp_path / "record", tmp_path / "new_machine"
    cli = ["--profile", "cpu", "--datasets", "acdc", "--arms", "ideal", "--budgets", "1", "--seeds", "0",
           "--work-dir", str(work), "--record-dir", str(record), "--stage", "runs"]
    run = Run("acdc", ARMS["ideal"], 1, 0)
    folder = record / "acdc" / "arms" / "ideal" / "b1_s0"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(_summary({"acdc_patient001_frame01": {1: 0.5}})))
    schedule = schedule_of(parse_args(cli), dataset_specs(parse_args(cli))["acdc"])
    (folder / "run.json").write_text(json.dumps({"settings": run_settings(schedule, run)}))
    assert main(cli) == 0
    assert "1 runs, 0 to do" in capsys.readouterr().out and not work.exists()


def test_queue_script_skips_recorded_runs_and_stops_at_a_failing_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from nnunet_ssl.benchmark.driver import run_settings
    from nnunet_ssl.benchmark.main import dataset_specs, parse_args, schedule_of
    repo = Path(__file__).resolve().parents[2]
    record, work = tmp_path / "record", tmp_path / "work"
    folder = record / "acdc" / "arms" / "ideal" / "b1_s0"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(_summary({"acdc_patient001_frame01": {1: 0.5}})))
    args = parse_args(["--profile", "cpu", "--datasets", "acdc"])
    schedule = schedule_of(args, dataset_specs(args)["acdc"])
    (folder / "run.json").write_text(json.dumps({"settings": run_settings(schedule, Run("acdc", ARMS["ideal"], 1, 0))}))
    queue = tmp_path / "queue.txt"
    queue.write_text(f"# a comment\n\n--datasets acdc --arms ideal --budgets 1 --seeds 0 --record-dir {record}  # done\n"
                     f"--datasets acdc --arms no-such-arm\n--datasets hippocampus --arms scratch\n")
    env = dict(os.environ, WORK=str(work), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(repo / "scripts" / "benchmark_queue.sh"), str(queue)], env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "queue line 1: --datasets acdc --arms ideal" in out and "1 runs, 0 to do" in out
    assert "queue line 2 failed (exit 2)" in out and "queue line 3" not in out and not work.exists()


def test_commit_takes_the_record_folder_alone(tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True).stdout
    record = tmp_path / "docs" / "runs"
    assert not rec.commit(record, "x")  # not a git work tree (and no folder)
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "other.txt").write_text("staged, not ours")
    git("add", "other.txt")
    (record / "hippocampus").mkdir(parents=True)
    (record / "hippocampus" / "run.json").write_text("{}")
    assert rec.commit(record, "Benchmark record: a run")
    assert git("log", "--format=%s") == "Benchmark record: a run\n"
    assert git("show", "--name-only", "--format=").split() == ["docs/runs/hippocampus/run.json"]
    assert "A  other.txt" in git("status", "--porcelain")  # still staged, not committed
    assert rec.commit(record, "nothing new") and git("log", "--format=%s").count("\n") == 1


def test_recorded_weights_of_other_method_defaults_are_not_reused(tmp_path):
    """A pre-training recorded with the same settings text but other method defaults (e.g. IDEAL before a change of
    its default levels) is not where fine-tuning starts; one recorded before defaults were recorded still is."""
    from nnunet_ssl.benchmark.arms import method_defaults
    rel = Path("acdc") / "pretrain" / "ideal"
    folder = tmp_path / rel
    folder.mkdir(parents=True)
    (folder / rec.WEIGHTS_FILE).write_bytes(b"weights")
    current = method_defaults("ideal")
    assert current["levels"] == "auto" and current["temperature"] == 0.1
    shallow = method_defaults("ideal-shallow")  # IDEAL's default levels until 2026-12-05
    assert shallow["levels"] == "bottleneck,decoder1" and shallow != current

    def write(**info):
        (folder / "run.json").write_text(json.dumps(dict(settings="num_epochs=100", finished=True, **info)))
    write(method_defaults=current)
    assert rec.recorded_weights(tmp_path, rel, "num_epochs=100", current) == folder / rec.WEIGHTS_FILE
    write(method_defaults=shallow)
    assert rec.recorded_weights(tmp_path, rel, "num_epochs=100", current) is None
    write()  # recorded before the defaults were
    assert rec.recorded_weights(tmp_path, rel, "num_epochs=100", current) == folder / rec.WEIGHTS_FILE


def test_after_holds_a_queue_line_until_the_runs_it_names_are_evaluated(tmp_path, capsys):
    """--after: a line that a result decides (a route check) starts nothing while a named run is not evaluated, in
    the work dir or the record, whatever a time limit would allow; a name that is no run is a usage error."""
    from nnunet_ssl.benchmark.driver import run_settings
    from nnunet_ssl.benchmark.main import dataset_specs, main, parse_args, schedule_of
    record, work = tmp_path / "record", tmp_path / "work"
    cli = ["--profile", "cpu", "--datasets", "acdc", "--arms", "ideal", "--budgets", "1", "--seeds", "0",
           "--work-dir", str(work), "--record-dir", str(record), "--stage", "runs", "--deadline", "+600",
           "--after", "acdc/mae-lpft/b1_s0", "hippocampus/mae-lpft/b1_s0"]
    assert main(cli) == 0
    out = capsys.readouterr().out
    assert "waits for acdc/mae-lpft/b1_s0, hippocampus/mae-lpft/b1_s0" in out and not work.exists()
    schedule = schedule_of(parse_args(cli), dataset_specs(parse_args(cli))["acdc"])
    acdc_case, hippocampus_case = "acdc_patient001_frame01", "hippocampus_001"
    for key, arm, case in (("acdc", "mae-lpft", acdc_case), ("hippocampus", "mae-lpft", hippocampus_case),
                           ("acdc", "ideal", acdc_case)):
        folder = record / key / "arms" / arm / "b1_s0"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(_summary({case: {1: 0.5}})))
        (folder / "run.json").write_text(json.dumps({"settings": run_settings(schedule, Run(key, ARMS[arm], 1, 0))}))
        if arm == "mae-lpft" and key == "acdc":  # one of the two evaluated: still waiting, for the other only
            assert main(cli) == 0
            out = capsys.readouterr().out
            assert "waits for hippocampus/mae-lpft/b1_s0 " in out and "acdc/mae-lpft" not in out.split("waits")[1]
    assert main(cli) == 0  # both evaluated: the line goes on (here: its one run is recorded, nothing to do)
    assert "waits" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse_args(cli[:-2] + ["acdc/nosucharm/b1_s0"])
    assert "names no run" in capsys.readouterr().err
