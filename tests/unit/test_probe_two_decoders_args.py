"""scripts/probe_two_decoders.py refuses bad arguments with a usage message, not a traceback.

Its end-to-end behaviour (the 'average' output equals nnUNetv2_predict's) is tested in
tests/integration/test_ideal_semi_run.py.
"""
import pytest


@pytest.fixture(scope="module")
def probe(load_script):
    return load_script("probe_two_decoders")


@pytest.fixture
def folders(tmp_path):
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (model / "fold_all").mkdir()
    (model / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    for name in ("imagesTs", "labelsTs"):
        (tmp_path / name).mkdir()
    return tmp_path


def _argv(root, *extra):
    return ["-m", str(root / "model"), "-i", str(root / "imagesTs"), "-l", str(root / "labelsTs"),
            "-o", str(root / "out"), *extra]


@pytest.mark.parametrize("extra, message", [
    (["-f", "abc"], "argument -f/--fold: must be a fold number or 'all', not 'abc'"),
    (["-f", "3"], "fold_3"),
    (["--checkpoint", "checkpoint_best.pth"], "checkpoint_best.pth does not exist"),
])
def test_bad_arguments_are_usage_errors(probe, folders, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        probe.parse_args(_argv(folders, *extra))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_folder_is_a_usage_error(probe, folders, capsys):
    argv = _argv(folders)
    argv[argv.index("-l") + 1] = str(folders / "nowhere")
    with pytest.raises(SystemExit):
        probe.parse_args(argv)
    err = capsys.readouterr().err
    assert "--labels" in err and "is not a folder" in err


def test_fold_number_and_all_are_accepted(probe, folders):
    assert probe.parse_args(_argv(folders, "-f", "0")).fold == 0
    assert probe.parse_args(_argv(folders, "-f", "all")).fold == "all"
