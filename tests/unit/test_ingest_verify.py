"""Input verification of ``nnunet_ssl ingest`` without nnU-Net (issue 24 item 2): every file read in full."""
import gzip
import struct

import numpy as np
import pytest

from nnunet_ssl.data.ingest_verify import integrity_problem, size_problem, smallest_downstream_voxels


def _nifti1(shape=(20, 30, 40), bitpix=32) -> bytes:
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<h", hdr, 70, 16)  # float32
    struct.pack_into("<h", hdr, 72, bitpix)
    struct.pack_into("<f", hdr, 108, 352.0)
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr) + np.random.RandomState(0).rand(int(np.prod(shape))).astype(np.float32).tobytes()


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_nifti_gz_and_nii_are_found(tmp_path, cut):
    data = _nifti1()
    (tmp_path / "ok.nii.gz").write_bytes(gzip.compress(data))
    (tmp_path / "ok.nii").write_bytes(data)
    assert integrity_problem(str(tmp_path / "ok.nii.gz")) is None
    assert integrity_problem(str(tmp_path / "ok.nii")) is None
    gz = gzip.compress(data)
    (tmp_path / "cut.nii.gz").write_bytes(gz[: int(len(gz) * cut)])
    assert "truncated" in integrity_problem(str(tmp_path / "cut.nii.gz"))
    (tmp_path / "cut.nii").write_bytes(data[: int(len(data) * cut)])
    problem = integrity_problem(str(tmp_path / "cut.nii"))
    assert "truncated" in problem and "20x30x40" in problem


def test_complete_gzip_of_a_short_nifti_is_truncated_by_its_header(tmp_path):
    data = _nifti1()
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(data[:400]))  # a valid gzip of too little data
    assert "its NIfTI header describes" in integrity_problem(str(tmp_path / "short.nii.gz"))
    (tmp_path / "tiny.nii.gz").write_bytes(gzip.compress(data)[:200])
    assert "truncated" in integrity_problem(str(tmp_path / "tiny.nii.gz"))


def test_corrupt_gzip_crc_is_found(tmp_path):
    gz = bytearray(gzip.compress(_nifti1()))
    gz[-8] ^= 0xFF  # the CRC-32 of the trailer
    (tmp_path / "crc.nii.gz").write_bytes(bytes(gz))
    assert "corrupt" in integrity_problem(str(tmp_path / "crc.nii.gz"))


def test_size_against_the_downstream_fingerprint():
    fp = {"shapes_after_crop": [[35, 50, 35], [40, 52, 36]]}
    smallest = smallest_downstream_voxels(fp)
    assert smallest == 35 * 50 * 35
    assert "only 2 voxels" in size_problem([1, 1, 2], smallest, "Dataset501_X")
    assert size_problem([32, 32, 32], smallest, "Dataset501_X") is None
    assert size_problem([1, 1, 2], None, "Dataset501_X") is None
