"""The benchmark's splits: patient-level for ACDC, nested label subsets, stable folds, seeded, no test image in
pre-training (synthetic case lists, no data needed)."""
import pytest

from nnunet_ssl.benchmark.datasets import DATASETS
from nnunet_ssl.benchmark.driver import subset_cases
from nnunet_ssl.benchmark.splits import MAX_SEEDS, fold_of, make_split, nnunet_folds
from nnunet_ssl.errors import UserInputError

ACDC = DATASETS["acdc"]
HIPPO = DATASETS["hippocampus"]
# 100 ACDC patients, two frames each (the frame numbers differ between patients, as in the real data)
ACDC_CASES = [f"acdc_patient{p:03d}_frame{f:02d}" for p in range(1, 101) for f in (1, 4 + p % 10)]
HIPPO_CASES = [f"hippocampus_{i:03d}" for i in range(1, 395, 2)]


def _patient(case):
    return case.rsplit("_frame", 1)[0]


def _patients(cases):
    return {_patient(c) for c in cases}


@pytest.fixture(scope="module")
def acdc():
    return make_split(ACDC, ACDC_CASES, split_seed=0)


def test_acdc_split_is_patient_level(acdc):
    test, val, pool = _patients(acdc.test), _patients(acdc.val), _patients(acdc.cases(acdc.pool_groups))
    assert len(test) == ACDC.num_test_groups and len(val) == ACDC.num_val_groups
    assert not (test & val) and not (test & pool) and not (val & pool)
    assert test | val | pool == _patients(ACDC_CASES)
    for side in (acdc.test, acdc.val, acdc.non_test):  # both frames of every patient on the same side
        assert all(sum(_patient(c) == p for c in side) == 2 for p in _patients(side))
    for budget in ACDC.budgets:
        for seed in range(3):
            labeled = acdc.labeled(budget, seed)
            assert len(labeled) == 2 * budget and len(_patients(labeled)) == budget
            assert _patients(labeled) <= pool


def test_subsets_nested_across_budgets_and_differ_between_seeds(acdc):
    for seed in range(MAX_SEEDS):
        subsets = [set(acdc.labeled_groups(b, seed)) for b in ACDC.budgets]
        assert all(a < b for a, b in zip(subsets, subsets[1:]))
    assert len({tuple(acdc.labeled_groups(7, s)) for s in range(3)}) == 3


def test_folds_hold_each_budget_and_seed_and_do_not_move(acdc):
    folds = nnunet_folds(ACDC, acdc)
    assert len(folds) == len(ACDC.budgets) * MAX_SEEDS
    for budget in ACDC.budgets:
        for seed in range(MAX_SEEDS):
            fold = folds[fold_of(ACDC, budget, seed)]
            assert fold["train"] == acdc.labeled(budget, seed) and fold["val"] == acdc.val
            assert not set(fold["train"]) & set(acdc.test)
    assert fold_of(ACDC, 1, 0) == 0 and fold_of(ACDC, 3, 2) == MAX_SEEDS + 2 and fold_of(ACDC, 7, 9) == 29
    with pytest.raises(UserInputError):
        fold_of(ACDC, 2, 0)
    with pytest.raises(UserInputError):
        fold_of(ACDC, 1, MAX_SEEDS)


def test_split_is_seeded_and_deterministic(acdc):
    again = make_split(ACDC, list(reversed(ACDC_CASES)), split_seed=0)  # input order does not matter
    assert again.to_dict() == acdc.to_dict() and nnunet_folds(ACDC, again) == nnunet_folds(ACDC, acdc)
    assert make_split(ACDC, ACDC_CASES, split_seed=1).test_groups != acdc.test_groups
    h0, h1 = make_split(HIPPO, HIPPO_CASES, 0), make_split(HIPPO, HIPPO_CASES, 0)
    assert h0.to_dict() == h1.to_dict() and len(h0.test) == HIPPO.num_test_groups


@pytest.mark.parametrize("ds,cases", [(ACDC, ACDC_CASES), (HIPPO, HIPPO_CASES)])
def test_test_split_never_in_pretraining_images(ds, cases):
    """Pre-training reads ``split.non_test`` (driver.prepare_dataset): disjoint from the test split, all the rest."""
    for seed in (0, 3):
        split = make_split(ds, cases, seed)
        assert not set(split.test) & set(split.non_test)
        assert sorted(split.test + split.non_test) == sorted(cases)


