"""The low-label benchmark's statistics (against scipy / nnU-Net on known inputs) and its report on a fake work dir."""
import csv
import json
import math

import numpy as np
import pytest

from nnunet_ssl.benchmark import report as rp
from nnunet_ssl.benchmark import run_logs as rl
from nnunet_ssl.benchmark import stats as st

NAN = float("nan")


def _summary(dice_by_case):
    """An evaluate_simple summary.json: {case: {label: Dice}} (NaN = label in neither image)."""
    return {"metric_per_case": [
        {"reference_file": f"/x/labelsTs/{case}.nii.gz", "prediction_file": f"/x/pred/{case}.nii.gz",
         "metrics": {str(lb): {"Dice": d, "n_ref": 0 if math.isnan(d) else 10, "n_pred": 5} for lb, d in ds.items()}}
        for case, ds in dice_by_case.items()]}


def _rows(arm, seed, dice_by_case, dataset="hippocampus", budget=1):
    return st.case_rows(_summary(dice_by_case), dataset=dataset, arm=arm, budget=budget, seed=seed)


# ---------------------------------------------------------------------------------------------------------- stats

def test_case_rows_read_ids_labels_and_nan():
    rows = _rows("scratch", 0, {"hippocampus_001": {1: 0.5, 2: NAN}})
    assert rows[0]["case"] == "hippocampus_001" and rows[0]["arm"] == "scratch" and rows[0]["seed"] == 0
    assert rows[0]["dice"][1] == 0.5 and math.isnan(rows[0]["dice"][2])
    assert rows[0]["n_ref"] == {1: 10, 2: 0}


def test_run_dice_follows_nnunet_means_on_real_evaluation(tmp_path):
    """Our means of an evaluate_simple result equal nnU-Net's own ``mean`` and ``foreground_mean``, NaN included."""
    import SimpleITK as sitk
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder_simple
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):
        ref = rng.randint(0, 3, (4, 5, 6)).astype(np.uint8)
        pred = ref.copy()
        pred[rng.rand(*ref.shape) < 0.3] = 1
        if i == 0:  # class 2 in neither image: Dice NaN
            ref[ref == 2], pred[pred == 2] = 0, 0
        for arr, d in ((ref, ref_dir), (pred, pred_dir)):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / f"c{i}.nii.gz"))
    out = tmp_path / "summary.json"
    compute_metrics_on_folder_simple(str(ref_dir), str(pred_dir), [1, 2], str(out), num_processes=1)
    summary = json.loads(out.read_text())
    rows = st.case_rows(summary, dataset="d", arm="a", budget=1, seed=0)
    assert math.isnan(rows[0]["dice"][2])
    means = st.run_dice(rows, [1, 2])
    assert means[1] == pytest.approx(summary["mean"]["1"]["Dice"])
    assert means[2] == pytest.approx(summary["mean"]["2"]["Dice"])
    assert means[st.FG] == pytest.approx(summary["foreground_mean"]["Dice"])


def test_aggregate_mean_and_sd_over_seeds():
    rows = _rows("scratch", 0, {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.4, 2: NAN}})
    rows += _rows("scratch", 1, {"a": {1: 0.6, 2: 0.8}, "b": {1: 0.8, 2: 0.6}})
    agg = st.aggregate(rows, {"hippocampus": [1, 2]})[("hippocampus", "scratch", 1)]
    # seed 0: class 1 0.3, class 2 0.4 (b's NaN left out), fg 0.35; seed 1: 0.7, 0.7, fg 0.7
    assert agg["per_seed"][0][st.FG] == pytest.approx(0.35) and agg["per_seed"][1][st.FG] == pytest.approx(0.7)
    assert agg["mean"][st.FG] == pytest.approx(0.525)
    assert agg["sd"][st.FG] == pytest.approx(np.std([0.35, 0.7], ddof=1))
    assert agg["seeds"] == [0, 1]
    one = st.aggregate(_rows("mae", 0, {"a": {1: 0.5, 2: 0.5}}), {"hippocampus": [1, 2]})
    assert one[("hippocampus", "mae", 1)]["sd"][st.FG] is None


