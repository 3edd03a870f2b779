"""Length checks decide on the validation pseudo Dice of the last fifth, per budget over the seeds both arms
finished, at 2 points; the test split's difference is shown and decides nothing (nnunet_ssl.benchmark.length_checks)."""
import pytest

from nnunet_ssl.benchmark import length_checks as lc
from nnunet_ssl.benchmark import stats as st


def _run(arm, seed, last, budget=1, status="evaluated", epochs=10):
    dice = [0.1] * (epochs - epochs // 5) + [last] * (epochs // 5)
    return dict(dataset="acdc", arm=arm, budget=budget, seed=seed, status=status, curves={"pseudo_dice": dice})


def _paired(arm, budget, diff):
    return dict(dataset="acdc", arm=arm, budget=budget, cls=st.FG, mean_diff=diff, ci_low=diff - 0.01,
                ci_high=diff + 0.01, p=0.5)


def test_each_budget_is_judged_on_the_seeds_both_arms_finished():
    runs = [_run("scratch", 0, 0.40), _run("scratch", 1, 0.50), _run("scratch-2x", 1, 0.51),
            _run("scratch-2x", 0, 0.99, status="training"),  # not finished: seed 0 has no pair
            _run("scratch", 0, 0.30, budget=3), _run("scratch", 1, 0.30, budget=3),
            _run("scratch-2x", 0, 0.33, budget=3), _run("scratch-2x", 1, 0.32, budget=3),
            _run("mae", 1, 0.90)]  # another arm is ignored
    checks = lc.length_checks(runs, "scratch-2x")
    assert [(c["budget"], c["seeds"]) for c in checks] == [(1, [1]), (3, [0, 1])]
    assert checks[0]["base"] == pytest.approx(0.50) and checks[0]["longer"] == pytest.approx(0.51)
    assert not checks[0]["too_short"]
    assert checks[1]["longer"] - checks[1]["base"] == pytest.approx(0.025) and checks[1]["too_short"]


def test_validation_decides_even_where_the_test_split_disagrees():
    runs = [_run("ideal", 1, 0.475), _run("ideal-pre2x", 1, 0.480)]
    text = lc.length_check_sentence(runs, [_paired("ideal-pre2x", 1, 0.05), _paired("mae", 1, -0.3)], "acdc",
                                    "ideal-pre2x")
    assert ("Budget 1 (1 seed): validation 0.480 against 0.475, +0.5 points, below the 2 that would lengthen the "
            "pre-training: it is long enough. Test split: +5.0 points [+4.0, +6.0], p 0.5.") in text
    runs[1] = _run("ideal-pre2x", 1, 0.500)
    assert "+2.5 points, at least the 2 that would lengthen the pre-training: it is too short, the method's " \
           "pre-training needs the longer one." in lc.length_check_sentence(runs, [], "acdc", "ideal-pre2x")


def test_no_sentence_until_a_pair_finished():
    runs = [_run("pgl", 0, 0.4), _run("pgl-pre2x", 0, 0.5, status="training")]
    assert lc.length_check_lines(runs, [], {}, "acdc", ["pgl-pre2x"]) == []
    runs[1] = _run("pgl-pre2x", 0, 0.5)
    lines = lc.length_check_lines(runs, [], {"acdc": [1, 2, 3]}, "acdc", ["pgl-pre2x"])
    assert lines[0] == "" and "validation 0.500 against 0.400, +10.0 points" in lines[1]


def test_longer_pretrainings_run_their_methods_trainer_for_their_factor_of_the_epochs():
    """pgl-pre1.5x (the longest PGL pre-training that fits a session on ACDC) and the 2x checks: same trainer and
    route as the arm they repeat, the profile's pre-training epochs times their factor, rounded to whole epochs."""
    from nnunet_ssl.benchmark.arms import ARMS, PRETRAIN_TRAINERS, pretrain_schedule
    from nnunet_ssl.benchmark.main import PROFILES
    cpu = PROFILES["cpu"]["pretrain"]
    for arm, method, epochs in (("pgl-pre1.5x", "pgl-1.5x", 150), ("pgl-pre2x", "pgl-2x", 200),
                                ("ideal-pre2x", "ideal-2x", 200)):
        a, base = ARMS[arm], ARMS[ARMS[arm].length_check]
        assert a.pretrain == method and not a.headline
        assert PRETRAIN_TRAINERS[method] == PRETRAIN_TRAINERS[base.pretrain]
        assert (a.trainer, a.settings) == (base.trainer, base.settings)
        schedule = pretrain_schedule(method, cpu)
        assert schedule["num_epochs"] == epochs and isinstance(schedule["num_epochs"], int)
        assert {k: v for k, v in schedule.items() if k != "num_epochs"} == \
            {k: v for k, v in cpu.items() if k != "num_epochs"}
    assert pretrain_schedule("pgl", cpu) == cpu
    assert pretrain_schedule("pgl-1.5x", {"num_epochs": 33})["num_epochs"] == 50  # 49.5 rounds to 50
