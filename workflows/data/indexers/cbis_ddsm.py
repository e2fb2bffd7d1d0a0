"""CBIS-DDSM indexer: the four description CSVs and the DICOM tree -> one record per full mammogram.

Rules (``shared/notes/datasets.md`` (beside the repository) section 1):

* CSVs are read with ``newline=""`` and every cell stripped (the quoted path field ends in a bare LF);
  both ``breast_density`` and ``breast density`` are accepted; ``NA``, ``N/A`` and empty are missing;
  density 0 and subtlety 0 are kept as 0.
* Files are found through the Study/Series UIDs in the CSV paths, matched to the UIDs in the DICOM
  headers under ``root`` (any depth), so the classic ``<Study>/<Series>/00000N.dcm`` tree and the TCIA
  download tree (``1-1.dcm`` in descriptive folders) both work. In a series of two files the CSV file
  name is matched by name (classic tree), else ``00000N`` by ``InstanceNumber`` N+1 (TCIA tree).
* Mask or crop is decided by shape, never by column or file name: the ROI column is the mask when it
  has the image's size; else the crop column when *it* has the image's size (flag ``mask-crop-swapped``);
  else the row has no usable mask and the image is quarantined (masks are never resized).
* All rows of one image are OR-ed: ``label`` is the list of the validated mask paths. One bad row
  quarantines its whole image, since a missing lesion would be taught as background: a row whose mask
  cannot be had (not found, another size, empty), and also a CSV row that fails validation (a blank or
  invalid cell in any column read: a blank image or ROI path, an abnormality type of the other table, an
  image path whose subject folder is not the row's patient, side and view...), whose film is named by its
  image path or, when that is blank, by table, split, patient, side and view. Whole-image quarantine was
  chosen over masking the lesion out of the loss: the lesion's extent is unknown without its mask, so no
  region could be masked out safely.
* Every CSV row is accounted for by name (``table_rows``, :mod:`~breastseg.workflows.data.records`): in its
  image's record, in the quarantine entry of its image (or of the row itself when no image can be named),
  in ``duplicates`` (a row repeating another row of the same abnormality cell for cell), or in ``ignored``
  (a blank row). Two different rows for one abnormality quarantine their image.
* ``abnormality="both"`` indexes both tables; a film listed as a ``Mass-`` and a ``Calc-`` series
  (same patient, side and view) keeps the ``Mass-`` record, adds the ``Calc-`` masks to it when the
  two images have the same size, and lists the ``Calc-`` image in ``IndexResult.duplicates``. When one of
  the two images is quarantined, so is the other: alone it would teach the film's other lesions as background.

Image-level values over several rows: ``birads`` is the highest assessment, ``pathology`` the most
severe, ``subtlety`` the lowest (most subtle); every row's values are kept in ``abnormalities``.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from breastseg.workflows.data.indexers._dicom_header import DicomHeader, read_header, read_mask_pixels
from breastseg.workflows.data.records import IndexResult, parse_missing, table_row

__all__ = ["CSV_FILES", "ABNORMALITY_CHOICES", "index"]

logger = logging.getLogger(__name__)

#: (table, official split) -> file name
CSV_FILES = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
ABNORMALITY_CHOICES = ("mass", "calc", "both")

_COMMON_COLUMNS = (
    "patient id", "breast density", "left or right breast", "image view", "abnormality id", "abnormality type",
    "assessment", "pathology", "subtlety", "image file path", "cropped image file path", "roi mask file path",
)
_DESCRIPTOR_COLUMNS = {"mass": ("mass shape", "mass margins"), "calc": ("calc type", "calc distribution")}
_DESCRIPTOR_KEYS = {"mass": ("mass_shape", "mass_margins"), "calc": ("calc_type", "calc_distribution")}
_PATHOLOGY_SEVERITY = {"benign_without_callback": 0, "benign": 1, "malignant": 2}
#: the ``abnormality type`` of each table's rows
_ABNORMALITY_TYPES = {"mass": "mass", "calc": "calcification"}
_PATIENT = re.compile(r"^P_\d{5}$")


@dataclass
class _Row:
    table: str
    split: str
    csv_path: Path
    line: int
    values: dict[str, Any]

    @property
    def case_id(self) -> str:
        return self.values["image file path"].split("/")[0]

    @property
    def ref(self) -> str:
        return table_row(self.csv_path, self.line)


def _normalise_header(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def _parse_int(value: str | None, low: int, high: int, column: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(float(value))
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number") from None
    if not low <= number <= high:
        raise ValueError(f"{column} {number} is outside {low}-{high}")
    return number


def _validate_row(cells: dict[str, str | None], table: str, split: str) -> dict[str, Any]:
    values: dict[str, Any] = dict(cells)
    if not _PATIENT.match(cells["patient id"] or ""):
        raise ValueError(f"patient_id {cells['patient id']!r} is not of the form P_00000")
    if cells["left or right breast"] not in ("LEFT", "RIGHT"):
        raise ValueError(f"left or right breast {cells['left or right breast']!r} is not LEFT/RIGHT")
    if cells["image view"] not in ("CC", "MLO"):
        raise ValueError(f"image view {cells['image view']!r} is not CC/MLO")
    if (cells["abnormality type"] or "").lower() != _ABNORMALITY_TYPES[table]:
        raise ValueError(f"abnormality type {cells['abnormality type']!r} is not {_ABNORMALITY_TYPES[table]!r} "
                         f"(this is the {table} table)")
    for column in ("image file path", "cropped image file path", "roi mask file path"):
        if cells[column] is None:
            raise ValueError(f"{column} is empty")
        values[column] = cells[column].replace("\\", "/")
    subject, film = values["image file path"].split("/")[0], _film_name(cells, table, split)
    if subject != film:
        # the patient id is the split's unit: a row naming another patient's image would put it in the wrong group
        raise ValueError(f"image file path names {subject!r} but patient id, side and view give {film!r}")
    values["abnormality id"] = _parse_int(cells["abnormality id"], 1, 99, "abnormality id")
    values["breast density"] = _parse_int(cells["breast density"], 0, 4, "breast density")
    values["subtlety"] = _parse_int(cells["subtlety"], 0, 5, "subtlety")
    values["assessment"] = _parse_int(cells["assessment"], 0, 6, "assessment")
    pathology = (cells["pathology"] or "").lower() or None
    if pathology is not None and pathology not in _PATHOLOGY_SEVERITY:
        raise ValueError(f"pathology {cells['pathology']!r} is not one of MALIGNANT/BENIGN/BENIGN_WITHOUT_CALLBACK")
    values["pathology"] = pathology
    return values


def _film_name(cells: dict[str, str | None], table: str, split: str) -> str:
    """The subject folder (case id) of a row's table, split, patient, side and view: ``Mass-Training_P_00001_LEFT_CC``."""
    kind, part = "Mass" if table == "mass" else "Calc", "Training" if split == "train" else "Test"
    return f"{kind}-{part}_{cells.get('patient id')}_{cells.get('left or right breast')}_{cells.get('image view')}"