def test_wilcoxon_p_is_scipys_and_exact_on_a_known_input():
    from scipy.stats import wilcoxon
    d = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert st.wilcoxon_p(d) == pytest.approx(2 / 2 ** 10)  # all 10 ranks positive: exact two-sided p
    d = [0.05, -0.02, 0.11, 0.07, -0.04, 0.09, 0.01, 0.12]
    assert st.wilcoxon_p(d) == pytest.approx(wilcoxon(d, alternative="two-sided").pvalue)
    assert st.wilcoxon_p([0.0, 0.0]) == 1.0 and st.wilcoxon_p([]) is None


def test_bootstrap_without_clusters_is_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap
    d = np.array([0.05, -0.02, 0.11, 0.07, -0.04, 0.09, 0.01, 0.12, 0.3, -0.1])
    ref = bootstrap((d,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(7))
    lo, hi = st.bootstrap_ci(d, n_boot=2000, seed=7)
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert st.bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))


def test_bootstrap_resamples_cases_by_hand():
    """Cases A (seed diffs 0.1, 0.3) and B (0.5, 0.5). default_rng(0).integers(0, 2, (5, 2)) draws
    BB, BA, AA, AA, AB -> means 0.5, 0.35, 0.2, 0.2, 0.35; sorted 0.2 0.2 0.35 0.35 0.5; linear percentiles:
    2.5 % at position 0.1 -> 0.2, 97.5 % at position 3.9 -> 0.35 + 0.9 * 0.15 = 0.485."""
    lo, hi = st.bootstrap_ci([0.1, 0.3, 0.5, 0.5], ["A", "A", "B", "B"], n_boot=5, seed=0)
    assert (lo, hi) == pytest.approx((0.2, 0.485))


def test_paired_pools_seeds_and_matches_scipy():
    from scipy.stats import wilcoxon
    labels = {"hippocampus": [1, 2]}
    rows = []
    for seed, shift in ((0, 0.1), (1, 0.05)):
        rows += _rows("scratch", seed, {c: {1: 0.5, 2: 0.4 + 0.01 * i} for i, c in enumerate("abcd")})
        rows += _rows("mae", seed, {c: {1: 0.5 + shift * (i - 1), 2: 0.45} for i, c in enumerate("abcd")})
    rows += _rows("mae", 2, {"a": {1: 0.9, 2: 0.9}})  # seed 2 without scratch: not paired
    rows += _rows("scratch", 0, {"a": {1: 0.1, 2: 0.1}}, budget=2)  # another budget: no partner
    out = {r["cls"]: r for r in st.paired_vs(rows, labels, n_boot=500)}
    fg = out[st.FG]
    diffs = []
    for seed, shift in ((0, 0.1), (1, 0.05)):
        for i in range(4):
            diffs.append(((0.5 + shift * (i - 1)) + 0.45) / 2 - (0.5 + 0.4 + 0.01 * i) / 2)
    assert fg["n_pairs"] == 8 and fg["n_seeds"] == 2 and fg["n_cases"] == 4
    assert fg["mean_diff"] == pytest.approx(np.mean(diffs))
    assert fg["p"] == pytest.approx(wilcoxon(diffs).pvalue)
    assert fg["better"] == sum(d > 0 for d in diffs) and fg["worse"] == sum(d < 0 for d in diffs)
    assert fg["ci_low"] <= fg["mean_diff"] <= fg["ci_high"]
    assert out[2]["mean_diff"] == pytest.approx(np.mean([0.45 - 0.4 - 0.01 * i for i in range(4)]))