def test_max_groups_keeps_whole_patients_and_is_seeded():
    small = subset_cases(ACDC, ACDC_CASES, 0, 40)
    assert len(small) == 80 and len(_patients(small)) == 40
    assert small == subset_cases(ACDC, list(reversed(ACDC_CASES)), 0, 40)
    assert subset_cases(ACDC, ACDC_CASES, 0, None) == ACDC_CASES
    split = make_split(ACDC, small, 0)
    assert not _patients(split.test) & _patients(split.non_test)
    with pytest.raises(UserInputError):
        make_split(ACDC, subset_cases(ACDC, ACDC_CASES, 0, 31), 0)  # 20 test + 5 val + budget 7 need 32


@pytest.mark.parametrize("key", ["hippocampus", "acdc"])
def test_smoke_reference_dataset_gets_groups_for_its_own_split(key):
    """The smoke profile keeps only the groups each split needs; the ReFs reference (the other dataset) is split by
    its own needs, not the downstream dataset's (hippocampus' 8 groups cannot hold ACDC's smoke split)."""
    from nnunet_ssl.benchmark.arms import ARMS
    from nnunet_ssl.benchmark.main import dataset_options, dataset_specs, parse_args
    args = parse_args(["--profile", "smoke", "--budgets", "1", "--arms", "refs"])
    specs = dataset_specs(args)
    opts = dataset_options(args, specs, key, [ARMS["refs"]])
    other = specs[key].reference
    assert opts["need_reference"] and opts["reference_spec"] == specs[other]
    cases = {"acdc": ACDC_CASES, "hippocampus": HIPPO_CASES}
    for k, groups in ((key, opts["max_groups"]), (other, opts["reference_max_groups"])):
        split = make_split(specs[k], subset_cases(specs[k], cases[k], 0, groups), 0)  # no error
        assert len(split.test_groups) == specs[k].num_test_groups
    assert opts["max_groups"] != opts["reference_max_groups"]



@pytest.mark.parametrize("arm,needs", [("refs", True), ("refs-nomatch", True), ("refs-pgl", True), ("pgl", False),
                                       ("ideal-semi", False), ("scratch", False)])
def test_reference_dataset_only_for_refs_pretrainings(arm, needs):
    """Every arm pre-trained by a ReFs trainer (the default, the diagnostics without matching or on PGL) gets the
    reference dataset prepared; the other arms do not."""
    from nnunet_ssl.benchmark.arms import ARMS
    from nnunet_ssl.benchmark.main import dataset_options, dataset_specs, parse_args
    args = parse_args(["--profile", "smoke", "--budgets", "1", "--arms", arm])
    opts = dataset_options(args, dataset_specs(args), "hippocampus", [ARMS[arm]])
    assert opts["need_reference"] is needs

def test_arm_environments(tmp_path):
    """What each kind of arm starts from: scratch nothing, pre-trained arms their method's checkpoint (refused when
    it is missing, never on --c), semi-supervised arms the unlabeled pool; semi-scratch the pool without weights."""
    from nnunet_ssl.benchmark.arms import ARMS, DEFAULT_ARMS
    from nnunet_ssl.benchmark.driver import DatasetSetup, Run, pretrain_checkpoint, training_environment
    s = DatasetSetup(ACDC, make_split(ACDC, ACDC_CASES, 0), "Dataset271_LowLabelAcdc", "", "", [1, 2, 3], {},
                     unlabeled="Dataset272_LowLabelAcdcUnlabeled")

    def env(arm, continuing=False):
        return training_environment(tmp_path, s, Run("acdc", ARMS[arm], 1, 0), continuing)

    ckpt = pretrain_checkpoint(tmp_path, s, "ideal")
    with pytest.raises(UserInputError, match="pre-training ideal has no checkpoint"):
        env("ideal")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert env("scratch") == {}
    assert env("ideal") == {"NNUNET_SSL_PRETRAINED": str(ckpt)}
    assert env("ideal-semi") == {"NNUNET_SSL_PRETRAINED": str(ckpt),
                                 "NNUNET_SSL_UNLABELED_DATASET": "Dataset272_LowLabelAcdcUnlabeled"}
    assert env("ideal-semi", continuing=True) == {"NNUNET_SSL_UNLABELED_DATASET": "Dataset272_LowLabelAcdcUnlabeled"}
    assert env("semi-scratch") == {"NNUNET_SSL_UNLABELED_DATASET": "Dataset272_LowLabelAcdcUnlabeled"}
    # the same semi-supervised method; from a random start there is no pre-trained encoder to warm up around
    assert ARMS["ideal-semi"].trainer == ARMS["semi-scratch"].trainer + "_decoderWarmup"
    assert "semi-scratch" not in DEFAULT_ARMS
    # ideal-semi takes IDEAL's route (since 2026-12-07 the encoder alone, then nnU-Net's rate); its diagnostic
    # ideal-semi-dice: the same start, pool, trainer and route with Dice in the pseudo-label terms
    semi, dice, ideal = ARMS["ideal-semi"], ARMS["ideal-semi-dice"], ARMS["ideal"]
    assert semi.shares_route == "ideal" and semi.settings == ideal.settings == "load_decoder=false"
    assert env("ideal-semi") == env("ideal-semi-dice")
    assert (semi.trainer, semi.pretrain) == (dice.trainer, dice.pretrain)
    assert dice.settings == semi.settings + ",cps_dice=true" and "cps_dice" not in semi.settings
    assert "ideal-semi-dice" not in DEFAULT_ARMS
    # IDEAL's former route keeps its runs as a diagnostic, with the decoder it loaded said explicitly
    lpft = ARMS["ideal-lpft"]
    assert lpft.route_check == "ideal" and not lpft.headline and lpft.pretrain == "ideal"
    assert lpft.settings == "encoder_lr_factor=0.1,load_decoder=true"


