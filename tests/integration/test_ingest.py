"""nnunet_ssl.data.ingest on real data: unlabeled hippocampus MRI and a CT with the plans of a small labeled dataset.

Uses the ``nnunet_env`` / ``planned_downstream`` fixtures (tests/integration/conftest.py). Most ingests run serially
(``num_processes=0``); the main one uses 2 worker processes.
"""
import argparse
import json
import os
import shutil

import numpy as np
import pytest

from nnunet_ssl.errors import UserInputError
from nnunet_ssl.data.ingest import IngestReport, add_ingest_arguments, ingest_unlabeled, run_ingest_from_args

UNLABELED_ID = 502
NUM_UNLABELED = 8


def _leftovers(nnunet_env, dataset_id):
    """Everything in nnUNet_raw / nnUNet_preprocessed that belongs to ``dataset_id`` (incl. hidden temp folders)."""
    tag = f"Dataset{dataset_id:03d}_"
    found = []
    for root in (nnunet_env.raw, nnunet_env.preprocessed):
        found += [p for p in root.iterdir() if p.name.startswith(tag) or p.name.startswith("." + tag)]
    return found


def _folder_with(tmp_path, files, name="in"):
    folder = tmp_path / name
    folder.mkdir()
    for src, dst_name in files:
        shutil.copyfile(src, folder / dst_name)
    return folder


def _expect_error(nnunet_env, dataset_id, *fragments, **kwargs):
    with pytest.raises(UserInputError) as exc:
        ingest_unlabeled(dataset_id=dataset_id, **{"verbose": False, "num_processes": 0, **kwargs})
    message = str(exc.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message:\n{message}"
    assert _leftovers(nnunet_env, dataset_id) == []
    return message


@pytest.fixture(scope="module")
def unlabeled_hippocampus(planned_downstream, nnunet_env, tmp_path_factory):
    """8 hippocampus images that are not in the downstream dataset, ingested as Dataset502 with 2 workers."""
    cases = planned_downstream.unused_case_ids[:NUM_UNLABELED]
    folder = tmp_path_factory.mktemp("unlabeled_hippo")
    for c in cases:
        shutil.copyfile(planned_downstream.image_file(c), folder / f"{c}_0000.nii.gz")
    report = ingest_unlabeled(folder, UNLABELED_ID, "HippoUnlabeled", planned_downstream.dataset_id,
                              num_processes=2, verbose=True)
    return report, cases, folder


def test_ingest_hippocampus_uses_downstream_plans(unlabeled_hippocampus, planned_downstream, nnunet_env):
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    report, cases, folder = unlabeled_hippocampus
    name = f"Dataset{UNLABELED_ID}_HippoUnlabeled"
    assert isinstance(report, IngestReport)
    assert report.dataset_name == name
    assert report.cases == sorted(cases) and report.num_cases == NUM_UNLABELED
    assert report.skipped == {}
    assert report.configurations == ["2d", "3d_fullres"]  # every configuration of the plans with a data_identifier
    assert not report.converted_to_nifti and report.file_ending == ".nii.gz"
    assert report.raw_folder == str(nnunet_env.raw / name)
    assert report.preprocessed_folder == str(nnunet_env.preprocessed / name)
    assert maybe_convert_to_dataset_name(UNLABELED_ID) == name  # nnU-Net finds it by id, unambiguously

    raw = nnunet_env.raw / name
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in cases)
    assert not (raw / "labelsTr").exists()
    downstream_json = json.loads((planned_downstream.raw_folder / "dataset.json").read_text())
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["channel_names"] == downstream_json["channel_names"]
    assert dataset_json["labels"] == {"background": 0}
    assert dataset_json["numTraining"] == NUM_UNLABELED
    assert dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["nnunet_ssl"] == {"unlabeled": True, "downstream_dataset": planned_downstream.dataset_name,
                                          "plans_identifier": "nnUNetPlans"}

    pre = nnunet_env.preprocessed / name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    downstream_plans = json.loads(planned_downstream.plans_file.read_text())
    assert plans["dataset_name"] == name
    plans["dataset_name"] = downstream_plans["dataset_name"]
    assert plans == downstream_plans  # identical except dataset_name: same network, spacing, normalisation
    assert json.loads((pre / "dataset.json").read_text()) == dataset_json

    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == len(fingerprint["shapes_after_crop"]) == NUM_UNLABELED
    assert fingerprint["foreground_intensity_properties_per_channel"] == {}
    record = json.loads((pre / "nnunet_ssl_ingest.json").read_text())
    assert record["input_folder"] == str(folder.resolve())
    assert record["downstream_dataset"] == planned_downstream.dataset_name
    assert record["plans_identifier"] == "nnUNetPlans"
    assert record["configurations"] == ["2d", "3d_fullres"]
    assert sorted(record["cases"]) == sorted(cases)
    assert record["skipped"] == {}
    assert not (pre / "splits_final.json").exists()  # nnU-Net makes it on first training
    for cfg in ("2d", "3d_fullres"):
        identifier = downstream_plans["configurations"][cfg]["data_identifier"]
        assert sorted(p.name for p in (pre / identifier).glob("*.pkl")) == sorted(f"{c}.pkl" for c in cases)


