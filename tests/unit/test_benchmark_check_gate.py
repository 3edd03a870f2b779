"""A decided check holds the headline runs it overrules until the arms change (nnunet_ssl.benchmark.check_gate):
a route check won by the challenger, a length check saying "too short"; diagnostics and undecided checks hold
nothing."""
import json

from test_benchmark_report import _summary, _write_log

from nnunet_ssl.benchmark.arms import ARMS
from nnunet_ssl.benchmark.check_gate import held_because

BOTH = ["acdc", "hippocampus"]


def _run(arm, seed, last, dataset="acdc", budget=1, status="evaluated"):
    dice = [0.1] * 8 + [last] * 2
    return dict(dataset=dataset, arm=arm, budget=budget, seed=seed, status=status, curves={"pseudo_dice": dice})


def _held(arm, dataset, runs):
    return held_because(ARMS[arm], dataset, runs, BOTH)


def test_a_route_check_holds_its_arm_and_the_arms_sharing_its_route_once_the_challenger_won():
    runs = {"acdc": [_run("ideal", 1, 0.47), _run("ideal-lpft", 1, 0.52)],
            "hippocampus": [_run("ideal", 0, 0.76, "hippocampus")]}
    assert _held("ideal", "acdc", runs) is None  # hippocampus' pair missing: undecided
    runs["hippocampus"].append(_run("ideal-lpft", 0, 0.75, "hippocampus"))  # mean 0.635 against 0.615
    for arm in ("ideal", "ideal-semi"):
        for key in BOTH:  # a route holds on every dataset
            why = _held(arm, key, runs)
            assert why and why.startswith("route check: `ideal-lpft`") and f"`{arm}` must take" in why
    assert _held("ideal-pre2x", "acdc", runs).startswith("route check")  # its length check repeats ideal's route
    for arm in ("pgl", "mae", "ideal-lpft", "pgl-pre2x", "ideal-wholenet"):  # another route, or diagnostics
        assert _held(arm, "acdc", runs) is None, arm
    runs["hippocampus"][1] = _run("ideal-lpft", 0, 0.60, "hippocampus")  # now ideal's route wins
    assert _held("ideal", "acdc", runs) is None and _held("ideal-semi", "acdc", runs) is None


def test_a_pre_training_length_check_holds_that_method_on_its_dataset_only():
    runs = {"acdc": [_run("pgl", 0, 0.357), _run("pgl-pre2x", 0, 0.370)], "hippocampus": []}
    assert _held("pgl", "acdc", runs) is None  # +1.3 points: long enough
    runs["acdc"][1] = _run("pgl-pre2x", 0, 0.380)  # +2.3: too short
    why = _held("pgl", "acdc", runs)
    assert why.startswith("length check: `pgl-pre2x`") and "`pgl`'s pre-training must be the longer one" in why
    assert _held("pgl", "hippocampus", runs) is None
    for arm in ("ideal", "ideal-semi", "mae", "scratch", "pgl-maeroute"):
        assert _held(arm, "acdc", runs) is None, arm
    runs["acdc"] += [_run("ideal", 1, 0.40), _run("ideal-pre2x", 1, 0.45)]
    assert _held("ideal-semi", "acdc", runs).startswith("length check: `ideal-pre2x`")  # same pre-training
    assert _held("ideal-pre2x", "acdc", runs) is None  # a length check is not held by its own verdict


def test_a_schedule_check_saying_too_short_holds_every_headline_arm_on_its_dataset():
    runs = {"acdc": [_run("scratch", 1, 0.477), _run("scratch-2x", 1, 0.472)], "hippocampus": []}
    assert all(_held(a, "acdc", runs) is None for a in ("scratch", "mae", "ideal-semi"))
    runs["acdc"][1] = _run("scratch-2x", 1, 0.50)
    for arm in ("scratch", "mae", "ideal-semi", "refs"):
        assert "the schedule must be the longer one" in _held(arm, "acdc", runs), arm
    assert _held("scratch", "hippocampus", runs) is None and _held("scratch-2x", "acdc", runs) is None


def test_the_driver_starts_nothing_a_decided_check_holds(tmp_path, capsys):
    """From the record alone (another machine's runs): pgl-pre2x 3 points above pgl on validation holds PGL's
    next ACDC seed, with the reason in the log, while a line of another arm is not held."""
    from nnunet_ssl.benchmark.main import main
    record, work = tmp_path / "record", tmp_path / "work"
    for arm, top in (("pgl", 0.35), ("pgl-pre2x", 0.38)):
        folder = record / "acdc" / "arms" / arm / "b1_s0"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(_summary({"acdc_patient001_frame01": {1: 0.5}})))
        (folder / "run.json").write_text(json.dumps({"fold": 0, "trainer": ARMS[arm].trainer}))
        _write_log(folder, 10, dice=lambda e, top=top: top if e >= 8 else 0.1)
    cli = ["--profile", "cpu", "--datasets", "acdc", "--budgets", "1", "--seeds", "1", "--work-dir", str(work),
           "--record-dir", str(record), "--stage", "runs", "--dry-run", "--arms"]
    assert main(cli + ["pgl"]) == 0
    out = capsys.readouterr().out
    assert "acdc/pgl/b1_s1: held, length check: `pgl-pre2x` lifted the validation pseudo Dice on acdc" in out
    assert "nothing started: every run of this line is held" in out
    assert main(cli + ["gmim"]) == 0
    assert "held" not in capsys.readouterr().out