def test_paired_per_seed_splits_the_pooled_difference_by_label_subset_and_matches_scipy():
    from scipy.stats import wilcoxon
    labels = {"hippocampus": [1, 2]}
    rows = []
    for seed, shift in ((0, 0.1), (1, -0.05)):
        rows += _rows("scratch", seed, {c: {1: 0.5, 2: 0.4 + 0.01 * i} for i, c in enumerate("abcd")})
        rows += _rows("mae", seed, {c: {1: 0.5 + shift * (i + 1), 2: 0.45} for i, c in enumerate("abcd")})
    rows += _rows("mae", 2, {"a": {1: 0.9, 2: 0.9}})  # seed 2 without scratch: no cell
    out = {(r["seed"], r["arm"]): r for r in st.paired_per_seed(rows, labels)}
    assert set(out) == {(0, "mae"), (1, "mae")}
    for seed, shift in ((0, 0.1), (1, -0.05)):
        a = [((0.5 + shift * (i + 1)) + 0.45) / 2 for i in range(4)]
        b = [(0.5 + 0.4 + 0.01 * i) / 2 for i in range(4)]
        r = out[(seed, "mae")]
        assert r["arm_mean"] == pytest.approx(np.mean(a)) and r["reference_mean"] == pytest.approx(np.mean(b))
        assert r["mean_diff"] == pytest.approx(np.mean(a) - np.mean(b))
        assert r["p"] == pytest.approx(wilcoxon(a, b).pvalue)
        assert r["better"] == sum(x > y for x, y in zip(a, b)) and r["n_pairs"] == 4
    # the pooled difference is the mean of the seeds' (same number of cases each)
    pooled = [r for r in st.paired_vs(rows, labels, n_boot=0) if r["cls"] == st.FG][0]
    assert pooled["mean_diff"] == pytest.approx((out[(0, "mae")]["mean_diff"] + out[(1, "mae")]["mean_diff"]) / 2)
    table = "\n".join(rp.per_seed_table(list(out.values()), "hippocampus"))
    assert "| budget | arm | seed 0 | seed 1 |" in table
    r0 = out[(0, "mae")]
    assert (f"| 1 | mae | {r0['arm_mean']:.3f} vs {r0['reference_mean']:.3f}: {100 * r0['mean_diff']:+.1f}, "
            f"p {st.fmt_p(r0['p'])}, {r0['better']}/4 |") in table


def test_paired_drops_pairs_with_nan():
    rows = _rows("scratch", 0, {"a": {1: 0.5}, "b": {1: NAN}}) + _rows("mae", 0, {"a": {1: 0.7}, "b": {1: 0.2}})
    (fg, c1) = st.paired_vs(rows, {"hippocampus": [1]})
    assert fg["n_pairs"] == 1 and fg["mean_diff"] == pytest.approx(0.2) and c1["n_pairs"] == 1


def _p(ds, arm, budget, diff, p, seeds=3):
    return dict(dataset=ds, arm=arm, budget=budget, cls=st.FG, mean_diff=diff, p=p, n_seeds=seeds,
                ci_low=diff - 0.01, ci_high=diff + 0.01)


def test_headline_rule():
    ok = [_p("h", "mae", 1, 0.05, 0.001), _p("h", "pgl", 1, 0.01, 0.5), _p("h", "mae", 5, -0.01, 0.3),
          _p("a", "gmim", 1, 0.04, 0.01)]
    v = st.headline(ok, {"h": 1, "a": 1}, ["mae", "pgl", "gmim"])
    assert v["passed"] and v["datasets"]["h"]["best"]["arm"] == "mae"
    cases = {"small gain": [_p("h", "mae", 1, 0.02, 0.001)], "p": [_p("h", "mae", 1, 0.05, 0.06)],
             "seeds": [_p("h", "mae", 1, 0.05, 0.001, seeds=2)],
             "below": [_p("h", "mae", 1, 0.05, 0.001), _p("h", "pgl", 5, -0.02, 0.01)], "missing": []}
    for name, rows in cases.items():
        v = st.headline(rows, {"h": 1}, ["mae", "pgl"])
        assert not v["passed"] and v["datasets"]["h"]["reasons"], name
    assert "below scratch at budget 5" in st.headline(cases["below"], {"h": 1}, ["mae"])["datasets"]["h"]["reasons"][0]
    assert not st.headline(ok, {}, ["mae"])["passed"]