def test_runs_of_another_schedule_are_refused(tmp_path):
    """A finished run of an earlier schedule must not be skipped as done and mixed into the report."""
    import json
    from nnunet_ssl.benchmark.arms import ARMS
    from nnunet_ssl.benchmark.driver import Run, run_folder, run_settings, stale_runs
    from nnunet_ssl.benchmark.main import main, schedule_of, dataset_specs, parse_args
    args = parse_args(["--profile", "cpu", "--datasets", "acdc", "--work-dir", str(tmp_path)])
    schedule = schedule_of(args, dataset_specs(args)["acdc"])
    assert "num_epochs=100" in schedule and "num_iterations_per_epoch=40" in schedule  # ACDC: 4000 iterations
    runs = [Run("acdc", ARMS["scratch"], 1, 0), Run("acdc", ARMS["ideal-reinit2"], 1, 0)]
    for run, settings in zip(runs, [schedule.replace("num_epochs=100", "num_epochs=50"),
                                    run_settings(schedule, runs[1])]):
        run_folder(tmp_path, run).mkdir(parents=True)
        (run_folder(tmp_path, run) / "run.json").write_text(json.dumps({"settings": settings}))
    record = tmp_path / "record"
    stale = stale_runs(tmp_path, runs, {"acdc": schedule}, record)
    assert len(stale) == 1 and stale[0].startswith(f"acdc/scratch/b1_s0 ({tmp_path}): started with")
    assert "num_epochs=50" in stale[0]
    cli = ["--profile", "cpu", "--datasets", "acdc", "--arms", "scratch", "--budgets", "1", "--seeds", "0",
           "--work-dir", str(tmp_path), "--record-dir", str(record), "--dry-run"]
    with pytest.raises(UserInputError) as e:  # the script prints it as a plain error (exit 2)
        main(cli)
    assert "acdc/scratch/b1_s0" in str(e.value) and "out of the work directory and the record" in str(e.value)
    # a stale run recorded by another machine is refused as well
    (record / "acdc" / "arms").mkdir(parents=True)
    (tmp_path / "acdc" / "arms").rename(record / "acdc" / "arms")
    with pytest.raises(UserInputError, match=f"acdc/scratch/b1_s0 \\({record}\\)"):
        main(cli)


def test_schedule_check_arm_trains_the_same_schedule_twice_as_long(tmp_path):
    """scratch-2x: stock nnU-Net on scratch's label subsets with twice the epochs and nothing else changed, in the
    settings nnU-Net gets, in the deadline estimate and on the full profile (nnU-Net's 1000 epochs)."""
    from nnunet_ssl.benchmark.arms import ARMS, DEFAULT_ARMS, arm_schedule
    from nnunet_ssl.benchmark.driver import Run, run_settings, training_output
    from nnunet_ssl.benchmark.main import dataset_specs, parse_args, schedule_of, schedule_values
    from nnunet_ssl.benchmark.splits import fold_of
    args = parse_args(["--profile", "cpu", "--datasets", "acdc", "--work-dir", str(tmp_path)])
    ds = dataset_specs(args)["acdc"]
    schedule, long = schedule_of(args, ds), Run("acdc", ARMS["scratch-2x"], 1, 2)
    assert run_settings(schedule, long) == schedule.replace("num_epochs=100,", "num_epochs=200,")
    assert run_settings(schedule, Run("acdc", ARMS["scratch"], 1, 2)) == schedule
    assert arm_schedule(long.arm, schedule_values(args, ds)) == dict(schedule_values(args, ds), num_epochs=200)
    assert run_settings("", long) == "num_epochs=2000"  # the full profile sets no epochs: nnU-Net's 1000
    assert ARMS["scratch-2x"].trainer == ARMS["scratch"].trainer and ARMS["scratch-2x"].pretrain is None
    assert "scratch-2x" not in DEFAULT_ARMS and not ARMS["scratch-2x"].headline
    assert fold_of(ds, 1, 2) == fold_of(ds, long.budget, long.seed)  # same labeled patients as scratch's seed 2
    assert "scratch-2x" in str(training_output(tmp_path, type("S", (), {"downstream": "D", "plans": "P", "ds": ds})(),
                                               long))  # its own nnUNet_results, beside scratch's


