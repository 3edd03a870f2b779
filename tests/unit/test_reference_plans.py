"""``prepare-reference`` never touches the reference dataset's own plans or preprocessed data (issue 24 item 3).

nnU-Net's commands are replaced by stand-ins that do on disk what nnU-Net 2.8 does (move_plans_between_datasets:
the source plans saved as ``<target plans>.json`` with the data identifier renamed; preprocess: a folder per
data identifier), so the test needs no nnU-Net run.
"""
import json
import os

import pytest

from tiny_nnunet_data import tiny_plans

SSL, REF = "Dataset950_Fake", "Dataset951_Ref"


def _stand_in(pre, raw, calls):
    def run_nnunet(name, args, **kwargs):
        args = [str(a) for a in args]
        calls.append((name, args))
        opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1) if args[i].startswith("-")}
        if name == "nnUNetv2_extract_fingerprint":
            (pre / REF).mkdir(exist_ok=True)
            (pre / REF / "dataset_fingerprint.json").write_text("{}")
        elif name == "nnUNetv2_move_plans_between_datasets":
            src = json.loads((pre / SSL / (opt["-sp"] + ".json")).read_text())
            sp, tp = opt["-sp"], opt["-tp"]
            for cfg in src["configurations"].values():
                if tp != sp and "data_identifier" in cfg:
                    ident = cfg["data_identifier"]
                    cfg["data_identifier"] = tp + ident[len(sp):] if ident.startswith(sp) else tp + "_" + ident
            src["dataset_name"], src["plans_name"] = REF, tp
            (pre / REF / (tp + ".json")).write_text(json.dumps(src))
        elif name == "nnUNetv2_preprocess":
            plans = json.loads((pre / REF / (opt["-plans_name"] + ".json")).read_text())
            folder = pre / REF / plans["configurations"]["3d_fullres"]["data_identifier"]
            folder.mkdir(exist_ok=True)
            (folder / "case_000.b2nd").write_text("new")
        else:
            raise AssertionError(name)
    return run_nnunet


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    pre, raw = tmp_path / "pre", tmp_path / "raw"
    for root in (pre, raw):
        for name in (SSL, REF):
            (root / name).mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("NNUNET_SSL_REFERENCE_DATASET", raising=False)
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1}, "numTraining": 2,
                    "file_ending": ".nii.gz"}
    for root in (pre, raw):
        (root / REF / "dataset.json").write_text(json.dumps(dataset_json))
    ssl_plans = tiny_plans(SSL)
    (pre / SSL / "nnUNetPlans.json").write_text(json.dumps(ssl_plans))
    (pre / SSL / "dataset.json").write_text(json.dumps(dict(dataset_json, labels={"background": 0})))
    # the reference dataset's own plans, edited by its user, and its own preprocessed data
    user_plans = tiny_plans(REF)
    user_plans["configurations"]["3d_fullres"]["batch_size"] = 5
    user_plans["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]
    (pre / REF / "nnUNetPlans.json").write_text(json.dumps(user_plans, indent=3))
    (pre / REF / "nnUNetPlans_3d_fullres").mkdir()
    (pre / REF / "nnUNetPlans_3d_fullres" / "case_000.b2nd").write_text("user's")
    calls = []
    import nnunet_ssl.cli.commands as commands
    monkeypatch.setattr(commands, "run_nnunet", _stand_in(pre, raw, calls))
    return pre, raw, ssl_plans, calls


def test_prepare_reference_keeps_the_users_plans_and_data_and_resolve_finds_its_own(datasets):
    from nnunet_ssl.data.reference import prepare_reference, resolve_reference
    pre, raw, ssl_plans, calls = datasets
    before = {p: p.read_bytes() for p in (pre / REF).rglob("*") if p.is_file()}
    assert prepare_reference(REF, SSL, plans="nnUNetPlans", configurations=["3d_fullres"]) == REF
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was changed"
    ref = resolve_reference(SSL, ssl_plans, "3d_fullres", 1, {})
    assert ref.name == REF and os.path.basename(ref.plans_file) != "nnUNetPlans.json"
    assert ref.folder != str(pre / REF / "nnUNetPlans_3d_fullres") and os.listdir(ref.folder) == ["case_000.b2nd"]
    marker = json.loads((pre / SSL / "nnunet_ssl_reference.json").read_text())
    assert marker["reference_dataset"] == REF and marker["reference_plans"] == ref.plans_name
    assert ref.plans_file == str(pre / REF / (ref.plans_name + ".json"))
    # running it again is fine and still leaves the user's files alone
    prepare_reference(REF, SSL, plans="nnUNetPlans", configurations=["3d_fullres"])
    for path, content in before.items():
        assert path.read_bytes() == content


def test_prepare_reference_refuses_to_replace_a_different_preprocessed_dataset_json(datasets):
    from nnunet_ssl.data.reference import prepare_reference
    from nnunet_ssl.errors import UserInputError
    pre, raw, _, _ = datasets
    edited = json.loads((pre / REF / "dataset.json").read_text())
    edited["labels"]["y"] = 2
    (pre / REF / "dataset.json").write_text(json.dumps(edited))
    with pytest.raises(UserInputError, match="dataset.json.*differs.*labels"):
        prepare_reference(REF, SSL, plans="nnUNetPlans", configurations=["3d_fullres"])
    assert json.loads((pre / REF / "dataset.json").read_text()) == edited
