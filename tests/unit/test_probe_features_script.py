"""scripts/probe_features.py end to end on an nnU-Net preprocessed dataset: one row per checkpoint against random
weights, a representation without information scores below a random one, bad arguments are usage errors."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_nnunet_data import CONFIG, tiny_plans, write_tiny_dataset  # noqa: E402

DATASET = "Dataset951_FakeProbe"


@pytest.fixture
def tiny_env(tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    plans, _, train, val = write_tiny_dataset(pre, DATASET, n_cases=5, n_val=2, plans=tiny_plans(DATASET),
                                            image_shows_labels=True)
    return dict(plans=plans, train=train, val=val, tmp=tmp_path)


def _rows(out):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([\w -]+) \| [-\d.| ]+?\| ([\d.]+) \| [\d.]+ \|$",
                                                                out, re.M)}


def _trained(net, ds, cases, steps=60):
    """``net`` fitted to the cases' labels by plain cross-entropy (a representation that knows the task)."""
    data = [(torch.from_numpy(x)[None], torch.from_numpy(y)[None]) for _, x, y in ds.load_cases(cases)]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(steps):
        x, y = data[step % len(data)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def test_probe_ranks_representations_by_what_they_know(load_script, tiny_env, capsys, one_thread):
    from nnunet_ssl.weights.checkpoint import atomic_torch_save
    from nnunet_ssl.weights.plans_network import PreprocessedDataset
    probe = load_script("probe_features")
    ds = PreprocessedDataset(DATASET, tiny_env["plans"]["plans_name"], CONFIG)
    blank = ds.network(1)
    with torch.no_grad():  # every normalisation outputs 0: the features say nothing about the image
        for m in blank.modules():
            if isinstance(m, torch.nn.InstanceNorm3d):
                m.weight.zero_()
                m.bias.zero_()
    torch.manual_seed(0)
    paths = {}
    for name, net in (("blank", blank), ("trained", _trained(ds.network(2), ds, tiny_env["train"][:2]))):
        paths[name] = tiny_env["tmp"] / f"{name}.pth"
        atomic_torch_save({"network_weights": net.state_dict()}, str(paths[name]))
    probe.main(["-d", DATASET, "-p", tiny_env["plans"]["plans_name"], "--train", *tiny_env["train"][:2],
                "--eval", *tiny_env["val"], "--per-class", "300", f"blank={paths['blank']}",
                f"trained={paths['trained']}"])
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {"random init", "blank", "trained"}, out
    assert rows["blank"] == 0.0 and rows["trained"] > 0.6 and rows["trained"] > rows["random init"] + 0.2, out
    assert "probe fitted on 2 case(s)" in out and "scored on 2" in out
    probe.main(["-d", DATASET, "-p", tiny_env["plans"]["plans_name"], "--train", *tiny_env["train"][:2],
                "--eval", *tiny_env["val"], "--per-class", "300", "--no-random", f"blank={paths['blank']}"])
    assert set(_rows(capsys.readouterr().out)) == {"blank"}


def test_split_file_and_usage_errors(load_script, tiny_env, capsys):
    probe = load_script("probe_features")
    split = tiny_env["tmp"] / "split.json"
    cases = tiny_env["train"] + tiny_env["val"]
    split.write_text(json.dumps({"split_seed": 0, "test_groups": [], "val_groups": tiny_env["val"],
                                 "pool_groups": tiny_env["train"], "cases_of": {c: [c] for c in cases}}))
    args = probe.parse_args(["-d", DATASET, "--split", str(split), "--budget", "2"])
    assert len(args.train) == 2 and set(args.train) <= set(tiny_env["train"]) and args.eval == tiny_env["val"]
    for argv, message in ((["-d", DATASET], "give --train and --eval cases, or --split"),
                          (["-d", DATASET, "--train", "a", "--eval", "a"], "cases both in --train and --eval"),
                          (["-d", DATASET, "--split", str(split), "x=/missing.pth"], "expected NAME=PATH"),
                          (["-d", DATASET, "--split", str(split), "--no-random"], "--no-random needs at least one")):
        with pytest.raises(SystemExit) as exc:
            probe.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
