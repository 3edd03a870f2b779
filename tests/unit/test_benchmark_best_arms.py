"""The larger budgets run the two best arms of the smallest budget as the report ranks them, once that ranking is
settled (nnunet_ssl.benchmark.best_arms, the driver's --best-arms)."""
import json

from test_benchmark_report import _summary

from nnunet_ssl.benchmark.arms import ARMS, headline_pretrained_arms
from nnunet_ssl.benchmark.best_arms import best_arms
from nnunet_ssl.benchmark.datasets import DATASETS

CASES = [f"hippocampus_{i:03d}" for i in range(1, 6)]
# mean foreground Dice per arm at budget 1 (scratch 0.60): ideal +8, pgl +4, the rest less; a diagnostic higher still
DICE = {"scratch": 0.60, "mae": 0.61, "gmim": 0.62, "pgl": 0.64, "ideal": 0.68, "ideal-semi": 0.63, "refs": 0.605,
        "ideal-lpft": 0.75}


def _record_run(record, arm, seed, dice, budget=1):
    folder = record / "hippocampus" / "arms" / arm / f"b{budget}_s{seed}"
    folder.mkdir(parents=True)
    # per case: the arm's level plus a case and seed offset shared by every arm (the pairs differ by the level)
    per_case = {c: {1: dice + 0.01 * i + 0.005 * seed, 2: dice + 0.01 * i} for i, c in enumerate(CASES)}
    (folder / "summary.json").write_text(json.dumps(_summary(per_case)))
    (folder / "run.json").write_text(json.dumps({"fold": seed, "trainer": ARMS[arm].trainer}))


def _work(tmp_path):
    """A work dir whose downstream dataset.json names the labels (the report's source of class names)."""
    work = tmp_path / "work"
    raw = work / "nnUNet_raw" / DATASETS["hippocampus"].downstream_name
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Anterior": 1, "Posterior": 2}}))
    return work


def _record(tmp_path, skip=()):
    record = tmp_path / "record"
    for arm, dice in DICE.items():
        for seed in (0, 1, 2):
            if (arm, seed) not in skip:
                _record_run(record, arm, seed, dice)
    return record


def test_the_two_best_headline_arms_once_every_arm_has_its_seeds(tmp_path):
    work = _work(tmp_path)
    record = _record(tmp_path, skip={("ideal-semi", 2)})
    waiting = best_arms([work, record], work, "hippocampus", 2)
    assert waiting.arms == [] and waiting.short == [("ideal-semi", 2)]  # it might still overtake
    _record_run(record, "ideal-semi", 2, DICE["ideal-semi"])
    settled = best_arms([work, record], work, "hippocampus", 2)
    assert settled.short == [] and settled.arms == ["ideal", "pgl"]  # not ideal-lpft: a diagnostic
    assert best_arms([work, record], work, "hippocampus", 3).arms == ["ideal", "pgl", "ideal-semi"]
    assert "ideal-lpft" not in headline_pretrained_arms() and "scratch" not in headline_pretrained_arms()


def test_larger_budgets_do_not_change_the_ranking(tmp_path):
    """Only the smallest budget ranks: a larger budget where mae leads does not put it among the best."""
    work, record = _work(tmp_path), _record(tmp_path)
    for seed in (0, 1, 2):
        _record_run(record, "scratch", seed, 0.70, budget=2)
        _record_run(record, "mae", seed, 0.90, budget=2)
    assert best_arms([work, record], work, "hippocampus", 2).arms == ["ideal", "pgl"]


def test_the_driver_runs_the_best_arms_or_says_why_it_waits(tmp_path, capsys):
    from nnunet_ssl.benchmark.main import main
    work = _work(tmp_path)
    record = _record(tmp_path, skip={("refs", 0)})
    cli = ["--profile", "cpu", "--datasets", "hippocampus", "--budgets", "2", "--seeds", "0", "--work-dir",
           str(work), "--record-dir", str(record), "--stage", "runs", "--dry-run", "--best-arms", "2"]
    assert main(cli) == 0
    out = capsys.readouterr().out
    assert "hippocampus: the 2 best arms wait for every headline arm's seeds at the smallest budget: refs (2 of 3)" \
        in out and "hippocampus/" not in out.replace("hippocampus: ", "")
    assert main(cli + ["--arms", "scratch"]) == 0  # scratch does not wait for the ranking
    out = capsys.readouterr().out
    assert "hippocampus/scratch/b2_s0" in out and "hippocampus/ideal/b2_s0" not in out
    _record_run(record, "refs", 0, DICE["refs"])
    assert main(cli + ["--arms", "scratch"]) == 0
    out = capsys.readouterr().out
    assert "hippocampus: the 2 best arms at budget 1: ideal, pgl" in out
    listed = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  hippocampus/")]
    assert listed == ["hippocampus/scratch/b2_s0", "hippocampus/ideal/b2_s0", "hippocampus/pgl/b2_s0"]


def test_an_arm_left_out_is_neither_waited_for_nor_ranked(tmp_path):
    """--best-arms-without: an arm that cannot run where the campaign runs (ideal-semi on ACDC on 2 CPU cores) does
    not hold the larger budgets, and cannot be chosen either, even when its finished seeds would rank first."""
    work = _work(tmp_path)
    record = _record(tmp_path, skip={("ideal-semi", 1), ("ideal-semi", 2)})
    assert best_arms([work, record], work, "hippocampus", 2).short == [("ideal-semi", 1)]
    assert best_arms([work, record], work, "hippocampus", 2, without=["ideal-semi"]).arms == ["ideal", "pgl"]
    for seed in (1, 2):
        _record_run(record, "ideal-semi", seed, 0.90)  # now the best arm by far
    assert best_arms([work, record], work, "hippocampus", 2).arms == ["ideal-semi", "ideal"]
    assert best_arms([work, record], work, "hippocampus", 2, without=["ideal-semi"]).arms == ["ideal", "pgl"]


def test_best_arms_without_names_headline_arms_and_needs_best_arms(tmp_path, capsys):
    import pytest
    from nnunet_ssl.benchmark.main import main, parse_args
    base = ["--profile", "cpu", "--work-dir", str(tmp_path), "--stage", "runs", "--dry-run"]
    with pytest.raises(SystemExit):
        parse_args(base + ["--best-arms", "2", "--best-arms-without", "ideal-lpft"])  # a diagnostic, never ranked
    assert "not a headline pre-trained arm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(base + ["--best-arms-without", "ideal-semi"])
    assert "needs --best-arms" in capsys.readouterr().err
    work = _work(tmp_path)
    record = _record(tmp_path, skip={("ideal-semi", 0)})
    cli = ["--profile", "cpu", "--datasets", "hippocampus", "--budgets", "2", "--seeds", "0", "--work-dir",
           str(work), "--record-dir", str(record), "--stage", "runs", "--dry-run", "--best-arms", "2",
           "--best-arms-without", "ideal-semi"]
    assert main(cli) == 0
    out = capsys.readouterr().out
    assert "the 2 best arms at budget 1: ideal, pgl (ranked without ideal-semi" in out
    assert "hippocampus/ideal/b2_s0" in out and "hippocampus/pgl/b2_s0" in out
