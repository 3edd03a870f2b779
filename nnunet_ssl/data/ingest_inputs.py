"""The input images of ``nnunet_ssl ingest`` (:mod:`nnunet_ssl.data.ingest`): finding the cases and their channels in
the input folder, cheap header checks of every file, and what to do with bad cases (stop, or skip them)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_ssl.data.ingest_files import _short_error
from nnunet_ssl.errors import UserInputError

# Endings nnU-Net's readers know plus formats SimpleITK reads that we convert. Longest first for suffix matching.
_DETACHED_HEADER_ENDINGS = (".mhd", ".nhdr")
_EXTRA_ENDINGS = (".nii", ".nii.gz", ".mhd", ".nhdr", ".nrrd", ".mha", ".gipl", ".tif", ".tiff", ".png", ".bmp")
_TIF_ENDINGS = (".tif", ".tiff")
_COMPANION_ENDINGS = (".raw", ".zraw", ".raw.gz", ".json")  # data files of .mhd/.nhdr, spacing files of .tif
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _known_image_endings() -> List[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = set(_EXTRA_ENDINGS)
    for rw in LIST_OF_IO_CLASSES:
        endings.update(e.lower() for e in rw.supported_file_endings)
    return sorted(endings, key=len, reverse=True)


def _split_ending(filename: str, endings: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    low = filename.lower()
    for e in endings:
        if low.endswith(e) and len(filename) > len(e):
            return filename[: -len(e)], e
    return None, None


@dataclass
class _Case:
    case_id: str
    files: Dict[int, str]  # channel -> path
    ending: str


def _scan_input(input_folder: Path, endings: Sequence[str]) -> Tuple[Dict[str, _Case], Dict[str, str], List[str]]:
    """Group image files by case. Returns cases, ignored files (-> reason), subfolders."""
    cases: Dict[str, _Case] = {}
    ignored: Dict[str, str] = {}
    subdirs: List[str] = []
    seen: Dict[Tuple[str, int], str] = {}
    companions = []
    for entry in sorted(os.scandir(input_folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subdirs.append(entry.name)
            continue
        stem, ending = _split_ending(entry.name, endings)
        if ending is None:
            companions.append(entry)
            continue
        m = _CHANNEL_RE.match(stem)
        case_id, channel = (m.group("case"), int(m.group("channel"))) if m else (stem, 0)
        if (case_id, channel) in seen:
            raise UserInputError(
                f"Two input files map to channel {channel:04d} of case '{case_id}': {seen[(case_id, channel)]} and "
                f"{entry.path}. nnU-Net names channels CASE_XXXX<ending>; a file without a _XXXX suffix counts as "
                f"channel 0000. Fix: rename or remove one of them.")
        seen[(case_id, channel)] = entry.path
        case = cases.setdefault(case_id, _Case(case_id, {}, ending))
        case.files[channel] = entry.path
        if case.ending != ending:
            case.ending = "mixed"
    for entry in companions:
        low = entry.name.lower()
        is_companion = any(low.endswith(e) for e in _COMPANION_ENDINGS)
        if not is_companion:
            ignored[entry.path] = "not an image file nnU-Net reads (unknown file ending)"
    return cases, ignored, subdirs


def _collect_cases(input_folder, verbose: bool) -> Tuple[Path, List[str], Dict[str, _Case], Dict[str, str]]:
    """``(input folder, image endings, cases by id, skipped file -> reason)``; raises when there is no image."""
    input_path = Path(input_folder).expanduser()
    if not input_path.is_dir():
        raise UserInputError(f"Input folder {input_path} does not exist or is not a folder. Fix: pass the folder "
                             f"that holds the unlabeled images with -i.")
    input_path = input_path.resolve()
    endings = _known_image_endings()
    cases, skipped, subdirs = _scan_input(input_path, endings)
    if not cases:
        hint = f" It has subfolders ({', '.join(subdirs[:5])}): point -i at the folder with the image files." \
            if subdirs else ""
        others = f" Found only: {', '.join(os.path.basename(f) for f in list(skipped)[:5])}." if skipped else ""
        raise UserInputError(
            f"No images found in input folder {input_path} (it is empty or holds no file with an image ending "
            f"nnU-Net reads: {', '.join(sorted(set(endings)))}).{others}{hint} Fix: put the unlabeled 3D images "
            f"there, one file per channel named CASE_0000.nii.gz (single-channel files may omit _0000).")

    if verbose:
        for f, reason in skipped.items():
            print(f"nnunet_ssl ingest: ignoring {f}: {reason}")
    return input_path, endings, cases, skipped


def _check_channels(cases: Dict[str, _Case], channel_names, downstream_name: str) -> None:
    """The channel layout must match the downstream dataset (not skippable: it is a naming problem)."""
    n_channels = len(channel_names)
    for c in cases.values():
        channels = sorted(c.files)
        if channels != list(range(n_channels)):
            files = ", ".join(os.path.basename(c.files[ch]) for ch in channels)
            raise UserInputError(
                f"Case '{c.case_id}' has {len(channels)} channel(s) (channel ids {['%04d' % ch for ch in channels]}: "
                f"{files}) but the downstream dataset {downstream_name} has {n_channels} channel(s) "
                f"({channel_names}). Fix: give every case exactly the channels _0000 ... _{n_channels - 1:04d} "
                f"(files without a _XXXX suffix count as _0000), or pick a downstream dataset with matching "
                f"channels.")


def _check_headers(cases: Dict[str, _Case], endings: Sequence[str], converted: bool,
                   downstream_voxels: Optional[int] = None, downstream_name: str = "the downstream dataset"
                   ) -> Dict[str, Dict[str, str]]:
    """Check of every file before any work: complete (:func:`~nnunet_ssl.data.ingest_verify.integrity_problem`),
    readable header, not tiny against the downstream dataset's smallest case (``downstream_voxels``), not 2D/4D/
    vector pixels, channels that agree.

    Returns the bad cases: case id -> {file: reason}.
    """
    import numpy as np

    bad_cases: Dict[str, Dict[str, str]] = {}
    for c in cases.values():
        problems = {}
        headers = []
        for ch in sorted(c.files):
            f = c.files[ch]
            _, ending = _split_ending(os.path.basename(f), endings)
            uses_sitk = not (ending in _TIF_ENDINGS and not converted)
            problem, header = _header_problem(f, uses_sitk, downstream_voxels, downstream_name)
            if problem:
                problems[f] = problem
            elif header is not None:
                headers.append((f, header))
        if not problems and len(headers) > 1:
            ref = headers[0][1]
            if any(h["size"] != ref["size"] or not np.allclose(h["spacing"], ref["spacing"], rtol=1e-4)
                   for _, h in headers[1:]):
                desc = ", ".join(f"{os.path.basename(f)}: size {list(h['size'])} spacing "
                                 f"{[round(s, 4) for s in h['spacing']]}" for f, h in headers)
                problems = {f: f"the channels of case '{c.case_id}' differ in size or spacing ({desc})"
                            for f, _ in headers}
        if problems:
            bad_cases[c.case_id] = problems
    return bad_cases


def _read_header(path: str) -> dict:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return {"dim": reader.GetDimension(), "size": tuple(reader.GetSize()), "spacing": tuple(reader.GetSpacing()),
            "components": reader.GetNumberOfComponents()}


def _header_problem(path: str, uses_sitk: bool, downstream_voxels: Optional[int] = None,
                    downstream_name: str = "the downstream dataset") -> Tuple[Optional[str], Optional[dict]]:
    """Check before any work: complete file, readable header, plausible size, 3D, one component.
    Returns (problem, header)."""
    from nnunet_ssl.data.ingest_verify import integrity_problem, size_problem

    problem = integrity_problem(path)
    if problem:
        return problem, None
    if not uses_sitk:
        return None, None
    try:
        h = _read_header(path)
    except Exception as e:  # noqa: BLE001 - any reader error means "unreadable"
        return f"not readable as an image ({_short_error(e)})", None
    problem = size_problem(h["size"], downstream_voxels, downstream_name)
    if problem:
        return problem, h
    if h["dim"] == 2 or (h["dim"] == 3 and min(h["size"]) == 1):
        return (f"2D image (size {list(h['size'])}); nnunet_ssl ingests 3D volumes only. Stack 2D slices into a "
                f"3D volume, or train on 2D data with nnU-Net's own tools"), h
    if h["dim"] == 4:
        return (f"4D image (size {list(h['size'])}); store each channel/time point as its own 3D file "
                f"CASE_0000, CASE_0001, ..."), h
    if h["dim"] != 3:
        return f"{h['dim']}D image; nnunet_ssl ingests 3D volumes only", h
    if h["components"] != 1:
        return (f"{h['components']}-component (vector/RGB) pixels; store each component as its own 3D file "
                f"CASE_0000, CASE_0001, ..."), h
    return None, h


def _handle_bad(bad_cases: Dict[str, Dict[str, str]], cases: Dict[str, "_Case"], skipped: Dict[str, str],
                skip_bad: bool, verbose: bool) -> None:
    if not bad_cases:
        return
    if not skip_bad:
        lines = [f"  {f}: {reason}" for problems in bad_cases.values() for f, reason in problems.items()]
        raise UserInputError(
            f"{len(lines)} input file(s) cannot be used:\n" + "\n".join(lines) +
            "\nFix: repair or remove these files, or pass --skip-bad (skip_bad=True) to ingest the other cases "
            "without them.")
    for case_id, problems in bad_cases.items():
        for f, reason in problems.items():
            skipped[f] = reason
        for f in cases[case_id].files.values():
            if f not in problems:
                skipped[f] = f"another channel of case '{case_id}' cannot be used"
        del cases[case_id]
        if verbose:
            for f, reason in problems.items():
                print(f"nnunet_ssl ingest: skipping case '{case_id}': {f}: {reason}")
    if not cases:
        raise UserInputError(
            "No readable images left after skipping the bad files listed above "
            f"({', '.join(os.path.basename(f) for f in skipped)}). Fix: repair the images or point -i at a folder "
            "with readable 3D images.")
