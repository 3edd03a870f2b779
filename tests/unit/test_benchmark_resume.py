"""The driver continues an interrupted training only from a checkpoint that loads (a session stopped mid-write
leaves a truncated one, which would make every later ``--c`` fail)."""
import torch

from nnunet_ssl.benchmark.driver import continue_args


def _save(path, epoch):
    torch.save({"network_weights": {"w": torch.ones(3)}, "current_epoch": epoch}, path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert continue_args(tmp_path) == []


def test_an_intact_latest_checkpoint_is_continued(tmp_path):
    _save(tmp_path / "checkpoint_latest.pth", 10)
    assert continue_args(tmp_path) == ["--c"]
    assert (tmp_path / "checkpoint_latest.pth").is_file()


def test_a_truncated_latest_checkpoint_is_moved_aside_and_the_best_one_continued(tmp_path):
    _save(tmp_path / "checkpoint_latest.pth", 10)
    _truncate(tmp_path / "checkpoint_latest.pth")
    _save(tmp_path / "checkpoint_best.pth", 7)
    assert continue_args(tmp_path) == ["--c"]
    assert not (tmp_path / "checkpoint_latest.pth").exists()
    assert (tmp_path / "checkpoint_latest.pth.damaged").is_file()
    assert (tmp_path / "checkpoint_best.pth").is_file()


def test_a_run_with_only_damaged_checkpoints_starts_again(tmp_path):
    _save(tmp_path / "checkpoint_latest.pth", 10)
    _truncate(tmp_path / "checkpoint_latest.pth")
    (tmp_path / "checkpoint_best.pth").write_bytes(b"")
    assert continue_args(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best.pth.damaged",
                                                          "checkpoint_latest.pth.damaged"]