def test_preprocessed_cases_load_in_nnunet(unlabeled_hippocampus, nnunet_env):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    report, cases, _ = unlabeled_hippocampus
    pre = nnunet_env.preprocessed / report.dataset_name
    plans_manager = PlansManager(str(pre / "nnUNetPlans.json"))
    cm = plans_manager.get_configuration("3d_fullres")
    dataset_json = json.loads((pre / "dataset.json").read_text())
    folder = pre / cm.data_identifier
    assert infer_dataset_class(str(folder)) is nnUNetDatasetBlosc2

    dataset = nnUNetDatasetBlosc2(str(folder))
    assert sorted(dataset.identifiers) == sorted(cases)
    for c in cases:
        data, seg, seg_prev, props = dataset.load_case(c)
        assert data.shape[0] == 1  # the downstream's channel count
        assert seg.shape == (1, *data.shape[1:])
        assert set(np.unique(seg[:])) <= {0, -1}
        assert props["class_locations"] == {}
        expected = compute_new_shape(props["shape_after_cropping_and_before_resampling"], props["spacing"],
                                     cm.spacing)
        assert tuple(data.shape[1:]) == tuple(expected)  # resampled to the plans' spacing
        assert np.isfinite(np.asarray(data[:])).all()

    label_manager = plans_manager.get_label_manager(dataset_json)
    assert label_manager.num_segmentation_heads == 1 and label_manager.foreground_labels == []
    loader = nnUNetDataLoader(dataset, 2, cm.patch_size, cm.patch_size, label_manager,
                              oversample_foreground_percent=0.5)  # "foreground" samples fall back to random crops
    batch = next(loader)
    assert tuple(batch["data"].shape) == (2, 1, *cm.patch_size)
    assert tuple(batch["target"].shape) == (2, 1, *cm.patch_size)
    assert set(np.unique(batch["target"].numpy())) <= {0, -1}
    assert len(batch["keys"]) == 2 and set(batch["keys"]) <= set(cases)


def test_ingest_ct_with_hippocampus_plans(planned_downstream, nnunet_env, shared_data, tmp_path):
    """Another modality, 3 mm spacing, stored as .nii (converted to .nii.gz): resampled to the 1 mm plans."""
    import SimpleITK as sitk
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    # the small crop of example_ct.nii.gz (same scan, 30 slices) keeps this test within the time budget: the full
    # volume upsampled 27x to the hippocampus' 1 mm spacing takes about a minute on 2 cores
    src = sitk.ReadImage(str(shared_data / "unlabeled_ct_mr" / "example_ct_sm.nii.gz"))
    folder = tmp_path / "ct"
    folder.mkdir()
    sitk.WriteImage(src, str(folder / "abdomen_ct.nii"))
    report = ingest_unlabeled(folder, 510, "CT", planned_downstream.dataset_name, configurations=["3d_fullres"],
                              num_processes=0, verbose=False)
    assert report.cases == ["abdomen_ct"] and report.configurations == ["3d_fullres"]
    assert report.converted_to_nifti and report.file_ending == ".nii.gz"

    raw_file = nnunet_env.raw / "Dataset510_CT" / "imagesTr" / "abdomen_ct_0000.nii.gz"
    copy = sitk.ReadImage(str(raw_file))
    assert copy.GetSize() == src.GetSize()
    assert np.allclose(copy.GetSpacing(), src.GetSpacing()) and np.allclose(copy.GetOrigin(), src.GetOrigin())
    assert np.allclose(copy.GetDirection(), src.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(copy), sitk.GetArrayFromImage(src))

    pre = nnunet_env.preprocessed / "Dataset510_CT"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    data, seg, _, props = nnUNetDatasetBlosc2(str(pre / cfg["data_identifier"])).load_case("abdomen_ct")
    assert data.shape[0] == 1
    assert np.allclose(props["spacing"], [3.0, 3.0, 3.0], atol=0.05)
    cropped = np.array(props["shape_after_cropping_and_before_resampling"])
    expected = np.round(cropped * np.array(props["spacing"]) / np.array(cfg["spacing"])).astype(int)
    assert tuple(data.shape[1:]) == tuple(expected)  # 3 mm -> 1 mm
    values = np.asarray(data[:])
    assert abs(values.mean()) < 0.1 and abs(values.std() - 1) < 0.15  # the plans' z-score normalisation
    assert (pre / "dataset_fingerprint.json").is_file()


