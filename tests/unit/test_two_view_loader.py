"""TwoViewDataLoader on a tiny nnU-Net preprocessed dataset written on the fly."""
import pickle
import threading

import numpy as np
import pytest
import torch

from nnunet_ssl.methods.alignment import align_views
from nnunet_ssl.data.two_view_loader import (TwoViewDataLoader, intensity_only_transforms, make_two_view_augmenter,
                                            shifted_box)
from nnunet_ssl.methods.views import ViewSamplingConfig, extract_view, overlap_fraction
from view_placement import assert_placed

PATCH_3D = (12, 16, 12)
SHAPES = [(20, 24, 18), (14, 30, 22), (9, 16, 40)]


def _write_dataset(folder, kind="blosc2", num_channels=2):
    from nnunetv2.training.dataloading.nnunet_dataset import (comp_blosc2_params, nnUNetDatasetBlosc2,
                                                              nnUNetDatasetNumpy)
    rng = np.random.RandomState(0)
    cases = {}
    for i, shape in enumerate(SHAPES):
        data = rng.randn(num_channels, *shape).astype(np.float32)
        seg = np.zeros((1, *shape), dtype=np.int16)
        props = {'spacing': [1.0, 1.0, 1.0], 'shape_before_cropping': shape, 'class_locations': {}}
        name = f"case_{i:03d}"
        if kind == "blosc2":
            blocks, chunks = comp_blosc2_params(data.shape, PATCH_3D, data.itemsize)
            blocks_s, chunks_s = comp_blosc2_params(seg.shape, PATCH_3D, seg.itemsize)
            nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / name), chunks=chunks, blocks=blocks,
                                          chunks_seg=chunks_s, blocks_seg=blocks_s)
        else:
            nnUNetDatasetNumpy.save_case(data, seg, props, str(folder / name))
        cases[name] = data
    return cases


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    folder = tmp_path_factory.mktemp("preprocessed")
    cases = _write_dataset(folder)
    ds_class = infer_dataset_class(str(folder))
    return ds_class(str(folder), None), cases


def _check_batch_geometry(batch, cases, patch, cfg, B, C=2, transforms=False):
    ndim = len(patch)
    assert set(batch) >= {'data_v1', 'data_v2', 'box_v1', 'box_v2', 'flip_v1', 'flip_v2', 'keys'}
    for v in (1, 2):
        assert batch[f'data_v{v}'].shape == (B, C, *patch) and batch[f'data_v{v}'].dtype == torch.float32
        assert batch[f'box_v{v}'].shape == (B, 2, ndim) and batch[f'box_v{v}'].dtype == torch.float32
        assert batch[f'flip_v{v}'].shape == (B, ndim) and batch[f'flip_v{v}'].dtype == torch.bool
    assert len(batch['keys']) == B
    for b, k in enumerate(batch['keys']):
        case = torch.from_numpy(cases[k])
        if ndim == 2:
            z = int(batch['slice_idx'][b])
            assert 0 <= z < case.shape[1]
            case = case[:, z]
        shape = np.array(case.shape[1:])
        b1, b2 = batch['box_v1'][b].double().numpy(), batch['box_v2'][b].double().numpy()
        assert overlap_fraction(b1, b2) >= cfg.min_overlap - 1e-5
        for box in (b1, b2):
            c = (box[0] + box[1]) / 2
            assert (c >= -1e-4).all() and (c <= shape + 1e-4).all()
        if not transforms:
            for v, box in ((1, b1), (2, b2)):
                exp = extract_view(case, box, batch[f'flip_v{v}'][b], patch)
                torch.testing.assert_close(batch[f'data_v{v}'][b], exp, rtol=0, atol=1e-4)


def test_batches_3d_match_extract_view(dataset):
    ds, cases = dataset
    cfg = ViewSamplingConfig()
    np.random.seed(1)
    dl = TwoViewDataLoader(ds, 3, PATCH_3D, cfg)
    for _ in range(3):
        _check_batch_geometry(next(dl), cases, PATCH_3D, cfg, 3)


def test_batches_2d(dataset):
    ds, cases = dataset
    cfg = ViewSamplingConfig(min_overlap=0.5)
    np.random.seed(2)
    dl = TwoViewDataLoader(ds, 4, (16, 12), cfg)
    for _ in range(3):
        batch = next(dl)
        assert batch['slice_idx'].shape == (4,)
        _check_batch_geometry(batch, cases, (16, 12), cfg, 4)