def test_headline_rule_waits_for_every_headline_arm_and_the_best_two_at_the_other_budgets():
    rows = [_p("h", "mae", 1, 0.05, 0.001), _p("h", "pgl", 1, 0.01, 0.5, seeds=2), _p("h", "ideal", 1, 0.02, 0.2),
            _p("h", "mae", 5, 0.03, 0.01), _p("h", "ideal", 5, 0.0, 0.9, seeds=1)]
    arms = ["mae", "pgl", "gmim", "ideal"]
    assert st.headline(rows, {"h": 1}, arms)["passed"]  # without budgets: the rule as before
    v = st.headline(rows, {"h": 1}, arms, budgets={"h": [1, 2, 5]})
    assert not v["passed"] and not v["complete"] and v["datasets"]["h"]["reasons"] == []
    # pgl short of 3 seeds, gmim never run; the two best at budget 1 (mae, ideal) at budgets 2 and 5
    assert v["datasets"]["h"]["to_run"] == [(1, "pgl", 2), (1, "gmim", 0), (2, "mae", 0), (2, "ideal", 0),
                                            (5, "ideal", 1)]
    done = [_p("h", a, b, 0.01, 0.5) for a in arms for b in (1, 2, 5) if (a, b) != ("mae", 1)]
    v = st.headline([rows[0]] + done, {"h": 1}, arms, budgets={"h": [1, 2, 5]})
    assert v["passed"] and v["complete"] and v["datasets"]["h"]["to_run"] == []
    assert st.still_to_run([], "h", [1, 3], ["mae"]) == [(1, "mae", 0)]  # nothing run: the best are unknown yet


def test_the_best_arms_of_the_larger_budgets_are_ranked_like_the_headline_arm_those_with_every_seed_first():
    rows = [_p("h", "mae", 1, 0.03, 0.01), _p("h", "pgl", 1, 0.02, 0.05), _p("h", "gmim", 1, 0.08, 0.02, seeds=1)]
    assert st.still_to_run(rows, "h", [1, 3], ["mae", "pgl", "gmim"]) == [(1, "gmim", 1), (3, "mae", 0),
                                                                           (3, "pgl", 0)]
    rows[2] = _p("h", "gmim", 1, 0.08, 0.02)  # its seeds run and it stays ahead: it joins the best two
    assert st.still_to_run(rows, "h", [1, 3], ["mae", "pgl", "gmim"]) == [(3, "gmim", 0), (3, "mae", 0)]


def test_headline_best_arm_needs_every_seed_and_a_missed_gain_waits_for_the_arms_short_of_seeds():
    """An arm ahead on one seed does not displace one with three (nor fail the rule for its seeds), and a gain
    the finished arms miss is pending, not failed, while an arm of the smallest budget still lacks seeds."""
    budgets = {"h": [1]}
    rows = [_p("h", "ideal", 1, 0.05, 0.001), _p("h", "pgl", 1, 0.06, 0.001, seeds=1)]
    v = st.headline(rows, {"h": 1}, ["ideal", "pgl"], budgets=budgets)["datasets"]["h"]
    assert v["best"]["arm"] == "ideal" and v["reasons"] == [] and not v["gain_pending"]
    assert v["to_run"] == [(1, "pgl", 1)] and rp._verdict(v).startswith("gain met; still to run")
    rows = [_p("h", "ideal", 1, 0.02, 0.001), _p("h", "pgl", 1, 0.01, 0.5, seeds=1)]
    v = st.headline(rows, {"h": 1}, ["ideal", "pgl"], budgets=budgets)["datasets"]["h"]
    assert v["reasons"] == [] and v["gain_pending"] and rp._verdict(v).startswith("gain not shown yet; still")
    done = st.headline([rows[0], _p("h", "pgl", 1, 0.01, 0.5)], {"h": 1}, ["ideal", "pgl"], budgets=budgets)
    assert not done["passed"] and "+2.0 Dice points < 3" in done["datasets"]["h"]["reasons"][0]


def test_headline_rule_lists_a_diagnostic_below_scratch_without_failing_on_it():
    rows = [_p("h", "mae", 1, 0.05, 0.001), _p("h", "mae-lpft", 1, -0.04, 0.01), _p("h", "pgl", 1, -0.03, 0.2)]
    v = st.headline(rows, {"h": 1}, ["mae"], rule_arms=["mae", "pgl"])
    assert v["passed"] and v["datasets"]["h"]["reasons"] == []
    assert [r["arm"] for r in v["datasets"]["h"]["diagnostics_below"]] == ["mae-lpft"]  # pgl: not significant
    v = st.headline(rows, {"h": 1}, ["mae"], rule_arms=["mae", "pgl", "mae-lpft"])
    assert not v["passed"] and "mae-lpft significantly below" in v["datasets"]["h"]["reasons"][0]
    assert v["datasets"]["h"]["diagnostics_below"] == []