def test_empty_folder(planned_downstream, nnunet_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(nnunet_env, 520, "No images found", str(empty), input_folder=empty, dataset_name="X",
                  downstream=501)
    (empty / "README.txt").write_text("not an image")
    _expect_error(nnunet_env, 520, "No images found", "README.txt", input_folder=empty, dataset_name="X",
                  downstream=501)


def test_corrupt_file_is_named_and_can_be_skipped(planned_downstream, nnunet_env, tmp_path, capsys):
    good = planned_downstream.unused_case_ids[NUM_UNLABELED:NUM_UNLABELED + 2]
    folder = _folder_with(tmp_path, [(planned_downstream.image_file(c), f"{c}_0000.nii.gz") for c in good])
    (folder / "bad.nii.gz").write_bytes(b"this is not a nifti file \x00\x01\x02" * 50)
    _expect_error(nnunet_env, 521, "bad.nii.gz", "not readable", "--skip-bad", input_folder=folder,
                  dataset_name="Bad", downstream=501)

    report = ingest_unlabeled(folder, 521, "Bad", 501, configurations=["3d_fullres"], num_processes=0,
                              skip_bad=True, verbose=True)
    assert report.cases == sorted(good)
    assert list(report.skipped) == [str(folder.resolve() / "bad.nii.gz")]
    assert "not readable" in report.skipped[str(folder.resolve() / "bad.nii.gz")]
    assert "bad.nii.gz" in capsys.readouterr().out
    record = json.loads((nnunet_env.preprocessed / "Dataset521_Bad" / "nnunet_ssl_ingest.json").read_text())
    assert list(record["skipped"]) == list(report.skipped)
    assert len(list((nnunet_env.raw / "Dataset521_Bad" / "imagesTr").iterdir())) == 2


def test_channel_count_mismatch(planned_downstream, nnunet_env, tmp_path):
    image = planned_downstream.image_file(planned_downstream.unused_case_ids[0])
    folder = _folder_with(tmp_path, [(image, "twochan_0000.nii.gz"), (image, "twochan_0001.nii.gz")])
    _expect_error(nnunet_env, 522, "'twochan'", "2 channel(s)", "has 1 channel(s)", planned_downstream.dataset_name,
                  input_folder=folder, dataset_name="Chan", downstream=501)


def test_2d_image_is_rejected(planned_downstream, nnunet_env, tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "flat"
    folder.mkdir()
    sitk.WriteImage(sitk.Image([32, 32], sitk.sitkFloat32), str(folder / "slice.nii.gz"))
    _expect_error(nnunet_env, 523, "slice.nii.gz", "2D image", input_folder=folder, dataset_name="Flat",
                  downstream=501)


def test_dataset_id_taken(planned_downstream, nnunet_env, tmp_path):
    image = planned_downstream.image_file(planned_downstream.unused_case_ids[0])
    folder = _folder_with(tmp_path, [(image, "one_0000.nii.gz")])
    kwargs = dict(input_folder=folder, downstream=501, configurations=["3d_fullres"])

    # a user's labeled dataset is never replaced, with or without overwrite
    labeled = nnunet_env.raw / "Dataset524_MyLabeled"
    (labeled / "labelsTr").mkdir(parents=True)
    (labeled / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0,
                                                      "x": 1}, "numTraining": 0, "file_ending": ".nii.gz"}))
    with pytest.raises(UserInputError, match="already taken by .*Dataset524_MyLabeled"):
        ingest_unlabeled(dataset_id=524, dataset_name="New", verbose=False, **kwargs)
    with pytest.raises(UserInputError, match="Refusing to overwrite .*Dataset524_MyLabeled"):
        ingest_unlabeled(dataset_id=524, dataset_name="New", overwrite=True, verbose=False, **kwargs)
    assert (labeled / "dataset.json").is_file() and not (nnunet_env.raw / "Dataset524_New").exists()

    # a preprocessed folder alone also takes the id
    (nnunet_env.preprocessed / "Dataset525_Other").mkdir()
    with pytest.raises(UserInputError, match="already taken by .*Dataset525_Other"):
        ingest_unlabeled(dataset_id=525, dataset_name="New", verbose=False, **kwargs)
    assert not (nnunet_env.raw / "Dataset525_New").exists()

    # our own unlabeled dataset can be replaced (also under a new name)
    ingest_unlabeled(dataset_id=526, dataset_name="First", verbose=False, num_processes=0, **kwargs)
    with pytest.raises(UserInputError, match="already taken by .*Dataset526_First"):
        ingest_unlabeled(dataset_id=526, dataset_name="First", verbose=False, **kwargs)
    report = ingest_unlabeled(dataset_id=526, dataset_name="Second", overwrite=True, verbose=False, num_processes=0,
                              **kwargs)
    assert report.dataset_name == "Dataset526_Second"
    assert [p.name for p in _leftovers(nnunet_env, 526)] == ["Dataset526_Second", "Dataset526_Second"]


