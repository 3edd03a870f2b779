"""The low-label benchmark's report helpers: per-seed table, voxel confusion (pure Python, no nnU-Net run)."""
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmark_low_label")


def _rows(arm, seed, dice_by_case, n_pred_by_case):
    rows = []
    for case, (d1, d2) in dice_by_case.items():
        for cls, d in ((1, d1), (2, d2)):
            rows.append({"arm": arm, "budget": 10, "seed": seed, "case": case, "class_id": cls, "dice": d,
                         "n_pred": n_pred_by_case[case][cls - 1]})
    return rows


def test_per_seed_table_flags_only_runs_without_any_foreground(bench):
    rows = _rows("scratch", 0, {"a": (0.5, 0.7), "b": (0.3, 0.1)}, {"a": (10, 5), "b": (3, 1)})
    # gmim seed 1: nothing predicted anywhere (evaluate_simple reports Dice 0 when the reference is not empty)
    rows += _rows("gmim", 1, {"a": (0.0, 0.0), "b": (0.0, 0.0)}, {"a": (0, 0), "b": (0, 0)})
    # pgl seed 0: Dice 0 everywhere, but case b got voxels predicted (in the wrong place): not "nothing"
    rows += _rows("pgl", 0, {"a": (0.0, 0.0), "b": (0.0, 0.0)}, {"a": (0, 0), "b": (4, 0)})
    lines = bench.per_seed_table(rows, bench.aggregate(rows, [1, 2])[1], [1, 2], {"1": "Anterior", "2": "Posterior"})
    by_arm = {ln.split("|")[1].strip(): ln for ln in lines if ln.startswith("| ") and "budget" not in ln}
    assert "2/2 |" in by_arm["scratch"] and "none" not in by_arm["scratch"]
    assert "0.4000" in by_arm["scratch"] and "0.4000" in by_arm["scratch"].split("|")[4]  # Anterior mean
    assert "0.4000" in by_arm["scratch"].split("|")[6]  # foreground mean (0.6 + 0.2) / 2
    assert "0/2 **(none: still all background)**" in by_arm["gmim"]
    assert "1/2 |" in by_arm["pgl"] and "none" not in by_arm["pgl"]
    assert any(ln.startswith("1 of 3 runs predicted no foreground") for ln in lines)


def test_per_seed_table_without_empty_runs_has_no_warning(bench):
    rows = _rows("scratch", 0, {"a": (0.5, 0.7)}, {"a": (10, 5)})
    lines = bench.per_seed_table(rows, bench.aggregate(rows, [1, 2])[1], [1, 2], {})
    assert not any("predicted no foreground" in ln for ln in lines)
    assert bench.per_seed_table([], {}, [1, 2], {}) == []


def test_first_epoch_reaching_threshold(bench):
    assert bench.first_epoch_reaching([0.0, 0.05, float("nan"), 0.12, 0.0, 0.5], 0.1) == 3
    assert bench.first_epoch_reaching([0.0, 0.09, float("nan")], 0.1) is None
    assert bench.first_epoch_reaching([], 0.1) is None


NNUNET_LOG = """\
2026-11-29 15:54:49.355572: train_loss 0.4461
2026-11-29 15:54:49.355700: val_loss 0.2012
2026-11-29 15:54:49.355800: Pseudo dice [np.float32(0.0), np.float32(0.0)]
2026-11-29 15:55:16.988263: train_loss 0.1483
2026-11-29 15:55:16.988400: Pseudo dice [np.float32(0.4277), np.float32(0.0)]
2026-11-29 15:55:43.769510: train_loss -0.3150
2026-11-29 15:55:43.769600: Pseudo dice [np.float32(0.6), np.float32(0.52)]
"""


def test_parse_training_log_keeps_mean_and_worst_class(bench):
    c = bench.parse_training_log(NNUNET_LOG)
    assert c["train_loss"] == [0.4461, 0.1483, -0.315]
    assert c["pseudo_dice"] == pytest.approx([0.0, 0.21385, 0.56])
    assert c["pseudo_dice_worst_class"] == pytest.approx([0.0, 0.0, 0.52])
    # one class segmented (mean 0.21 >= 0.1) is "emerged" but not "every class"
    assert bench.first_epoch_reaching(c["pseudo_dice"], bench.EMERGE_DICE) == 1
    assert bench.first_epoch_reaching(c["pseudo_dice_worst_class"], bench.SEPARATE_DICE) == 2


def test_voxel_confusion_counts_true_against_predicted(bench, tmp_path):
    import numpy as np
    import SimpleITK as sitk
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :] = 1  # 4 voxels of class 1
    ref[1, 2, :2] = 2  # 2 voxels of class 2
    pred = ref.copy()
    pred[0, 0, 0] = 2  # one class-1 voxel confused with class 2
    pred[0, 0, 1] = 0  # one missed
    pred[1, 2, 0] = 0  # one class-2 voxel missed
    pred[1, 0, 0] = 1  # one background voxel over-segmented as class 1
    for name in ("a.nii.gz", "b.nii.gz"):  # two cases: counts add up
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(ref_dir / name))
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(pred_dir / name))
    m = bench.voxel_confusion(ref_dir, pred_dir, [0, 1, 2])
    n_bg = ref.size - 6
    assert m == [[2 * (n_bg - 1), 2, 0], [2, 4, 2], [2, 0, 2]]


