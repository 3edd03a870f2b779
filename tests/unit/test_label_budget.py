"""Label budget: selection rule, errors, and that only the budgeted cases reach the trainer's dataloader."""
import json
import os

import numpy as np
import pytest

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.data.label_budget import apply_label_budget, read_case_list, seeded_selection
from nnunet_ssl.settings import parse_settings

from tiny_nnunet_data import make_trainer, write_tiny_dataset

KEYS = [f"case_{i:03d}" for i in range(20)]


# ---------------------------------------------------------------- selection rule

def test_seeded_selection_deterministic_and_nested():
    for seed in (0, 1, 7):
        sets = [set(seeded_selection(KEYS, n, seed)) for n in range(1, 21)]
        assert all(len(s) == n for s, n in zip(sets, range(1, 21)))
        for small, large in zip(sets, sets[1:]):
            assert small < large  # nested: the 5-case set is inside the 6-case set, ...
        assert seeded_selection(KEYS, 5, seed) == seeded_selection(list(reversed(KEYS)), 5, seed)  # order-free
    assert set(seeded_selection(KEYS, 5, 0)) != set(seeded_selection(KEYS, 5, 1))  # the seed matters


def test_apply_label_budget_splits_train_keys_only():
    split = apply_label_budget(KEYS, ["v1"], label_budget=5, label_seed=3)
    assert len(split.labeled) == 5 and set(split.labeled) | set(split.rest) == set(KEYS)
    assert not set(split.labeled) & set(split.rest)
    assert split.unlabeled == []  # budget_rest=unused by default
    split_u = apply_label_budget(KEYS, ["v1"], label_budget=5, label_seed=3, budget_rest="unlabeled")
    assert split_u.labeled == split.labeled and split_u.unlabeled == split.rest
    assert apply_label_budget(KEYS, ["v1"]) is None  # no budget: nothing changes


def test_case_list_files(tmp_path):
    (tmp_path / "l.txt").write_text("# labeled\ncase_003\n\ncase_001  # comment\ncase_003\n")
    (tmp_path / "l.json").write_text(json.dumps(["case_004", "case_002"]))
    (tmp_path / "d.json").write_text(json.dumps({"labeled": ["case_005"]}))
    assert read_case_list(tmp_path / "l.txt") == ["case_003", "case_001"]
    split = apply_label_budget(KEYS, [], labeled_cases_file=str(tmp_path / "l.json"))
    assert split.labeled == ["case_002", "case_004"] and len(split.rest) == 18
    assert apply_label_budget(KEYS, [], labeled_cases_file=str(tmp_path / "d.json")).labeled == ["case_005"]


def test_errors(tmp_path):
    with pytest.raises(UserInputError, match=r"label_budget=21 is larger than the 20 training cases of fold 0"):
        apply_label_budget(KEYS, [], label_budget=21, fold=0)
    for bad in (0, -3):
        with pytest.raises(UserInputError, match="at least 1"):
            apply_label_budget(KEYS, [], label_budget=bad)
    (tmp_path / "l.txt").write_text("case_001\nnope_9\nval_1\n")
    with pytest.raises(UserInputError) as e:
        apply_label_budget(KEYS, ["val_1"], labeled_cases_file=str(tmp_path / "l.txt"), fold=2)
    assert "unknown case id(s)" in str(e.value) and "nope_9" in str(e.value)
    assert "validation cases of fold 2: val_1" in str(e.value)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserInputError, match="at least 1"):
        apply_label_budget(KEYS, [], labeled_cases_file=str(tmp_path / "empty.txt"))
    with pytest.raises(UserInputError, match="does not exist"):
        apply_label_budget(KEYS, [], labeled_cases_file=str(tmp_path / "missing.json"))
    with pytest.raises(UserInputError, match="either"):
        apply_label_budget(KEYS, [], label_budget=3, labeled_cases_file=str(tmp_path / "l.txt"))
    with pytest.raises(UserInputError, match="budget_rest=sometimes"):
        apply_label_budget(KEYS, [], label_budget=3, budget_rest="sometimes")
    with pytest.raises(UserInputError, match="no budget is set"):
        apply_label_budget(KEYS, [], budget_rest="unlabeled")


def test_settings_accept_budget_values():
    from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer
    values = parse_settings("label_budget=4,label_seed=2,labeled_cases_file=/x/y.json,budget_rest=unlabeled",
                            SSLFinetuneTrainer.tunable_settings)
    assert values == {"label_budget": 4, "label_seed": 2, "labeled_cases_file": "/x/y.json",
                      "budget_rest": "unlabeled"}
    quoted = parse_settings("labeled_cases_file='/x/my list.txt'", SSLFinetuneTrainer.tunable_settings)
    assert quoted == {"labeled_cases_file": "/x/my list.txt"}


