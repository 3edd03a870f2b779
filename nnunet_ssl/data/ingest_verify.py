"""Full verification of every input file of ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`) before it becomes
a case.

SimpleITK zero-fills what is missing: half a ``.nii.gz`` reads as a half-empty volume, a 200-byte one as a 1x1x2
volume. So every file is checked in full first:

* gzip files (``.nii.gz`` and any other ``*.gz``): decompressed to the end, which checks the end-of-stream marker
  and the CRC-32/length trailer (Python's ``gzip``);
* NIfTI-1/-2 single files (``.nii``, ``.nii.gz``): the header's ``vox_offset + prod(dim) * bitpix / 8`` against the
  bytes really there;
* against the downstream dataset: an image with fewer voxels than a thousandth of the downstream fingerprint's
  smallest case is reported (a truncated or wrong file, not a small crop).

And when preprocessing produces non-finite values from finite input (huge intensities overflowing float32 in
nnU-Net's normalisation), the message says so instead of "NaN or infinite values".
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from typing import List, Optional, Sequence, Tuple

_CHUNK = 1 << 20
#: an image with fewer voxels than this fraction of the downstream dataset's smallest case is reported
MIN_VOXEL_FRACTION = 1e-3


def _nifti_expected_size(head: bytes) -> Optional[Tuple[int, List[int], int]]:
    """``(bytes the file must hold, dims, bitpix)`` from a single-file NIfTI-1/-2 header, None if not one."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            if head[344:348] != b"n+1\x00":
                return None  # ni1: header and data in two files (.hdr/.img)
            dim = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = max(352, int(struct.unpack(endian + "f", head[108:112])[0]))
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            if head[4:8] != b"n+2\x00":
                return None
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dim = struct.unpack(endian + "8q", head[16:80])
            vox_offset = max(544, struct.unpack(endian + "q", head[168:176])[0])
        else:
            continue
        ndim = dim[0]
        if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 1 for d in dim[1:ndim + 1]):
            return None  # nonsense header: left to the image reader's own error
        dims = [int(d) for d in dim[1:ndim + 1]]
        return vox_offset + math.prod(dims) * bitpix // 8, dims, int(bitpix)
    return None


def _is_nifti(path: str) -> bool:
    low = path.lower()
    return low.endswith(".nii") or low.endswith(".nii.gz")


def _gzip_content(path: str) -> Tuple[Optional[str], bytes, int]:
    """Decompress a gzip file to its end (every member; zlib checks each member's CRC-32 and length trailer):
    ``(problem, first 544 uncompressed bytes, uncompressed size)``."""
    head, size = b"", 0
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                while chunk:
                    out = d.decompress(chunk)
                    if len(head) < 544:
                        head += out[:544 - len(head)]
                    size += len(out)
                    chunk = b""
                    if d.eof:
                        chunk = d.unused_data
                        if chunk.strip(b"\x00"):
                            d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member follows
                        else:
                            chunk = b""  # trailing zero padding
    except zlib.error as e:
        reason = str(e)
        if "data check" in reason or "length check" in reason:
            return f"corrupt: the gzip check of the data failed ({reason})", head, size
        return f"not readable as an image (not a valid gzip file: {reason})", head, size
    if not d.eof:
        return (f"truncated: the gzip stream stops after {size} uncompressed bytes, before its end marker "
                f"({os.path.getsize(path)} bytes on disk)"), head, size
    return None, head, size


def integrity_problem(path: str) -> Optional[str]:
    """Why the file at ``path`` is incomplete or corrupt, or None. Reads the whole file once."""
    low = path.lower()
    if low.endswith(".gz"):
        problem, head, size = _gzip_content(path)
        if problem:
            return problem
    elif _is_nifti(path):
        with open(path, "rb") as f:
            head = f.read(544)
        size = os.path.getsize(path)
    else:
        return None
    if _is_nifti(path):
        if size < 348:
            return f"truncated: {size} bytes, shorter than a NIfTI header (348 bytes)"
        expected = _nifti_expected_size(head)
        if expected is not None and size < expected[0]:
            need, dims, bitpix = expected
            return (f"truncated: holds {size} bytes{' uncompressed' if low.endswith('.gz') else ''}, its NIfTI header "
                    f"describes {need} (size {'x'.join(map(str, dims))} at {bitpix} bits per voxel); "
                    f"{100.0 * max(size - (need - math.prod(dims) * bitpix // 8), 0) / max(need, 1):.0f}% of the "
                    f"image data is there")
    return None


def smallest_downstream_voxels(fingerprint: Optional[dict]) -> Optional[int]:
    """Voxels of the downstream dataset's smallest case after cropping (its ``dataset_fingerprint.json``)."""
    shapes = (fingerprint or {}).get("shapes_after_crop") or []
    counts = [math.prod(int(s) for s in shape) for shape in shapes if shape]
    return min(counts) if counts else None


def size_problem(size: Sequence[int], downstream_voxels: Optional[int], downstream_name: str) -> Optional[str]:
    """An image far smaller than anything in the downstream dataset: truncated or the wrong file."""
    if not downstream_voxels:
        return None
    voxels = math.prod(int(s) for s in size)
    if voxels < MIN_VOXEL_FRACTION * downstream_voxels:
        return (f"only {voxels} voxels (size {list(size)}) while the smallest image of {downstream_name} has "
                f"{downstream_voxels}: a truncated or wrong file, not an image of the same kind")
    return None


def nonfinite_reason(raw_files: Sequence[str], sources: Sequence[str], reader_class, schemes) -> dict:
    """``{source: reason}`` for a case whose preprocessed data are not finite: NaN/Inf already in the file, or
    finite values too large for nnU-Net's normalisation in float32."""
    import numpy as np

    out = {}
    for raw, src in zip(raw_files, sources):
        try:
            data, _ = reader_class().read_images([raw])
        except Exception:  # noqa: BLE001 - read fine moments ago; fall back to the plain statement
            out[src] = "contains NaN or infinite values after preprocessing"
            continue
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        if n_nan or n_inf:
            what = " and ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "")
                                if p)
            out[src] = f"contains {what} voxel value(s)"
            continue
        peak = float(np.abs(data.astype(np.float64)).max()) if data.size else 0.0
        out[src] = (f"holds finite but huge intensities (up to {peak:.3g}); nnU-Net's "
                    f"{'/'.join(schemes) or 'intensity'} normalisation overflows float32 on them (its limit is "
                    f"about 3.4e38, squares overflow from about 1.8e19). Rescale or clip the image to a realistic "
                    f"intensity range (CT: Hounsfield units, MR: scanner units) or remove it")
    return out
