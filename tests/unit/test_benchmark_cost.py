"""The cost benchmark's library parts (nnunet_ssl.benchmark.cost_*): ReFs targets, statistics, measuring helpers,
command line; nothing is trained (the trainers are only looked up by name)."""
import pytest
import torch

from nnunet_ssl.benchmark import cost_args, cost_data, cost_measure, cost_report
from nnunet_ssl.benchmark.cost_trainers import refs_base, trainer_class


@pytest.mark.parametrize("name, plain", [
    ("ReFsTrainer_PGL", "PGLTrainer"), ("ReFsTrainer_GMIM", "GMIMTrainer"), ("ReFsTrainer_IDEAL", "IDEALTrainer"),
    ("ReFsTrainer", "MAETrainer"),
])
def test_refs_base_is_the_plain_trainer_with_the_same_objective(name, plain):
    # the ReFs trainers do not inherit from the SSL trainers: they name their objective in objective_class
    import nnunet_ssl_trainers.index as index
    refs, base = getattr(index, name), getattr(index, plain)
    assert plain not in [c.__name__ for c in refs.__mro__]
    assert refs.objective_class is base.objective_class
    assert refs_base(name) == plain


def test_refs_base_of_the_default_refs_trainer_follows_its_objective():
    import nnunet_ssl_trainers.index as index
    plain = refs_base("ReFsTrainer")
    assert plain is not None and not plain.startswith("ReFs")
    assert getattr(index, plain).objective_class is index.ReFsTrainer.objective_class


@pytest.mark.parametrize("name", ["ReFsTrainer_cosine", "ReFsTrainer_PGL_cosine", "ReFsTrainer_noMatching",
                                  "MAETrainer", "nnUNetTrainer", "IDEALSemiSupervisedTrainer", "ReFsTrainer_nosuch"])
def test_refs_base_none_without_a_fish_target(name):
    assert refs_base(name) is None


def test_trainer_class_uses_nnunets_lookup_and_rejects_unknown_names():
    import nnunet_ssl_trainers.index as index
    from nnunet_ssl.errors import UserInputError
    assert trainer_class("PGLTrainer") is index.PGLTrainer
    with pytest.raises(UserInputError, match="ReFsTrainer_nosuch"):
        trainer_class("ReFsTrainer_nosuch")


def _state(times: dict, trainers):
    rounds = [{"round": r, "times": {n: t[r] for n, t in times.items()}, "mem": {n: [1024 * 2 ** 20] for n in times},
               "losses": {n: [0.5] for n in times}} for r in range(2)]
    return {"config": {"trainers": trainers, "device": "cpu", "rss_interval_ms": 1.0, "memory_steps": 1,
                       "steps_per_round": 2, "warmup": 1, "batch_size": 2},
            "rounds": rounds, "errors": {"PGLTrainer": "RuntimeError: boom"},
            "state_bytes": {n: 2 ** 20 for n in times}, "datasets": {n: "D" for n in times}}


def test_summarize_targets_refs_fish_on_its_objectives_trainer():
    trainers = ["nnUNetTrainer", "GMIMTrainer", "ReFsTrainer_GMIM", "ReFsTrainer_PGL", "ReFsTrainer_cosine",
                "PGLTrainer"]
    times = {"nnUNetTrainer": [[1.0, 1.0], [2.0, 2.0]], "GMIMTrainer": [[1.5, 1.5], [3.0, 3.0]],
             "ReFsTrainer_GMIM": [[2.6, 2.6], [5.4, 5.4]], "ReFsTrainer_PGL": [[3.0, 3.0], [6.0, 6.0]],
             "ReFsTrainer_cosine": [[4.0, 4.0], [8.0, 8.0]]}
    stats = cost_report.summarize(_state(times, trainers))
    assert stats["GMIMTrainer"]["ratio"] == pytest.approx(1.5) and stats["GMIMTrainer"]["meets_target"] is True
    gmim = stats["ReFsTrainer_GMIM"]
    assert gmim["ratio"] == pytest.approx(2.65)  # median of 2.6 and 2.7
    assert gmim["target"] == "<= GMIMTrainer + 1.2 = 2.70x" and gmim["meets_target"] is True
    pgl = stats["ReFsTrainer_PGL"]  # its objective's trainer failed: the target is named, not checked
    assert pgl["target"] == "<= PGLTrainer + 1.2 (PGLTrainer not measured)" and pgl["meets_target"] is None
    assert stats["ReFsTrainer_cosine"]["target"] is None
    assert stats["PGLTrainer"] == {"error": "RuntimeError: boom"}
    assert stats["GMIMTrainer"]["peak_mb"] == pytest.approx(1025.0)
    assert stats["GMIMTrainer"]["mem_ratio"] == pytest.approx(1.0)


def test_render_and_loader_verdict():
    trainers = ["nnUNetTrainer", "PGLTrainer"]
    times = {"nnUNetTrainer": [[1.0, 1.0], [1.0, 1.0]], "PGLTrainer": [[2.0, 2.0], [2.0, 2.0]]}
    state = _state(times, trainers)
    state["errors"] = {}
    state.update(tag="t", notes=["a note"], plans_summary={"plans": "P", "network": "N", "features_per_stage": [8],
                                                            "patch_size": [8, 8], "configuration": "2d"},
                 environment={"date": "d", "host": "h", "platform": "p", "torch": "t", "nnunetv2": "n",
                              "threads": 1, "loadavg_start": "0.0"},
                 loader={"batch_size": 2, "patch_size": [8, 8], "batches": 3, "workers": 0,
                         "single_process_batches_per_s": 1.0, "augmenter_batches_per_s": 0.25, "startup_s": 0.1,
                         "e2e_step_s": 4.0})
    stats = cost_report.summarize(state)
    verdict = cost_report.loader_verdict(state["loader"], stats)
    assert verdict["pgl_steps_per_s"] == pytest.approx(0.5) and verdict["bottleneck"] is True
    assert verdict["e2e_slowdown"] == pytest.approx(2.0)
    text = cost_report.render(state, stats, verdict)
    assert "| PGLTrainer | 2.000 |" in text and "**loader IS the bottleneck**" in text and "- a note" in text
    assert cost_report.loader_verdict(None, stats) is None