def test_views_align_with_alignment_module(tmp_path):
    # end to end: cases whose channels are the case coordinates of each voxel centre (k + 0.5); after
    # align_views both views must give the RoI cell-centre coordinates wherever linear interpolation is exact
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params
    shapes = {}
    for i, shape in enumerate(SHAPES):
        data = np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in shape], indexing="ij")).astype(np.float32)
        seg = np.zeros((1, *shape), dtype=np.int16)
        blocks, chunks = comp_blosc2_params(data.shape, PATCH_3D, 4)
        nnUNetDatasetBlosc2.save_case(data, seg, {'spacing': [1.0] * 3}, str(tmp_path / f"c{i}"),
                                      chunks=chunks, blocks=blocks, chunks_seg=chunks, blocks_seg=blocks)
        shapes[f"c{i}"] = np.array(shape)
    np.random.seed(3)
    cfg = ViewSamplingConfig(min_overlap=0.5)
    dl = TwoViewDataLoader(nnUNetDatasetBlosc2(str(tmp_path)), 4, PATCH_3D, cfg)
    out = (6, 5, 7)
    checked = 0
    for _ in range(3):
        batch = next(dl)
        a1, a2, valid = align_views(batch['data_v1'], batch['box_v1'], batch['flip_v1'],
                                    batch['data_v2'], batch['box_v2'], batch['flip_v2'], out)
        assert valid.all()
        for b, k in enumerate(batch['keys']):
            b1, b2 = batch['box_v1'][b].double().numpy(), batch['box_v2'][b].double().numpy()
            lo, hi = np.maximum(b1[0], b2[0]), np.minimum(b1[1], b2[1])
            axes = [lo[d] + (np.arange(out[d]) + 0.5) * (hi[d] - lo[d]) / out[d] for d in range(3)]
            exp = np.stack(np.meshgrid(*axes, indexing="ij"))
            mask = np.ones(out, dtype=bool)
            for box in (b1, b2):
                # exact where the RoI point lies half a view voxel inside the view box and its neighbouring view
                # voxels sampled the case at least half a case voxel inside it (no zero padding involved)
                step = (box[1] - box[0]) / np.array(PATCH_3D)
                for d in range(3):
                    mask &= (exp[d] >= box[0, d] + step[d] / 2) & (exp[d] <= box[1, d] - step[d] / 2)
                    mask &= (exp[d] >= 0.5 + step[d]) & (exp[d] <= shapes[k][d] - 0.5 - step[d])
            m = torch.from_numpy(mask)
            e = torch.from_numpy(exp).float()
            torch.testing.assert_close(a1[b][:, m], e[:, m], rtol=0, atol=2e-3)
            torch.testing.assert_close(a2[b][:, m], e[:, m], rtol=0, atol=2e-3)
            checked += int(mask.sum())
    assert checked > 100


def test_spatial_false_and_intensity_transforms(dataset):
    ds, cases = dataset
    np.random.seed(4)
    torch.manual_seed(4)
    dl = TwoViewDataLoader(ds, 3, PATCH_3D, ViewSamplingConfig(), intensity_transforms=None, spatial=False)
    batch = next(dl)
    assert torch.equal(batch['box_v1'], batch['box_v2'])
    assert not batch['flip_v1'].any() and not batch['flip_v2'].any()
    assert torch.equal(batch['data_v1'], batch['data_v2'])

    tr = intensity_only_transforms()
    dl = TwoViewDataLoader(ds, 3, PATCH_3D, ViewSamplingConfig(), intensity_transforms=(None, tr), spatial=False)
    differs = 0
    for _ in range(5):
        batch = next(dl)
        assert torch.isfinite(batch['data_v2']).all()
        _check_batch_geometry({**batch, 'data_v2': batch['data_v1']}, cases, PATCH_3D, ViewSamplingConfig(), 3)
        differs += int(not torch.equal(batch['data_v1'], batch['data_v2']))
    assert differs > 0  # p(no intensity transform at all for 15 samples) is negligible


