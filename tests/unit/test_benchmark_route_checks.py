"""Route checks decide on validation pseudo Dice of the last fifth, per dataset then over datasets, and wait for
every dataset (nnunet_ssl.benchmark.route_checks)."""
import pytest

from nnunet_ssl.benchmark import route_checks as rc
from nnunet_ssl.benchmark.arms import ARMS


def _run(arm, seed, last, dataset="acdc", status="evaluated", budget=1, epochs=10, early=0.1):
    # 4 fifths at ``early``, the last fifth at ``last``
    dice = [early] * (epochs - epochs // 5) + [last] * (epochs // 5)
    return dict(dataset=dataset, arm=arm, budget=budget, seed=seed, status=status, curves={"pseudo_dice": dice})


def test_route_check_arms_name_an_existing_arm_with_the_same_pretraining():
    checks = {name: arm for name, arm in ARMS.items() if arm.route_check}
    assert {"mae-lpft", "pgl-maeroute", "ideal-lpft"} <= set(checks)
    for name, arm in checks.items():
        against = ARMS[arm.route_check]
        assert against.pretrain == arm.pretrain and not arm.headline, name


def test_last_fifth_dice_only_for_finished_runs():
    assert rc.last_fifth_dice(_run("pgl", 0, 0.5)) == pytest.approx(0.5)
    assert rc.last_fifth_dice(_run("pgl", 0, 0.5, status="trained")) == pytest.approx(0.5)
    assert rc.last_fifth_dice(_run("pgl", 0, 0.5, status="training")) is None
    assert rc.last_fifth_dice(_run("pgl", 0, 0.5, epochs=5)) is None  # too short for fifths


def test_decides_on_the_mean_over_datasets_of_shared_seeds():
    runs = {"acdc": [_run("pgl", 0, 0.36), _run("pgl-maeroute", 0, 0.40),
                     _run("pgl", 1, 0.90)],  # seed 1 has no partner: left out
            "hippocampus": [_run("pgl", 0, 0.73, "hippocampus"), _run("pgl-maeroute", 0, 0.71, "hippocampus")]}
    c = rc.route_check(runs, "pgl-maeroute", ["acdc", "hippocampus"])
    assert c["against"] == "pgl" and c["missing"] == []
    assert c["pairs"]["acdc"]["runs"] == [(1, 0)]
    assert c["means"] == pytest.approx(((0.36 + 0.73) / 2, (0.40 + 0.71) / 2))
    assert c["winner"] == "pgl-maeroute"
    runs["hippocampus"][1] = _run("pgl-maeroute", 0, 0.66, "hippocampus")  # now pgl's route is higher
    assert rc.route_check(runs, "pgl-maeroute", ["acdc", "hippocampus"])["winner"] == "pgl"


def test_waits_for_a_dataset_without_a_finished_pair():
    runs = {"acdc": [_run("pgl", 0, 0.36), _run("pgl-maeroute", 0, 0.40)],
            "hippocampus": [_run("pgl", 0, 0.73, "hippocampus"),
                            _run("pgl-maeroute", 0, 0.99, "hippocampus", status="training")]}
    c = rc.route_check(runs, "pgl-maeroute", ["acdc", "hippocampus"])
    assert c["winner"] is None and c["missing"] == ["hippocampus"]
    lines = "\n".join(rc.route_check_lines(runs, ["acdc", "hippocampus"]))
    assert "`pgl-maeroute` against `pgl`: waits for hippocampus." in lines
    assert "| pgl-maeroute | pgl | acdc | b1 s0 | 0.360 | 0.400 |" in lines


def test_lines_state_the_decision_and_skip_checks_that_never_ran():
    runs = {"acdc": [_run("mae", 0, 0.386), _run("mae-lpft", 0, 0.359)],
            "hippocampus": [_run("mae", 0, 0.684, "hippocampus"), _run("mae-lpft", 0, 0.677, "hippocampus")]}
    lines = "\n".join(rc.route_check_lines(runs, ["acdc", "hippocampus"]))
    assert "`mae-lpft` against `mae`: mean over the datasets 0.535 against 0.518: `mae`'s route stays." in lines
    assert "ideal-lpft" not in lines and "pgl-maeroute" not in lines
    assert rc.route_check_lines({"acdc": [_run("scratch", 0, 0.3)]}, ["acdc"]) == []