def _films_of_cells(cells: dict[str, str | None], table: str, split: str) -> list[str]:
    """The case ids (subject folders) an invalid CSV row may belong to: its image path's, and its patient, side
    and view's when they are given (both when they disagree: either film could lack the row's lesion)."""
    image_path = cells.get("image file path")
    films = [image_path.replace("\\", "/").split("/")[0]] if image_path else []
    if (_PATIENT.match(cells.get("patient id") or "") and cells.get("left or right breast") in ("LEFT", "RIGHT")
            and cells.get("image view") in ("CC", "MLO")):
        films.append(_film_name(cells, table, split))
    return list(dict.fromkeys(films))


def _read_csv(path: Path, table: str, split: str, result: IndexResult, bad_films: dict[str, dict[str, Any]]) -> list[_Row]:
    """The valid rows; an invalid row is quarantined and, when its film is known, its quarantine entry is recorded
    in ``bad_films`` (case id -> entry) so that the film's other rows are not used alone, and are named there."""
    with path.open(newline="", encoding="utf-8-sig") as stream:
        table_rows = list(csv.reader(stream))
    if not table_rows:
        raise ValueError(f"{path}: empty file, expected a CBIS-DDSM description CSV")
    header = [_normalise_header(name) for name in table_rows[0]]
    required = _COMMON_COLUMNS + _DESCRIPTOR_COLUMNS[table]
    missing = [column for column in required if column not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; header is {table_rows[0]}")
    rows = []
    for line, cells in enumerate(table_rows[1:], start=2):
        ref = [table_row(path, line)]
        if not any(cell.strip() for cell in cells):
            result.ignore(str(path), f"row {line} is blank", ref)
            continue
        if len(cells) != len(header):
            result.quarantine_record(ref[0], str(path), f"row {line} has {len(cells)} fields, expected {len(header)}", ref)
            continue
        stripped = {name: parse_missing(cell) for name, cell in zip(header, cells)}
        try:
            values = _validate_row(stripped, table, split)
        except ValueError as error:
            films = _films_of_cells(stripped, table, split)
            if not films:
                result.quarantine_record(ref[0], str(path), f"row {line}: {error}; fix the row", ref)
                continue
            reason = (
                f"row {line}: {error}; image {' and '.join(films)} quarantined whole (abnormality "
                f"{stripped.get('abnormality id') or '?'} has no usable row: its lesion would be taught as background)"
            )
            entry = result.quarantine_record(films[0], str(path), reason, ref)
            for film in films:
                bad_films.setdefault(film, entry)
            continue
        rows.append(_Row(table, split, path, line, values))
    return rows


def _find_csvs(root: Path, tables: tuple[str, ...]) -> dict[tuple[str, str], Path]:
    found = {}
    for (table, split), name in CSV_FILES.items():
        if table not in tables:
            continue
        matches = sorted(root.rglob(name))
        if len(matches) > 1:
            raise ValueError(f"several copies of {name} under {root}: {[str(m) for m in matches]}")
        if matches:
            found[(table, split)] = matches[0]
    if not found:
        wanted = [CSV_FILES[key] for key in CSV_FILES if key[0] in tables]
        raise FileNotFoundError(f"none of the CBIS-DDSM description CSVs {wanted} found under {root}")
    absent = [CSV_FILES[key] for key in CSV_FILES if key[0] in tables and key not in found]
    if absent:
        logger.warning("CBIS-DDSM: %s not found under %s; indexing the other table(s) only", absent, root)
    return found


class _DiskIndex:
    """Every DICOM header under ``root``, looked up by Series UID (both trees name the series' folders
    differently, but its UID is always in the header)."""

    def __init__(self, root: Path) -> None:
        self.by_series: dict[str, list[DicomHeader]] = defaultdict(list)
        self.unreadable_by_subject: dict[str, list[str]] = defaultdict(list)
        for path in sorted(root.rglob("*.dcm")):
            try:
                header = read_header(path)
            except ValueError as error:
                # both trees put a file three levels under its subject folder (subject/study/series/file)
                subject = path.parents[2].name if len(path.parents) > 2 else ""
                self.unreadable_by_subject[subject].append(str(error))
                continue
            if header.series_uid:
                self.by_series[header.series_uid].append(header)

    def resolve(self, csv_path: str) -> DicomHeader | str:
        """The header of the file a CSV path names, or why there is none."""
        parts = csv_path.split("/")
        if len(parts) != 4:
            return f"CSV path {csv_path!r} is not Subject/StudyUID/SeriesUID/file.dcm"
        subject, _, series_uid, name = parts
        candidates = self.by_series.get(series_uid, [])
        if len(candidates) == 1:
            return candidates[0]
        for header in candidates:
            if header.path.name == name:
                return header
        stem = Path(name).stem
        for header in candidates:
            if stem.isdigit() and header.instance_number == int(stem) + 1:
                return header
        if candidates:
            return f"series {series_uid} holds {len(candidates)} files and none matches {name!r}"
        if self.unreadable_by_subject.get(subject):
            return "; ".join(self.unreadable_by_subject[subject])
        return f"no DICOM file of series {series_uid} (CSV path {csv_path!r}) was found"


def _choose_mask(full: DicomHeader, roi: DicomHeader | str, crop: DicomHeader | str) -> tuple[DicomHeader | None, str]:
    """The row's mask by the shape rule; returns ``(mask, flag)`` or ``(None, reason)``."""
    if isinstance(roi, DicomHeader) and roi.shape == full.shape:
        return roi, ""
    if isinstance(crop, DicomHeader) and crop.shape == full.shape:
        return crop, "mask-crop-swapped"
    found = [header for header in (roi, crop) if isinstance(header, DicomHeader)]
    if not found:
        return None, f"ROI mask not found: {roi}"
    sizes = "; ".join(f"{header.path} is {header.rows}x{header.columns}" for header in found)
    missing = "" if isinstance(roi, DicomHeader) else f" (ROI mask column: {roi})"
    return None, (
        f"no ROI mask of the image's size {full.rows}x{full.columns} ({full.path}): {sizes}{missing}; "
        "masks are never resized"
    )


def _check_mask_content(mask: DicomHeader) -> str:
    try:
        pixels = read_mask_pixels(mask.path)
    except ValueError as error:
        return str(error)
    foreground = pixels[pixels > 0]
    if foreground.size == 0:
        return f"ROI mask {mask.path} is empty although the row annotates a lesion"
    if foreground.min() != foreground.max():
        return f"ROI mask {mask.path} is not binary ({len(np.unique(foreground)) + 1} distinct values)"
    return ""


def _abnormality_entry(row: _Row, mask: DicomHeader) -> dict[str, Any]:
    values = row.values
    first, second = _DESCRIPTOR_COLUMNS[row.table]
    first_key, second_key = _DESCRIPTOR_KEYS[row.table]
    return {
        "abnormality_id": values["abnormality id"],
        "type": "mass" if row.table == "mass" else "calcification",
        first_key: values[first],
        second_key: values[second],
        "assessment": None if values["assessment"] is None else str(values["assessment"]),
        "pathology": values["pathology"],
        "subtlety": values["subtlety"],
        "mask": str(mask.path),
    }


def _distinct_rows(rows: list[_Row], result: IndexResult) -> list[_Row] | None:
    """One row per abnormality of an image: a row repeating an earlier one cell for cell goes to ``duplicates``;
    two different rows for one abnormality quarantine the image (``None``: which one is right cannot be told)."""
    kept: dict[int, _Row] = {}
    for row in sorted(rows, key=lambda item: (item.values["abnormality id"], item.line)):
        first = kept.setdefault(row.values["abnormality id"], row)
        if first is row:
            continue
        where = f"{row.csv_path.name} row {row.line} and row {first.line}"
        if row.values != first.values:
            result.quarantine_record(
                row.case_id, str(row.csv_path), f"{where} describe abnormality {row.values['abnormality id']} differently; "
                "keep one of them", [r.ref for r in rows])
            return None
        result.duplicates.append({
            "case_id": row.case_id, "path": str(row.csv_path), "duplicate_of": row.case_id,
            "reason": f"{where} are the same abnormality {row.values['abnormality id']}, cell for cell; used once",
            "table_rows": [row.ref],
        })
    return list(kept.values())


def _image_record(rows: list[_Row], disk: _DiskIndex, check_content: bool, result: IndexResult) -> dict[str, Any] | None:
    first = rows[0]
    case_id = first.case_id
    refs = [row.ref for row in rows]
    full = disk.resolve(first.values["image file path"])
    if not isinstance(full, DicomHeader):
        result.quarantine_record(case_id, first.values["image file path"], f"full mammogram: {full}", refs)
        return None
    distinct = _distinct_rows(rows, result)
    if distinct is None:
        return None
    masks, flags, abnormalities = [], set(), []
    for row in distinct:
        roi = disk.resolve(row.values["roi mask file path"])
        crop = disk.resolve(row.values["cropped image file path"])
        mask, note = _choose_mask(full, roi, crop)
        if mask is None:
            at_fault = str(roi.path) if isinstance(roi, DicomHeader) else row.values["roi mask file path"]
            result.quarantine_record(case_id, at_fault, f"abnormality {row.values['abnormality id']}: {note}", refs)
            return None
        reason = _check_mask_content(mask) if check_content else ""
        if reason:
            result.quarantine_record(case_id, str(mask.path), f"abnormality {row.values['abnormality id']}: {reason}", refs)
            return None
        if note:
            flags.add(note)
        masks.append(str(mask.path))
        abnormalities.append(_abnormality_entry(row, mask))
    values = first.values
    assessments = [int(entry["assessment"]) for entry in abnormalities if entry["assessment"] is not None]
    pathologies = [entry["pathology"] for entry in abnormalities if entry["pathology"] is not None]
    subtleties = [entry["subtlety"] for entry in abnormalities if entry["subtlety"] is not None]
    return {
        "image": str(full.path),
        "label": masks,
        "label_format": "dicom",
        "case_id": case_id,
        "patient_id": values["patient id"],
        "dataset": "cbis-ddsm",
        "modality": "MG",
        "laterality": values["left or right breast"][0],
        "view": values["image view"],
        "birads": str(max(assessments)) if assessments else None,
        "acr": values["breast density"],
        "pathology": max(pathologies, key=_PATHOLOGY_SEVERITY.__getitem__) if pathologies else None,
        "subtlety": min(subtleties) if subtleties else None,
        "lesion_count": len(masks),
        "spacing": full.spacing,
        "rows": full.rows,
        "columns": full.columns,
        "flags": sorted(flags),
        "official_split": first.split,
        "abnormality": abnormalities[0]["type"],
        "abnormalities": abnormalities,
        "table_rows": [row.ref for row in distinct],
    }


def _film(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["patient_id"], record["laterality"], record["view"]


_CASE_FILM = re.compile(r"^(?:Mass|Calc)-(?:Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)$")


def _without_quarantined_films(records: list[dict[str, Any]], result: IndexResult) -> list[dict[str, Any]]:
    """Quarantine the images of a film whose other table's image is quarantined (``abnormality="both"``).

    A film listed in both tables has all its lesions only when both images are usable: the ``Calc-`` image
    alone would teach the film's mass as background, and the other way round.
    """
    bad = {}
    for entry in result.quarantine:
        match = _CASE_FILM.match(entry["case_id"])
        if match:
            patient, side, view = match.groups()
            bad.setdefault((patient, side[0], view), entry["case_id"])
    kept = []
    for record in records:
        twin = bad.get(_film(record))
        if twin is None or twin == record["case_id"]:
            kept.append(record)
            continue
        result.quarantine_record(
            record["case_id"],
            record["image"],
            f"same patient, side and view as {twin}, which is quarantined: the film's lesions of that table "
            "would be taught as background",
            record["table_rows"],
        )
    return kept


def _deduplicate(records: list[dict[str, Any]], result: IndexResult) -> list[dict[str, Any]]:
    """Drop ``Calc-`` images whose film is also a ``Mass-`` image, moving their masks onto it when sizes match."""
    mass_by_film = {_film(record): record for record in records if record["abnormality"] == "mass"}
    kept = []
    for record in records:
        twin = mass_by_film.get(_film(record)) if record["abnormality"] == "calcification" else None
        if twin is None:
            kept.append(record)
            continue
        if (twin["rows"], twin["columns"]) == (record["rows"], record["columns"]):
            twin["label"] = twin["label"] + record["label"]
            twin["abnormalities"] = twin["abnormalities"] + record["abnormalities"]
            twin["table_rows"] = twin["table_rows"] + record["table_rows"]
            twin["lesion_count"] += record["lesion_count"]
            twin["flags"] = sorted(set(twin["flags"]) | {"calc-masks-from-duplicate"})
            what = "its calcification masks were added to the kept record"
        else:
            twin["flags"] = sorted(set(twin["flags"]) | {"calc-duplicate-not-merged"})
            what = "its masks were not merged: the two images differ in size"
        result.duplicates.append(
            {
                "case_id": record["case_id"],
                "path": record["image"],
                "duplicate_of": twin["case_id"],
                "reason": f"same patient, side and view as {twin['case_id']} (film listed in both tables); {what}",
                "table_rows": record["table_rows"],
            }
        )
    return kept


def index(root: Path, abnormality: str = "mass", check_mask_content: bool = True) -> IndexResult:
    """Index a CBIS-DDSM download.

    Args:
        root: folder holding the description CSVs and the DICOM tree (classic or TCIA), at any depth.
        abnormality: ``"mass"`` (default: the five papers segment masses), ``"calc"`` or ``"both"``.
        check_mask_content: decode every chosen mask and quarantine empty or non-binary ones
            (slower on the real collection; the shape rule is always applied).

    Returns:
        One record per full mammogram (see :mod:`breastseg.workflows.data.records`) with the extra keys
        ``official_split`` (``"train"``/``"test"``), ``abnormality`` and ``abnormalities`` (per row:
        ``abnormality_id``, ``type``, ``mass_shape``/``mass_margins`` or ``calc_type``/``calc_distribution``,
        ``assessment``, ``pathology``, ``subtlety``, ``mask``).

    Raises:
        ValueError: unknown ``abnormality``, a CSV without the expected columns, or a CSV found twice.
        FileNotFoundError: none of the needed CSVs is under ``root``.
    """
    if abnormality not in ABNORMALITY_CHOICES:
        raise ValueError(f"abnormality must be one of {ABNORMALITY_CHOICES}, got {abnormality!r}")
    root = Path(root).absolute()
    tables = ("mass", "calc") if abnormality == "both" else (abnormality,)
    result = IndexResult()
    rows: list[_Row] = []
    bad_films: dict[str, dict[str, Any]] = {}
    for (table, split), path in _find_csvs(root, tables).items():
        rows.extend(_read_csv(path, table, split, result, bad_films))
    disk = _DiskIndex(root)

    by_image: dict[tuple[str, str], list[_Row]] = defaultdict(list)
    for row in rows:
        if row.case_id in bad_films:  # already quarantined whole, with the invalid CSV row named: name this one too
            bad_films[row.case_id]["table_rows"].append(row.ref)
        else:
            by_image[(row.table, row.values["image file path"])].append(row)
    records = []
    for image_rows in by_image.values():
        record = _image_record(image_rows, disk, check_mask_content, result)
        if record is not None:
            records.append(record)
    if abnormality == "both":
        records = _deduplicate(_without_quarantined_films(records, result), result)
    result.records = records
    return result