def test_downstream_missing_or_not_planned(planned_downstream, nnunet_env, tmp_path):
    image = planned_downstream.image_file(planned_downstream.unused_case_ids[0])
    folder = _folder_with(tmp_path, [(image, "one_0000.nii.gz")])
    unplanned = nnunet_env.raw / "Dataset530_Unplanned"
    (unplanned / "imagesTr").mkdir(parents=True)
    (unplanned / "dataset.json").write_text((planned_downstream.raw_folder / "dataset.json").read_text())

    _expect_error(nnunet_env, 531, "Dataset530_Unplanned", "has not been planned",
                  "nnUNetv2_plan_and_preprocess -d 530", "nnUNetv2_plan_experiment", input_folder=folder,
                  dataset_name="U", downstream=530)
    _expect_error(nnunet_env, 531, "Downstream dataset 999 was not found", input_folder=folder, dataset_name="U",
                  downstream=999)
    _expect_error(nnunet_env, 531, "no plans 'nnUNetResEncUNetMPlans'", "Available plans: nnUNetPlans",
                  input_folder=folder, dataset_name="U", downstream=501, plans_identifier="nnUNetResEncUNetMPlans")
    _expect_error(nnunet_env, 531, "Configuration '3d_lowres' is not in the plans", "2d, 3d_fullres",
                  input_folder=folder, dataset_name="U", downstream=501, configurations=["3d_lowres"])


@pytest.mark.parametrize("var", ["nnUNet_raw", "nnUNet_preprocessed"])
def test_env_var_missing(planned_downstream, nnunet_env, tmp_path, monkeypatch, var):
    image = planned_downstream.image_file(planned_downstream.unused_case_ids[0])
    folder = _folder_with(tmp_path, [(image, "one_0000.nii.gz")])
    monkeypatch.delenv(var)
    _expect_error(nnunet_env, 532, var, "is not set", f"export {var}=", input_folder=folder, dataset_name="E",
                  downstream=501)


def test_interrupt_leaves_nothing_behind(planned_downstream, nnunet_env, tmp_path, monkeypatch):
    import nnunet_ssl.data.ingest as ingest

    cases = planned_downstream.unused_case_ids[:2]
    folder = _folder_with(tmp_path, [(planned_downstream.image_file(c), f"{c}_0000.nii.gz") for c in cases])
    real = ingest._process_case
    calls = []

    def interrupted(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task["case"])
        return real(task)

    monkeypatch.setattr(ingest, "_process_case", interrupted)
    stale = nnunet_env.raw / ".Dataset533_Stop.nnunet_ssl-tmp-999999999-0123abcd"  # of a process killed -9
    stale.mkdir()
    with pytest.raises(KeyboardInterrupt):
        ingest_unlabeled(folder, 533, "Stop", 501, configurations=["3d_fullres"], num_processes=0, verbose=False)
    assert calls and _leftovers(nnunet_env, 533) == []