def test_ema_is_nnunets_logger():
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    values = [0.0, 0.2, 0.5, 0.45, 0.7]
    logger = MetaLogger("/nonexistent", resume=False)
    for epoch, v in enumerate(values):
        logger.log("mean_fg_dice", v, epoch)
    assert st.ema(values) == pytest.approx(logger.get_value("ema_fg_dice", step=None))


def test_convergence_criteria():
    rise, ok = st.dice_converged([min(0.8, 0.3 * i) for i in range(50)])  # flat from epoch 3 on
    assert ok and rise == 0
    # flat from epoch 10 on: the EMA still creeps up 0.015 in epochs 40-49, but the curve itself no longer rises
    rise, ok = st.dice_converged([min(1.0, 0.1 * i) for i in range(50)])
    assert ok and rise == 0
    rise, ok = st.dice_converged([0.02 * i for i in range(50)])  # still rising: 10 epochs x 0.02
    assert not ok and rise == pytest.approx(0.2)
    rise, ok = st.dice_converged([0.3 + 0.0025 * i for i in range(50)])  # slow rise: 0.025 per fifth
    assert not ok and rise == pytest.approx(0.025)
    # ACDC, one patient, 1000 iterations, seed 1: background only for 19 epochs, then rising to the end
    late = [0.0] * 19 + [0.05 + 0.012 * i for i in range(31)]
    assert not st.dice_converged(late)[1]
    # a plateau whose fifth means scatter (0.27-0.34): the last fifth (0.315) is a new high over the fifth before
    # (0.274) but not over the best earlier one (0.305): converged
    fifths = [0.217, 0.288, 0.305, 0.274, 0.315]
    plateau = [m + d for m in fifths for d in (0.05, -0.05) * 10]
    rise, ok = st.dice_converged(plateau)
    assert ok and rise == pytest.approx(0.010)
    assert st.fifth_means(plateau) == pytest.approx(fifths)
    ema_tail = st.ema(plateau)[-20:]
    assert max(ema_tail) - min(ema_tail) > 0.01  # the old EMA criterion called this unconverged
    assert st.dice_converged([0.5]) == (None, False)
    assert st.dice_converged([0.5] * 9) == (None, False)  # needs five fifths of >= 2 epochs
    loss = [1 / (1 + i) for i in range(100)]
    rel, ok = st.loss_flattened(loss)
    assert ok and rel < st.LOSS_FLAT_FRACTION
    assert not st.loss_flattened([1 - 0.01 * i for i in range(100)])[1]  # still falling linearly


def test_class_fate_and_voxel_confusion(tmp_path):
    import SimpleITK as sitk
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :] = 1  # 4 voxels of class 1
    ref[1, 2, :2] = 2  # 2 voxels of class 2
    pred = ref.copy()
    pred[0, 0, :2] = 2  # 2 of class 1 predicted as 2
    pred[1, 2, 0] = 0  # 1 of class 2 missed
    for arr, d in ((ref, ref_dir), (pred, pred_dir)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / "c.nii.gz"))
    counts = rp.voxel_confusion(ref_dir, pred_dir, [0, 1, 2])
    assert counts == [[18, 0, 0], [0, 2, 2], [1, 0, 1]]
    assert st.class_fate(counts, 1).tolist() == [0.0, 0.5, 0.5]


# ---------------------------------------------------------------------------------------------------------- report

NNUNET_LOG = """\
2026-11-29 15:54:40.000000: Epoch 0
2026-11-29 15:54:40.000001: Current learning rate: 0.01
2026-11-29 15:54:49.355572: train_loss 0.4461
2026-11-29 15:54:49.355700: val_loss 0.2012
2026-11-29 15:54:49.355800: Pseudo dice [np.float32(0.0), np.float32(nan)]
2026-11-29 15:54:49.355900: Epoch time: 9.35 s
2026-11-29 15:54:50.000000: Epoch 1
2026-11-29 15:55:16.988263: train_loss 0.1483
2026-11-29 15:55:16.988400: Pseudo dice [np.float32(0.4277), np.float32(0.0)]
2026-11-29 15:55:20.000000: Epoch 2
2026-11-29 15:55:21.000000: train_loss 9.0
"""
CONTINUED = """\
2026-11-29 16:00:00.000000: Epoch 2
2026-11-29 16:00:43.769510: train_loss -0.3150
2026-11-29 16:00:43.769600: Pseudo dice [0.6, 0.52]
2026-11-29 16:00:44.000000: Epoch 3
"""