def test_split_cases_reuses_cases_and_says_so():
    order = [f"c{i}" for i in range(7)]
    down, unl, ref, notes = cost_data.split_cases(order, 2)
    assert (down, unl, ref, notes) == (["c0", "c1"], ["c2", "c3"], ["c4", "c5"], [])
    down, unl, ref, notes = cost_data.split_cases(order, 3)
    assert unl == ["c3", "c4", "c5"] and ref == ["c4", "c5", "c6"] and len(notes) == 1
    down, unl, ref, notes = cost_data.split_cases(order[:4], 3)
    assert unl == down and len(notes) == 2


def test_parse_args_puts_the_baseline_first_and_checks_counts():
    args = cost_args.parse_args(["--trainers", "PGLTrainer", "nnUNetTrainer", "PGLTrainer"])
    assert args.trainers == ["nnUNetTrainer", "PGLTrainer"]
    assert cost_args.parse_args([]).trainers == cost_args.DEFAULT_TRAINERS
    with pytest.raises(SystemExit):
        cost_args.parse_args(["--rounds", "0"])


def test_state_and_batch_bytes():
    class FakeTrainer:
        pass
    t = FakeTrainer()
    t.network = torch.nn.Linear(4, 3)  # 15 float32 values
    t.optimizer = torch.optim.SGD(t.network.parameters(), lr=0.1, momentum=0.9)
    t.network(torch.ones(2, 4)).sum().backward()
    t.optimizer.step()  # momentum buffers: 15 more
    t.dataloader_train = t.dataloader_val = None
    assert cost_measure.state_bytes(t) == (15 + 15 + 15) * 4  # weights, gradients, momentum
    t.optimizer.zero_grad(set_to_none=True)
    assert cost_measure.state_bytes(t) == (15 + 15) * 4
    batch = {"data": torch.zeros(2, 3), "target": [torch.zeros(4, dtype=torch.uint8), torch.zeros(1)], "keys": "x"}
    assert cost_measure.batch_bytes(batch) == 6 * 4 + 4 + 4


def test_rss_sampler_measures_an_increase():
    if cost_measure.rss_bytes() is None:
        pytest.skip("/proc/self/statm is not readable")
    with cost_measure.RSSSampler(0.001) as s:
        block = bytearray(64 * 2 ** 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert s.increase >= 32 * 2 ** 20


class _NoOpTrainer:
    """Stands in for a built trainer: a tiny network and optimizer, a train_step that trains nothing."""

    def __init__(self):
        self.network = torch.nn.Linear(2, 2)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1)
        self.dataloader_train = self.dataloader_val = None

    def train_step(self, batch):
        return {"loss": 0.5}


def test_main_measures_rounds_resumes_and_writes_results(tmp_path, monkeypatch):
    import json

    from nnunet_ssl.benchmark import common as bc
    from nnunet_ssl.benchmark import cost_main
    from nnunet_ssl.benchmark.cost_trainers import Bench
    from nnunet_ssl.errors import UserInputError

    def fake_build(name, data, args, device, log_path):
        b = Bench(name)
        b.trainer, b.dataset, b.batches = _NoOpTrainer(), data["downstream"], [{}]
        return b
    data = {"downstream": "Down", "unlabeled": "Unl", "reference": None, "plans": "P", "folders": {}, "notes": [],
            "num_cases": 2}
    monkeypatch.setattr(cost_main, "prepare_data", lambda args, need_ref: dict(data))
    monkeypatch.setattr(cost_main, "build", fake_build)
    monkeypatch.setattr(bc, "plans_summary", lambda *a: {"batch_size": 2, "patch_size": [8, 8], "plans": "P",
                                                         "network": "N", "features_per_stage": [8],
                                                         "configuration": "3d_fullres"})
    argv = ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--trainers", "MAETrainer",
            "--steps-per-round", "1", "--warmup", "1", "--memory-steps", "0", "--device", "cpu", "--skip-loader"]
    assert cost_main.main(argv + ["--rounds", "2"]) == 0
    (state_file,) = (tmp_path / "out").glob("cost_*.state.json")
    tag = state_file.name[len("cost_"):-len(".state.json")]
    assert tag.startswith("P_3d_fullres_b2_cpu_")  # a subset of the trainers: its own files
    result = json.loads((tmp_path / "out" / f"cost_{tag}.json").read_text())
    assert len(result["raw_rounds"]) == 2 and result["trainers"]["MAETrainer"]["n_steps"] == 2
    assert result["raw_rounds"][1]["order"] == ["MAETrainer", "nnUNetTrainer"]  # the start trainer rotates
    assert "skipped (--skip-loader)" in (tmp_path / "out" / f"cost_{tag}.md").read_text()
    assert cost_main.main(argv + ["--rounds", "3"]) == 0  # resumes: one more round
    assert len(json.loads(state_file.read_text())["rounds"]) == 3
    with pytest.raises(UserInputError, match="--fresh"):
        cost_main.main(argv + ["--rounds", "3", "--steps-per-round", "2"])  # other settings, same files