def test_quick_profile_plans_within_three_hours_and_cpu_rank_does_not(bench):
    """The issue's budget for the quick profile (7 default arms, one budget, two seeds, 2 CPU cores) is 3 hours;
    the time model (calibrated on measured cpu-rank runs) must keep it there, and must not call the 2000-iteration
    ranking schedule quick."""
    def planned_hours(profile, extra=()):
        args = bench.parse_args(["--profile", profile, "--work-dir", "/nonexistent", *extra])
        runs = bench.make_runs(args)
        est = bench.estimate(args, args.num_test, args.num_val, bench.pretrain_methods(args.arms), runs,
                             bench.cost_table(args))
        return est["total_s"] / 3600, len(runs), len(args.budgets), len(args.seeds)

    hours, n_runs, n_budgets, n_seeds = planned_hours("quick")
    assert (n_budgets, n_seeds) == (1, 2) and n_runs == 14  # every default arm incl. ideal-semi
    assert hours <= 3.0
    assert planned_hours("cpu-rank", ["--seeds", "0", "1"])[0] > 3.0


def _write_per_case(path, rows):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["arm", "trainer", "budget", "seed", "case", "class_id", "dice", "iou"])
        w.writeheader()
        for r in rows:
            w.writerow({"trainer": "T", "iou": "", **{k: r[k] for k in ("arm", "budget", "seed", "case",
                                                                          "class_id", "dice")}})


def _run(bench, arm):
    return bench.Run(arm=arm, budget=10, seed=0, trainer="T", pretrain=None, folder=Path("."))


def test_merge_per_case_adds_only_selected_runs_missing_here(bench, tmp_path):
    runs = [_run(bench, "scratch"), _run(bench, "gmim")]
    old = _rows("scratch", 0, {"a": (0.5, 0.7), "b": (0.3, 0.1)}, {"a": (1, 1), "b": (1, 1)})
    old += _rows("gmim", 0, {"a": (0.9, 0.9), "b": (0.9, 0.9)}, {"a": (1, 1), "b": (1, 1)})
    old += _rows("pgl", 0, {"a": (0.2, 0.2), "b": (0.2, 0.2)}, {"a": (1, 1), "b": (1, 1)})  # not selected
    _write_per_case(tmp_path / "old.csv", old)
    own = _rows("gmim", 0, {"a": (0.6, 0.6), "b": (0.6, 0.6)}, {"a": (1, 1), "b": (1, 1)})  # finished here: kept
    merged = bench.merged_rows([str(tmp_path / "old.csv")], runs, own, ["a", "b"])
    assert {(r["arm"], r["budget"], r["seed"]) for r in merged} == {("scratch", 10, 0)}
    assert len(merged) == 4 and sorted(r["dice"] for r in merged) == [0.1, 0.3, 0.5, 0.7]
    assert all(isinstance(r["class_id"], int) for r in merged)
    stats = bench.paired_stats(bench.aggregate(own + merged, [1, 2])[0], [1, 2], ["scratch", "gmim"], [10],
                               {"1": "A", "2": "P", "mean": "fg"})
    mean_row = [s for s in stats if s["arm"] == "gmim" and s["class"] == "mean"][0]
    assert mean_row["n_cases"] == 2 and mean_row["mean_diff"] == pytest.approx(0.6 - 0.4)


def test_merge_per_case_refuses_another_split(bench, tmp_path):
    _write_per_case(tmp_path / "old.csv", _rows("scratch", 0, {"a": (0.5, 0.7), "x": (0.3, 0.1)},
                                                {"a": (1, 1), "x": (1, 1)}))
    with pytest.raises(bench.UserInputError, match="not this split"):
        bench.merged_rows([str(tmp_path / "old.csv")], [_run(bench, "scratch")], [], ["a", "b"])
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(bench.UserInputError, match="not a per-case CSV"):
        bench.merged_rows([str(tmp_path / "bad.csv")], [], [], ["a"])


@pytest.mark.parametrize("fold", ["x", "-1", "1.5"])
def test_bad_fold_is_a_usage_error(bench, capsys, fold):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--profile", "quick", "--fold", fold])
    assert exc.value.code == 2
    assert f"argument --fold: must be a fold number or 'all', not '{fold}'" in capsys.readouterr().err


@pytest.mark.parametrize("fold", ["0", "3", "all"])
def test_fold_numbers_and_all_are_accepted(bench, fold):
    assert bench.parse_args(["--profile", "quick", "--fold", fold]).fold == fold