def test_parse_training_log_by_epoch_with_continuation():
    c = rl.parse_training_log(NNUNET_LOG + CONTINUED)
    assert c["train_loss"] == [0.4461, 0.1483, -0.315]  # epoch 2 repeated after --c: the later value; 3 unfinished
    assert c["pseudo_dice"] == pytest.approx([0.0, 0.21385, 0.56])  # nanmean over classes
    assert c["val_loss"][0] == 0.2012 and math.isnan(c["val_loss"][1])
    assert c["epoch_time"][0] == 9.35 and math.isnan(c["epoch_time"][1])  # nnU-Net's "Epoch time: 9.35 s"
    ssl = rl.parse_training_log("t t: Epoch 0\na b: train_loss 1.5\na b: val_loss 1.2\na b: recon_loss 0.7\n")
    assert ssl == {"train_loss": [1.5], "val_loss": [1.2], "recon_loss": [0.7]}


def _write_log(folder, epochs, dice=None, val=None, epoch_time=None, iterations=None):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [] if iterations is None else [  # what our trainers log when NNUNET_SSL_SETTINGS sets the schedule
        f"2026-01-01 00:00:00.0: NNUNET_SSL_SETTINGS applied: {{'num_epochs': {epochs}, "
        f"'num_iterations_per_epoch': {iterations}, 'batch_size': 2}} "]
    for e in range(epochs):
        lines += [f"2026-01-01 00:00:00.0: Epoch {e}", f"2026-01-01 00:00:01.0: train_loss {1 - 0.01 * e}"]
        if epoch_time is not None:
            lines.append(f"2026-01-01 00:00:01.0: Epoch time: {epoch_time(e)} s")
        if val is not None:
            lines.append(f"2026-01-01 00:00:01.0: val_loss {val(e)}")
        if dice is not None:
            lines.append(f"2026-01-01 00:00:01.0: Pseudo dice [np.float32({dice(e)}), np.float32({dice(e)})]")
    (folder / "training_log_2026_1_1_00_00_00.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_work(tmp_path):
    """A work dir with hippocampus scratch and mae evaluated (seeds 0, 1), a run still training, a pre-training."""
    work = tmp_path / "work"
    hip = work / "hippocampus"
    hip.mkdir(parents=True)
    cases = ["hippocampus_001", "hippocampus_002", "hippocampus_003"]
    (hip / "split.json").write_text(json.dumps({"split_seed": 0, "test_groups": cases, "val_groups": ["v"],
                                                "pool_groups": [], "cases_of": {c: [c] for c in cases + ["v"]}}))
    for arm, trainer, base in (("scratch", "nnUNetTrainer_schedule", 0.5), ("mae", "SSLFinetuneTrainer_decoderWarmup",
                                                                               0.6)):
        for seed in (0, 1):
            run = hip / "arms" / arm / f"b1_s{seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps(_summary(
                {c: {1: base + 0.01 * i + 0.02 * seed, 2: base - 0.1} for i, c in enumerate(cases)})))
            (run / "run.json").write_text(json.dumps({"fold": seed, "trainer": trainer, "seconds": {
                "train": 100.0, "predict": 10.0, "evaluate": 2.0}}))
            _write_log(hip / "arms" / arm / "nnUNet_results" / "Dataset401_LowLabelHippocampus" /
                       f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{seed}", 50, dice=lambda e: min(0.8, 0.3 * e),
                       epoch_time=lambda e: 4000.0 if e == 7 else 30.0 + seed)  # epoch 7: a paused run
    (hip / "arms" / "scratch" / "b2_s0").mkdir(parents=True)  # started, no log yet
    pre = hip / "pretrain" / "mae"
    folder = pre / "nnUNet_results" / "Dataset402_X" / "MAETrainer__nnUNetPlans__3d_fullres" / "fold_all"
    _write_log(folder, 100, val=lambda e: 1 / (1 + e), epoch_time=lambda e: 5.0 + e % 3)
    (folder / "checkpoint_final.pth").write_bytes(b"")
    # wall clock of the last, continuing, command only; ran_as: a pre-training relabelled after a change of defaults
    (pre / "run.json").write_text(json.dumps({"seconds": 60.0, "ran_as": "MAETrainer_old, the same settings"}))
    (work / "commands.sh").write_text(  # a fine-tuning that names the pre-training comes after it
        f"nnUNet_results={pre}/nnUNet_results nnUNetv2_train X\n"
        f"nnUNet_results={hip}/arms/mae/nnUNet_results NNUNET_SSL_PRETRAINED={pre}/c.pth nnUNetv2_train Y\n")
    (tmp_path / "record").mkdir()  # the scratch runs' commands are in the record (run on another machine)
    (tmp_path / "record" / "commands.sh").write_text(
        f"nnUNet_results={hip}/arms/scratch/nnUNet_results nnUNetv2_train Z\n")
    return work