def test_cli_arguments(planned_downstream, nnunet_env, tmp_path):
    image = planned_downstream.image_file(planned_downstream.unused_case_ids[0])
    folder = _folder_with(tmp_path, [(image, "plain.nii.gz")])  # no _XXXX suffix: single-channel case
    parser = add_ingest_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["-i", str(folder), "-d", "534", "--downstream", "501", "-c", "3d_fullres",
                              "-np", "0", "--quiet"])
    assert args.dataset_name is None and args.plans_identifier == "nnUNetPlans" and not args.skip_bad
    report = run_ingest_from_args(args)
    assert report.dataset_name == "Dataset534_HippoSmallUnlabeled"
    assert report.cases == ["plain"]
    assert (nnunet_env.raw / report.dataset_name / "imagesTr" / "plain_0000.nii.gz").is_file()


def _truncated_inputs(planned_downstream, folder):
    """Half of a .nii.gz, its first 200 bytes, and half of an uncompressed .nii (SimpleITK zero-fills all three)."""
    import gzip
    src = planned_downstream.image_file(planned_downstream.unused_case_ids[NUM_UNLABELED + 2])
    data = src.read_bytes()
    (folder / "half.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "tiny.nii.gz").write_bytes(data[:200])
    raw = gzip.decompress(data)
    (folder / "halfplain.nii").write_bytes(raw[: len(raw) // 2])
    return ["half.nii.gz", "tiny.nii.gz", "halfplain.nii"]


def test_truncated_files_are_named_and_can_be_skipped(planned_downstream, nnunet_env, tmp_path):
    good = planned_downstream.unused_case_ids[NUM_UNLABELED:NUM_UNLABELED + 2]
    folder = _folder_with(tmp_path, [(planned_downstream.image_file(c), f"{c}_0000.nii.gz") for c in good])
    bad = _truncated_inputs(planned_downstream, folder)
    message = _expect_error(nnunet_env, 564, *bad, "truncated", "--skip-bad", input_folder=folder,
                            dataset_name="Cut", downstream=501)
    assert message.count(": truncated:") == 3, message
    report = ingest_unlabeled(folder, 564, "Cut", 501, configurations=["3d_fullres"], num_processes=0,
                              skip_bad=True, verbose=False)
    assert report.cases == sorted(good)
    assert sorted(report.skipped) == sorted(str(folder.resolve() / b) for b in bad)
    assert all("truncated" in why for why in report.skipped.values())


def test_tiny_volume_against_the_downstream_sizes_is_reported(planned_downstream, nnunet_env, tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "small"
    folder.mkdir()
    sitk.WriteImage(sitk.Image([2, 2, 2], sitk.sitkFloat32), str(folder / "speck.nii.gz"))
    _expect_error(nnunet_env, 565, "speck.nii.gz", "only 8 voxels", planned_downstream.dataset_name,
                  input_folder=folder, dataset_name="Speck", downstream=501)


def test_huge_finite_values_are_not_called_nan(planned_downstream, nnunet_env, tmp_path):
    import SimpleITK as sitk

    src = planned_downstream.image_file(planned_downstream.unused_case_ids[0])
    img = sitk.Cast(sitk.ReadImage(str(src)), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[...] = 3e38
    arr[0, 0, 0] = -3e38
    huge = sitk.GetImageFromArray(arr)
    huge.CopyInformation(img)
    folder = tmp_path / "huge"
    folder.mkdir()
    sitk.WriteImage(huge, str(folder / "huge.nii.gz"))
    message = _expect_error(nnunet_env, 566, "huge.nii.gz", "finite but huge intensities", "3e+38", "overflows",
                            input_folder=folder, dataset_name="Huge", downstream=501)
    assert "NaN" not in message


def test_stale_temporaries_of_other_ids_are_removed(planned_downstream, nnunet_env, tmp_path):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = [root / f".Dataset777_Gone.nnunet_ssl-tmp-{p.pid}-0123abcd" for root in (nnunet_env.raw,
                                                                                      nnunet_env.preprocessed)]
    for s in stale:
        (s / "imagesTr").mkdir(parents=True)
    running = nnunet_env.raw / f".Dataset778_Busy.nnunet_ssl-tmp-{os.getppid()}-0123abcd"
    running.mkdir()
    target = tmp_path / "keep"
    target.mkdir()
    link = nnunet_env.preprocessed / f".Dataset779_Link.nnunet_ssl-tmp-{p.pid}-0123abcd"
    link.symlink_to(target)
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(nnunet_env, 567, "No images found", input_folder=empty, dataset_name="X", downstream=501)
    assert not any(s.exists() for s in stale)
    assert running.is_dir() and link.is_symlink() and target.is_dir()
    running.rmdir()
    link.unlink()