# ---------------------------------------------------------------- in the trainer

@pytest.fixture()
def fake_env(tmp_path, monkeypatch):
    pre, res = tmp_path / "pre", tmp_path / "res"
    pre.mkdir()
    res.mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(res))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "0")
    monkeypatch.delenv("NNUNET_SSL_PRETRAINED", raising=False)
    monkeypatch.delenv("NNUNET_SSL_UNLABELED_DATASET", raising=False)
    plans, dataset_json, train_keys, val_keys = write_tiny_dataset(pre)
    return dict(pre=pre, res=res, plans=plans, dataset_json=dataset_json, train=train_keys, val=val_keys,
                monkeypatch=monkeypatch)


@pytest.mark.parametrize("trainer_name", ["SSLFinetuneTrainer", "SSLScratchTrainer"])
def test_only_budgeted_cases_reach_the_dataloader(fake_env, trainer_name):
    import nnunet_ssl_trainers.finetune as ft
    fake_env["monkeypatch"].setenv("NNUNET_SSL_SETTINGS", "label_budget=3,label_seed=1,batch_size=2")
    trainer = make_trainer(getattr(ft, trainer_name), fake_env["plans"], fake_env["dataset_json"])
    trainer.initialize()
    tr, val = trainer.do_split()
    expected = seeded_selection(fake_env["train"], 3, 1)
    assert sorted(tr) == expected and sorted(val) == sorted(fake_env["val"])  # validation keys unchanged

    np.random.seed(0)
    dl_tr, dl_val = trainer.get_dataloaders()
    seen = []
    for _ in range(15):
        batch = next(dl_tr)
        assert batch["data"].shape[0] == 2
        seen += list(batch["keys"])
    assert set(seen) == set(expected)  # exactly the 3 budgeted cases feed the supervised loss
    assert set(next(dl_val)["keys"]) <= set(fake_env["val"])

    with open(os.path.join(trainer.output_folder, "label_budget.json")) as f:
        record = json.load(f)
    assert record["labeled"] == expected and record["budget_rest"] == "unused"
    with open(trainer.log_file) as f:
        log = f.read()
    assert "Label budget: 3 of the 8 training cases" in log and all(k in log for k in expected)


def _trainer_with(fake_env, **settings):
    from nnunet_ssl_trainers.finetune import SSLFinetuneTrainer
    trainer = make_trainer(SSLFinetuneTrainer, fake_env["plans"], fake_env["dataset_json"])
    for k, v in settings.items():
        setattr(trainer, k, v)
    return trainer


def test_trainer_errors(fake_env, tmp_path):
    with pytest.raises(UserInputError, match=r"label_budget=9 is larger than the 8 training cases of fold 0"):
        _trainer_with(fake_env, label_budget=9).do_split()
    with pytest.raises(UserInputError, match="at least 1"):
        _trainer_with(fake_env, label_budget=0).do_split()
    lst = tmp_path / "labeled.txt"
    lst.write_text(f"{fake_env['train'][0]}\nnot_a_case\n")
    with pytest.raises(UserInputError, match="not_a_case"):
        _trainer_with(fake_env, labeled_cases_file=str(lst)).do_split()
    with pytest.raises(UserInputError, match="does not train on unlabeled data"):
        _trainer_with(fake_env, label_budget=3, budget_rest="unlabeled").do_split()
    # an explicit list works and is honoured as given
    lst.write_text("\n".join(fake_env["train"][:2]))
    tr, _ = _trainer_with(fake_env, labeled_cases_file=str(lst)).do_split()
    assert sorted(tr) == sorted(fake_env["train"][:2])


def test_scratch_trainer_refuses_pretrained_weights(fake_env):
    from nnunet_ssl_trainers.finetune import SSLScratchTrainer
    trainer = make_trainer(SSLScratchTrainer, fake_env["plans"], fake_env["dataset_json"])
    assert trainer.pretrained_checkpoint_path() is None
    fake_env["monkeypatch"].setenv("NNUNET_SSL_PRETRAINED", "/some/checkpoint_final.pth")
    with pytest.raises(UserInputError, match="never loads pre-trained weights.*unset NNUNET_SSL_PRETRAINED"):
        trainer.pretrained_checkpoint_path()
    with pytest.raises(SystemExit) as e:  # inside nnUNetv2_train: a clean exit with the message
        trainer.on_train_start()
    assert e.value.code == 2
