"""Index UDIAT Dataset B (``original/NNNNNN.png`` + ``GT/NNNNNN.png``, ``DatasetB.xlsx``) into records.

The root may be the dataset folder itself or a folder holding ``Dataset_B/`` or ``BUS/``. Labels come from
the first sheet of ``DatasetB.xlsx`` when it exists (header row; headers stripped and lower-cased,
``Unnamed`` columns dropped; ``Image`` integer zero-padded to 6 digits; ``Type`` Benign/Malignant; the
next column is kept as ``diagnosis``). Without the sheet, ``pathology`` is ``None``.

Images and GT may be in any format PIL reads (``.png``, ``.bmp``...). Every entry of ``original/`` and ``GT/``
is indexed, quarantined or ignored, by name. Quarantined: an image without GT, a GT without image, two image
files with one stem (``000005.png`` and ``000005.jpg``), an unreadable image or GT, an image whose mode states
no bit depth (32-bit integer or float), a GT whose size differs from its image, an empty GT (nothing above
127), and a sheet row naming an image that is not on disk. Ignored (listed in ``ignored``): files in no
format PIL reads and sub-folders. A 16-bit image is flagged ``image-16-bit``. Exact duplicate images keep
the first in natural order. UDIAT has no patient ids: ``patient_id`` is the stem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from breastseg.workflows.data.indexers._image_files import (
    UNREADABLE,
    image_files_by_stem,
    quarantine_shared_stem,
    usable_image,
)
from breastseg.workflows.data.near_duplicates import FingerprintStore
from breastseg.workflows.data.records import IndexResult, parse_missing
from breastseg.workflows.data.splits import natural_key, remove_exact_duplicates

__all__ = ["FOLDERS", "XLSX_NAME", "find_udiat_root", "read_labels", "index"]

FOLDERS = ("Dataset_B", "BUS")
XLSX_NAME = "DatasetB.xlsx"
_TYPES = {"benign": "benign", "malignant": "malignant"}


def find_udiat_root(root: Path) -> Path:
    """The folder that holds ``original/`` and ``GT/``.

    Raises:
        FileNotFoundError: neither ``root`` nor ``root/Dataset_B`` / ``root/BUS`` has both sub-folders.
    """
    for candidate in (root, *(root / name for name in FOLDERS)):
        if (candidate / "original").is_dir() and (candidate / "GT").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{str(root)!r} is not a UDIAT Dataset B folder: expected original/ and GT/ in it or in "
        f"{' or '.join(name + '/' for name in FOLDERS)}"
    )


def read_labels(xlsx: Path) -> dict[str, dict[str, str | None]]:
    """``{"000001": {"pathology": "benign", "diagnosis": "CYST"}, ...}`` from the first sheet.

    Raises:
        ValueError: the file cannot be read, lacks an ``Image`` or ``Type`` column, or a row has an
            image number that is not an integer or a type other than Benign/Malignant (row named).
    """
    try:
        table = pd.read_excel(xlsx, sheet_name=0, header=0, dtype=object, engine="openpyxl")
    except Exception as error:  # openpyxl raises zipfile/KeyError/ValueError variants for broken files
        raise ValueError(f"cannot read {str(xlsx)!r}: {error}") from error
    table.columns = [str(column).strip().lower() for column in table.columns]
    table = table.loc[:, [not column.startswith("unnamed") for column in table.columns]]
    missing = {"image", "type"} - set(table.columns)
    if missing:
        raise ValueError(f"{str(xlsx)!r} has no {sorted(missing)} column(s); found {list(table.columns)}")
    others = [column for column in table.columns if column not in ("image", "type")]
    labels: dict[str, dict[str, str | None]] = {}
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        values = dict(zip(table.columns, row))
        image = parse_missing(None if pd.isna(values["image"]) else values["image"])
        if image is None:
            continue  # blank trailing rows of the sheet
        try:
            number = float(image)
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            raise ValueError(f"{str(xlsx)!r} row {row_number}: Image {image!r} is not an integer")
        kind = parse_missing(None if pd.isna(values["type"]) else values["type"])
        if kind is not None and kind.lower() not in _TYPES:
            raise ValueError(f"{str(xlsx)!r} row {row_number}: Type {kind!r} is not Benign or Malignant")
        diagnosis = values[others[0]] if others else None
        labels[str(int(number)).zfill(6)] = {
            "pathology": None if kind is None else _TYPES[kind.lower()],
            "diagnosis": parse_missing(None if pd.isna(diagnosis) else diagnosis),
        }
    return labels


def _inspect_gt(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    """``(size, grey pixels)``; decoding proves the file is complete."""
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert("L"))


def _index_image(
    image: Path,
    gt: Path,
    labels: dict[str, dict[str, str | None]] | None,
    result: IndexResult,
    digests: dict[str, str],
    fingerprints: FingerprintStore | None,
) -> dict[str, Any] | None:
    case_id = image.stem
    checked = usable_image(image, case_id, result, digests, fingerprints)
    if checked is None:
        return None
    (width, height), depth_flags = checked
    try:
        gt_size, gt_pixels = _inspect_gt(gt)
    except UNREADABLE as error:
        result.quarantine_record(case_id, str(gt), f"unreadable GT: {error}")
        return None
    if gt_size != (width, height):
        result.quarantine_record(
            case_id, str(gt), f"GT size {gt_size[0]}x{gt_size[1]} differs from image {width}x{height}"
        )
        return None
    if not (gt_pixels > 127).any():
        result.quarantine_record(case_id, str(gt), "GT mask is empty (no pixel above 127)")
        return None
    flags = depth_flags + ([] if set(np.unique(gt_pixels).tolist()) <= {0, 255} else ["gt-not-binary"])
    label = (labels or {}).get(case_id, {})
    if labels is not None and not label:
        flags.append("not-in-xlsx")
    return {
        "image": str(image),
        "label": str(gt),
        "label_format": "png",
        "case_id": case_id,
        "patient_id": case_id,
        "dataset": "udiat",
        "modality": "US",
        "laterality": None,
        "view": None,
        "birads": None,
        "acr": None,
        "pathology": label.get("pathology"),
        "diagnosis": label.get("diagnosis"),
        "subtlety": None,
        "lesion_count": 1,
        "spacing": None,
        "rows": height,
        "columns": width,
        "flags": flags,
    }


def index(root: Path, deduplicate: bool = True, fingerprints: FingerprintStore | None = None) -> IndexResult:
    """Index a UDIAT Dataset B folder.

    Args:
        root: the folder with ``original/`` and ``GT/``, or its parent holding ``Dataset_B/`` or ``BUS/``.
        deduplicate: drop exact duplicate images (listed in ``duplicates``); copies with different labels stay,
            for the label-conflict check.
        fingerprints: where to keep each image's near-duplicate fingerprint, from the indexer's own decode.
    """
    base = find_udiat_root(Path(root).absolute())
    xlsx = base / XLSX_NAME
    labels = read_labels(xlsx) if xlsx.is_file() else None
    result = IndexResult()

    images = image_files_by_stem(base / "original", result)
    gts = image_files_by_stem(base / "GT", result)
    records: list[dict[str, Any]] = []
    digests: dict[str, str] = {}  # pixel digests of the usable images, from their one decode
    for stem in sorted(set(images) | set(gts), key=natural_key):
        if len(images.get(stem, [])) > 1 or len(gts.get(stem, [])) > 1:
            quarantine_shared_stem(stem, images.get(stem, []), gts.get(stem, []), result)
        elif stem not in gts:
            result.quarantine_record(stem, str(images[stem][0]), "image without GT mask (expected GT/<same name>)")
        elif stem not in images:
            result.quarantine_record(stem, str(gts[stem][0]), "GT mask without image in original/")
        else:
            record = _index_image(images[stem][0], gts[stem][0], labels, result, digests, fingerprints)
            if record is not None:
                records.append(record)
    for stem in sorted(set(labels or {}) - set(images) - set(gts), key=natural_key):
        result.quarantine_record(stem, str(xlsx), f"{XLSX_NAME} lists image {stem} but original/{stem}.png is missing")
    if deduplicate:
        records, result.duplicates = remove_exact_duplicates(records, digest=lambda path: digests[str(path)])
    result.records = records
    return result