@pytest.mark.parametrize("check, arm, trainer", [("ideal-pre2x", "ideal", "IDEALTrainer"),
                                                  ("pgl-pre2x", "pgl", "PGLTrainer")])
def test_pre_training_length_check_pre_trains_twice_as_long_apart_from_the_method(tmp_path, check, arm, trainer):
    """ideal-pre2x (pgl-pre2x): IDEAL's (PGL's) trainer and the ideal (pgl) arm's fine-tuning, from its own
    pre-training (folder, checkpoint, recorded weights) with twice the profile's epochs; the arm itself keeps the
    profile's; full profile: 2000."""
    from nnunet_ssl.benchmark.arms import ARMS, DEFAULT_ARMS, PRETRAIN_TRAINERS
    from nnunet_ssl.benchmark.driver import pretrain_checkpoint, settings_text
    from nnunet_ssl.benchmark.main import dataset_specs, parse_args, pretrain_values
    args = parse_args(["--profile", "cpu", "--datasets", "hippocampus", "--work-dir", str(tmp_path)])
    long, ideal = ARMS[check], ARMS[arm]
    assert pretrain_values(args, ideal)["num_epochs"] == 100 and pretrain_values(args, long)["num_epochs"] == 200
    assert dict(pretrain_values(args, long), num_epochs=100) == pretrain_values(args, ideal)  # nothing else differs
    assert pretrain_values(args, ARMS["scratch"]) == {}
    assert settings_text(pretrain_values(parse_args(["--profile", "full"]), long)) == "num_epochs=2000"
    assert PRETRAIN_TRAINERS[long.pretrain] == PRETRAIN_TRAINERS[ideal.pretrain] == trainer
    assert (long.trainer, long.settings) == (ideal.trainer, ideal.settings) and long.length_check == arm
    assert check not in DEFAULT_ARMS
    ds = dataset_specs(args)["hippocampus"]
    s = type("S", (), {"unlabeled": "U", "plans": "P", "ds": ds})()
    assert pretrain_checkpoint(tmp_path, s, long.pretrain) != pretrain_checkpoint(tmp_path, s, ideal.pretrain)
    assert f"{arm}-2x" in str(pretrain_checkpoint(tmp_path, s, long.pretrain))


def test_run_orders():
    """budget: the smallest budget of every dataset first; arm: an arm's runs together (one pre-training each);
    seeds in the order given."""
    from nnunet_ssl.benchmark.main import make_runs, parse_args
    base = ["--datasets", "acdc", "hippocampus", "--arms", "scratch", "ideal", "--budgets", "1", "--seeds", "0", "1"]
    names = [r.name for r in make_runs(parse_args(base + ["--order", "arm"]))]
    assert names == ["acdc/scratch/b1_s0", "acdc/scratch/b1_s1", "acdc/ideal/b1_s0", "acdc/ideal/b1_s1",
                     "hippocampus/scratch/b1_s0", "hippocampus/scratch/b1_s1", "hippocampus/ideal/b1_s0",
                     "hippocampus/ideal/b1_s1"]
    names = [r.name for r in make_runs(parse_args(base[:-2] + ["1", "0", "--order", "arm"]))]
    assert names[:4] == ["acdc/scratch/b1_s1", "acdc/scratch/b1_s0", "acdc/ideal/b1_s1", "acdc/ideal/b1_s0"]
    names = [r.name for r in make_runs(parse_args(base[:-5] + ["--seeds", "0"]))]
    assert names[:4] == ["acdc/scratch/b1_s0", "acdc/ideal/b1_s0", "hippocampus/scratch/b1_s0",
                         "hippocampus/ideal/b1_s0"]
    assert names[4:6] == ["acdc/scratch/b3_s0", "acdc/ideal/b3_s0"] and len(names) == 12