def test_report_from_work_dir(fake_work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "low_label_cpu_acdc_dice.png").write_bytes(b"a plot of runs that were set aside")
    md = rp.build_report(fake_work, "cpu", out, command="python bench.py --profile cpu", record=tmp_path / "record")
    text = md.read_text()
    assert not (out / "low_label_cpu_acdc_dice.png").exists()  # no ACDC run: no stale ACDC plot left
    for name in ("low_label_cpu_per_case.csv", "low_label_cpu_hippocampus_dice.png",
                 "low_label_cpu_hippocampus_convergence.png", "low_label_cpu_hippocampus_pretraining.png"):
        assert (out / name).stat().st_size > 100, name
    # Dice table: Anterior 0.51 (seed 0) and 0.53 (seed 1), Posterior 0.4; fg (0.51 + 0.4) / 2, (0.53 + 0.4) / 2
    assert "| 1 | scratch | 0.520 ± 0.014 | 0.400 ± 0.000 | 0.460 ± 0.007 | 2 |" in text
    # paired: mae - scratch = 0.1 on every class, case and seed: +10.0 points, 6 of 6 better
    assert "| 1 | mae | 6 (2 x 3) | +10.0 [+10.0, +10.0] | 0.031 | 6 / 6 | Anterior +10.0, Posterior +10.0 |" \
        in text
    assert "| 1 | mae | 0.555 vs 0.455: +10.0, p 0.25, 3/3 | 0.565 vs 0.465: +10.0, p 0.25, 3/3 |" in text  # per seed
    assert "gain not shown yet; still to run" in text and "Overall: **not decided yet" in text  # mae: 2 seeds
    assert "| 1 | scratch | 0 | evaluated | 50 | 0.800 | 0.795 | 0.800 -> 0.800 | +0.000 | yes |" in text
    assert "| 2 | scratch | 0 | training | 0 | - | - | - | - | (running) |" in text  # not judged while training
    assert "| mae | MAETrainer | finished | 100 |" in text and "| yes | 10m00s | 6s |" in text
    assert "\n- mae: MAETrainer_old, the same settings\n" in text
    # training = epochs x median epoch (50 x 30 s, 50 x 31 s; the paused epoch and the wall clock of 100 s ignored)
    assert "| scratch | 2 | 25m50s | 31s | 12s | 51m14s |" in text
    assert "Pre-training: 10m00s;" in text  # 100 epochs x 6 s, not the 60 s of wall clock in run.json
    assert "python bench.py --profile cpu --stage report" in text
    assert "nnUNetv2_train X" in text and "nnUNetv2_train Z" in text and "nnUNetv2_train Y" not in text
    with open(out / "low_label_cpu_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3 * 2 and {r["class_name"] for r in rows} == {"Anterior", "Posterior"}


def test_report_shows_the_schedule_check_apart_from_the_headline(fake_work, tmp_path):
    """scratch-2x (stock nnU-Net, twice the epochs) is paired against scratch and drawn with it, never a headline
    arm: the verdict still names mae as the best pre-trained arm. The schedule check decides on the validation
    pseudo Dice (+1.0 over the last fifth: long enough), not on the test split (+2.0, shown beside it)."""
    import shutil
    hip = fake_work / "hippocampus" / "arms"
    run = hip / "scratch-2x" / "b1_s0"
    shutil.copytree(hip / "scratch" / "b1_s0", run)
    summary = json.loads((run / "summary.json").read_text())
    for case in summary["metric_per_case"]:
        for cls in case["metrics"].values():
            cls["Dice"] += 0.02
    (run / "summary.json").write_text(json.dumps(summary))
    _write_log(hip / "scratch-2x" / "nnUNet_results" / "Dataset401_LowLabelHippocampus" /
               "nnUNetTrainer_schedule__nnUNetPlans__3d_fullres" / "fold_0", 100, dice=lambda e: min(0.81, 0.1 * e))
    text = rp.build_report(fake_work, "cpu", tmp_path / "out", record=tmp_path / "record").read_text()
    assert "| 1 | scratch-2x | 3 (1 x 3) | +2.0 [+2.0, +2.0] |" in text
    assert "| 1 | scratch-2x | 0 | evaluated | 100 |" in text and "Schedule check: `scratch-2x`" in text
    assert "| hippocampus | 1 | mae |" in text  # the headline's best pre-trained arm
    assert ("Budget 1 (1 seed): validation 0.810 against 0.800, +1.0 points, below the 2 that would lengthen the "
            "schedule: it is long enough. Test split: +2.0 points [+2.0, +2.0], p ") in text


def test_report_pairs_the_pre_training_length_check_against_the_arm_it_repeats(fake_work, tmp_path):
    """ideal-pre2x (IDEAL pre-trained twice as long) is judged against ideal, not scratch: ideal is 10 points above
    scratch on the test split, ideal-pre2x 11 (+1.0 against ideal); on the validation cases ideal-pre2x is 3 points
    above ideal, and that decides: too short. The sentence stands under the pre-training table."""
    import shutil
    arms = fake_work / "hippocampus" / "arms"
    for arm, bump, top in (("ideal", 0.0, 0.8), ("ideal-pre2x", 0.01, 0.83)):
        for seed in (0, 1):
            run = arms / arm / f"b1_s{seed}"
            shutil.copytree(arms / "mae" / f"b1_s{seed}", run)
            summary = json.loads((run / "summary.json").read_text())
            for case in summary["metric_per_case"]:
                for cls in case["metrics"].values():
                    cls["Dice"] += bump
            (run / "summary.json").write_text(json.dumps(summary))
            _write_log(arms / arm / "nnUNet_results" / "Dataset401_LowLabelHippocampus" /
                       "SSLFinetuneTrainer_decoderWarmup__nnUNetPlans__3d_fullres" / f"fold_{seed}", 50,
                       dice=lambda e, top=top: min(top, 0.3 * e))
    text = rp.build_report(fake_work, "cpu", tmp_path / "out", record=tmp_path / "record").read_text()
    assert "| 1 | ideal-pre2x | 6 (2 x 3) | +11.0 [+11.0, +11.0] |" in text  # against scratch, like every arm
    sentence = ("Pre-training length check: `ideal-pre2x` fine-tunes like `ideal`, from a pre-training twice as long. "
                "Decided on the validation cases (mean pseudo Dice over the last fifth of the epochs, same seeds as "
                "`ideal`); the test split's paired difference decides nothing. Budget 1 (2 seeds): validation 0.830 "
                "against 0.800, +3.0 points, at least the 2 that would lengthen the pre-training: it is too short, "
                "the method's pre-training needs the longer one. Test split: +1.0 points [+1.0, +1.0], p ")
    assert sentence in text and text.index("### Pre-training") < text.index(sentence) < text.index("### Cost")
    assert "Schedule check" not in text  # no scratch-2x ran


def test_report_of_an_empty_work_dir(tmp_path):
    (tmp_path / "work" / "acdc").mkdir(parents=True)
    text = rp.build_report(tmp_path / "work", "smoke", tmp_path / "out").read_text()
    assert "0 evaluated runs" in text and "| acdc | 1 | - | - | - | - | gain not shown yet; still to run" in text
    assert "Overall: **not decided yet: runs missing" in text
    assert "(nothing finished yet)" in text and "| budget (patients) |" not in text