def test_second_crop_follows_the_placement(dataset):
    """GMIM's second crop: shifted by at most ``shift`` of the side per axis, then placed like the first crop (on
    a case larger than the crop: inside it)."""
    rng = np.random.RandomState(5)
    shape = np.array([20., 24., 18.])
    for _ in range(200):
        lo = rng.uniform(0, shape - 12)
        box = np.stack((lo, lo + 12))
        for placement in ("inside", "centre"):
            b2 = shifted_box(box, 0.25, shape, rng, placement)
            assert np.allclose(b2[1] - b2[0], 12)
            assert (np.abs(b2[0] - box[0]) <= 0.25 * 12 + 1e-9).all()
            assert_placed(b2, shape, placement)
    # the loader hands its placement to the second crop
    ds, cases = dataset
    np.random.seed(6)
    dl = TwoViewDataLoader(ds, 3, PATCH_3D, ViewSamplingConfig(placement="inside", scale_range=(1.0, 1.0)),
                           intensity_transforms=None, spatial=False, crop_shift=0.25)
    for _ in range(10):
        batch = next(dl)
        for b, k in enumerate(batch['keys']):
            shape = np.array(cases[k].shape[1:], dtype=np.float64)
            for v in (1, 2):
                assert_placed(batch[f'box_v{v}'][b].double().numpy(), shape, "inside", tol=1e-4)


def test_numpy_dataset_and_pickling(tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    cases = _write_dataset(tmp_path, kind="numpy", num_channels=1)
    ds = infer_dataset_class(str(tmp_path))(str(tmp_path), None)
    dl = TwoViewDataLoader(ds, 2, PATCH_3D, ViewSamplingConfig(), intensity_transforms=intensity_only_transforms())
    dl2 = pickle.loads(pickle.dumps(dl))
    batch = next(dl2)
    _check_batch_geometry(batch, cases, PATCH_3D, ViewSamplingConfig(), 2, C=1, transforms=True)


def _next_with_timeout(it, timeout=30.0):
    result = {}

    def run():
        try:
            result['batch'] = next(it)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            result['error'] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no batch within {timeout} s")
    if 'error' in result:
        raise result['error']
    return result['batch']


def test_single_threaded_augmenter(dataset):
    ds, cases = dataset
    aug = make_two_view_augmenter(TwoViewDataLoader(ds, 2, PATCH_3D, ViewSamplingConfig()), 0)
    _check_batch_geometry(next(aug), cases, PATCH_3D, ViewSamplingConfig(), 2)


# batchgenerators' shutdown race: the results thread may still be unpickling a shared-memory tensor from a worker
# that _finish() has just ended (same with nnU-Net's own loader); harmless, reported as a thread warning
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_nondet_multithreaded_augmenter(dataset):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    ds, cases = dataset
    cfg = ViewSamplingConfig()
    dl = TwoViewDataLoader(ds, 2, PATCH_3D, cfg, intensity_transforms=intensity_only_transforms())
    aug = make_two_view_augmenter(dl, 2, pin_memory=False)
    assert isinstance(aug, NonDetMultiThreadedAugmenter)
    try:
        batches = [_next_with_timeout(aug) for _ in range(4)]
    finally:
        aug._finish()
    for batch in batches:
        _check_batch_geometry(batch, cases, PATCH_3D, cfg, 2, transforms=True)
    # the workers draw different geometry (numpy) from each other
    boxes = torch.stack([b['box_v1'] for b in batches])
    assert len({tuple(x.flatten().tolist()) for x in boxes}) == len(batches)


def test_torch_rng_reseeded_in_worker_processes(dataset):
    ds, _ = dataset
    seeds = []
    for np_seed in (0, 1):
        dl = TwoViewDataLoader(ds, 1, PATCH_3D, ViewSamplingConfig())
        dl._creator_pid = -1  # pretend to run inside a forked augmenter worker
        torch.manual_seed(0)
        np.random.seed(np_seed)
        next(dl)
        seeds.append(torch.initial_seed())
        next(dl)  # only once per process
        assert torch.initial_seed() == seeds[-1]
    assert seeds[0] != seeds[1] and 0 not in seeds
    # in the creating process (single-threaded use) the torch RNG is left alone
    dl = TwoViewDataLoader(ds, 1, PATCH_3D, ViewSamplingConfig())
    torch.manual_seed(5)
    next(dl)
    assert torch.initial_seed() == 5
