"""Index UDIAT Dataset B (``original/NNNNNN.png`` + ``GT/NNNNNN.png``, ``DatasetB.xlsx``) into records.

The root may be the dataset folder itself or a folder holding ``Dataset_B/`` or ``BUS/``. Labels come from
the first sheet of ``DatasetB.xlsx`` when it exists (header row; headers stripped and lower-cased,
``Unnamed`` columns dropped; ``Image`` integer zero-padded to 6 digits; ``Type`` Benign/Malignant; the
next column is kept as ``diagnosis``). Without the sheet, ``pathology`` is ``None``.

Images and GT may be in any format PIL reads (``.png``, ``.bmp``...). Every entry of ``original/`` and ``GT/``
is indexed, quarantined or ignored, by name. Quarantined: an image without GT, a GT without image, two image
files with one stem (``000005.png`` and ``000005.jpg``), an unreadable image or GT, an image whose mode states
no bit depth (32-bit integer or float), a GT whose size differs from its image, an empty GT (nothing above
127), a sheet row naming an image that is not on disk, a sheet row whose Image is not an integer (or blank
in a row with other cells), and an image whose row has a Type other than Benign/Malignant or whose rows differ.
Ignored (listed in ``ignored``): files in no format PIL reads, sub-folders and blank sheet rows. A sheet row
repeating another cell for cell is listed in ``duplicates``; every sheet row is named (``table_rows``) in a
record or one of these entries. A 16-bit image is flagged ``image-16-bit``. Exact duplicate images keep the
first in natural order. UDIAT has no patient ids: ``patient_id`` is the stem.
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
from breastseg.workflows.data.records import IndexResult, name_table_rows, parse_missing, table_row
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


def _cell(values: dict[str, Any], column: str | None) -> str | None:
    value = values.get(column) if column else None
    return parse_missing(None if value is None or pd.isna(value) else value)


def read_labels(xlsx: Path, result: IndexResult) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``({"000001": {"pathology": "benign", "diagnosis": "CYST", "table_rows": [...]}, ...}, refused)`` from the
    first sheet; ``refused`` maps an image whose row is unusable (a Type other than Benign/Malignant, or two rows
    that differ) to the reason, and its rows are named there. A blank row is ignored; a row whose Image is no
    integer is quarantined itself; a row repeating another cell for cell goes to ``duplicates``.

    Raises:
        ValueError: the file cannot be read or lacks an ``Image`` or ``Type`` column.
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
    diagnosis_column = next((column for column in table.columns if column not in ("image", "type")), None)
    rows_of: dict[str, list[tuple[int, tuple[str | None, ...]]]] = {}
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        values = dict(zip(table.columns, row))
        ref = [table_row(xlsx, row_number)]
        if all(_cell(values, column) is None for column in table.columns):
            result.ignore(str(xlsx), f"row {row_number} is blank", ref)
            continue
        cells = (_cell(values, "image"), _cell(values, "type"), _cell(values, diagnosis_column))
        try:
            number = float(cells[0]) if cells[0] is not None else float("nan")
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            what = "is blank" if cells[0] is None else f"{cells[0]!r} is not an integer"
            result.quarantine_record(ref[0], str(xlsx), f"{XLSX_NAME} row {row_number}: Image {what}, so which image "
                                     "the row labels is unknown; fix the cell", ref)
            continue
        rows_of.setdefault(str(int(number)).zfill(6), []).append((row_number, cells))
    labels: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for stem, listed in rows_of.items():
        refs = [table_row(xlsx, number) for number, _ in listed]
        (first_number, (_, kind, diagnosis)), numbers = listed[0], " and ".join(str(number) for number, _ in listed)
        bad_types = [f"row {number}: Type {cells[1]!r} is not Benign or Malignant" for number, cells in listed
                     if cells[1] is not None and cells[1].lower() not in _TYPES]
        if bad_types or any(cells[1:] != listed[0][1][1:] for _, cells in listed[1:]):
            refused[stem] = f"{XLSX_NAME} {'; '.join(bad_types) or f'rows {numbers} label image {stem} differently'}; fix the table"
            labels[stem] = {"table_rows": refs}
            continue
        labels[stem] = {"pathology": None if kind is None else _TYPES[kind.lower()], "diagnosis": diagnosis,
                        "table_rows": refs[:1]}
        for number, _ in listed[1:]:
            result.duplicates.append({"case_id": stem, "path": str(xlsx), "duplicate_of": stem, "table_rows": [table_row(xlsx, number)],
                                      "reason": f"{XLSX_NAME} row {number} repeats row {first_number} cell for cell; used once"})
    return labels, refused


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
        "table_rows": label.get("table_rows", []),
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
    result = IndexResult()
    labels, refused = read_labels(xlsx, result) if xlsx.is_file() else (None, {})

    images = image_files_by_stem(base / "original", result)
    gts = image_files_by_stem(base / "GT", result)
    records: list[dict[str, Any]] = []
    digests: dict[str, str] = {}  # pixel digests of the usable images, from their one decode
    for stem in sorted(set(images) | set(gts), key=natural_key):
        if len(images.get(stem, [])) > 1 or len(gts.get(stem, [])) > 1:
            quarantine_shared_stem(stem, images.get(stem, []), gts.get(stem, []), result)
        elif stem in refused:
            result.quarantine_record(stem, str((images.get(stem) or gts[stem])[0]), refused[stem])
        elif stem not in gts:
            result.quarantine_record(stem, str(images[stem][0]), "image without GT mask (expected GT/<same name>)")
        elif stem not in images:
            result.quarantine_record(stem, str(gts[stem][0]), "GT mask without image in original/")
        else:
            record = _index_image(images[stem][0], gts[stem][0], labels, result, digests, fingerprints)
            if record is not None:
                records.append(record)
    for stem in sorted(set(labels or {}) - set(images) - set(gts), key=natural_key):
        result.quarantine_record(stem, str(xlsx), refused.get(stem) or f"{XLSX_NAME} lists image {stem} but "
                                 f"original/{stem}.png is missing")
    if deduplicate:
        records, removed = remove_exact_duplicates(records, digest=lambda path: digests[str(path)])
        result.duplicates += removed
    name_table_rows(result.quarantine + result.duplicates, {stem: label["table_rows"] for stem, label in (labels or {}).items()})
    result.records = records
    return result
