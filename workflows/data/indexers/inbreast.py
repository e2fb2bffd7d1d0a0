"""INbreast indexer: ``AllDICOMs/`` + ``AllXML/`` + ``INbreast.csv`` -> one record per image.

Rules (``shared/notes/datasets.md`` (beside the repository) section 2):

* Images are ``AllDICOMs/<FileName>_<16-hex case token>_MG_<L|R>_<CC|ML>_ANON.dcm``; the case token is
  ``patient_id`` (the table's patient column is ``removed``), ``FileName`` is ``case_id``.
* ``INbreast.csv`` (``;``, CRLF or LF) gives laterality, view (``MLO`` where the file name says ``ML``),
  ACR (a blank or space-only cell is missing) and BI-RADS (a string: ``4a``...). ``INbreast.xls`` is
  never opened: its second sheet holds patient data.
* ``<FileName>.xml`` anywhere under the release, except folders whose name contains "pectoral", is
  the image's annotation; an image without XML is normal (``label`` None, flag ``normal``) only when its
  BI-RADS says there is no finding (1 or 2, or not given).
* Image size comes from the DICOM header (two plate sizes exist), never from a constant.

Bad input and what happens to it:

* quarantined (the record is unusable): unreadable or truncated DICOM, a file name not in the release
  pattern, an unreadable XML or one whose ``NumberOfPoints`` is wrong, a selected ROI that covers no
  pixel of the image, an XML or table row without its DICOM, two DICOMs with one ``FileName``, an image
  without XML whose BI-RADS reports a finding (3 or more: its lesion would be taught as background), a table
  row with an invalid cell (laterality, view, ACR, BI-RADS: a BI-RADS that cannot be read cannot tell a normal
  image from an unannotated finding) or without a file name, and two different rows for one image;
* flagged (the record stays usable, a warning names the file): ``xml-points-outside-image`` (points
  are clipped, as in every public parser), ``unknown-roi-name`` (those ROIs are not drawn),
  ``not-in-table``, ``table-name-mismatch`` (table and file name disagree on side or view; the table wins).

Every table row ends up in a record, a quarantine entry, ``duplicates`` (a row repeating another, cell for
cell) or ``ignored`` (a blank row), named in their ``table_rows``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breastseg.transforms.io.inbreast_xml import (
    ROI_KINDS,
    points_outside,
    rasterize_inbreast_rois,
    read_inbreast_rois,
)
from breastseg.workflows.data.indexers._dicom_header import DicomHeader, read_header
from breastseg.workflows.data.records import IndexResult, parse_missing, table_row

__all__ = ["DICOM_NAME", "TABLE_NAME", "index"]

#: INbreast's detector pixel (Siemens MammoNovation, 70 µm): used when a DICOM states no spacing
NOMINAL_SPACING_MM = (0.07, 0.07)

logger = logging.getLogger(__name__)

#: ``<FileName>_<case token>_MG_<side>_<view>_ANON.dcm``
DICOM_NAME = re.compile(r"^(?P<file>\d{8})_(?P<token>[0-9a-fA-F]{16})_MG_(?P<side>[LR])_(?P<view>CC|ML|MLO|FB)_ANON\.dcm$")
TABLE_NAME = "INbreast.csv"
_TABLE_COLUMNS = ("laterality", "view", "acquisition date", "file name", "acr", "bi-rads")
_BIRADS = re.compile(r"^[0-6][abc]?$")
_FILE_NAME = re.compile(r"^\d{8}$")
_SIDES, _VIEWS = ("L", "R"), ("CC", "ML", "MLO", "FB")
#: the lowest BI-RADS category that reports a finding to follow up (3 probably benign ... 6 known cancer)
FINDING_BIRADS = 3


def _find_release(root: Path) -> Path:
    if (root / "AllDICOMs").is_dir():
        return root
    found = sorted(path.parent for path in root.rglob("AllDICOMs") if path.is_dir())
    if len(found) != 1:
        detail = "none" if not found else ", ".join(str(path) for path in found)
        raise FileNotFoundError(f"expected one INbreast release folder holding AllDICOMs/ under {root}, found {detail}")
    return found[0]


def _cell_problem(row: dict[str, str | None]) -> str:
    """The first cell of a table row that is neither missing nor valid, in words; "" when every cell is usable."""
    checks = (("laterality", lambda v: v.upper() in _SIDES, "L or R"), ("view", lambda v: v.upper() in _VIEWS, "CC, MLO, ML or FB"),
              ("acr", lambda v: _parse_acr(v) is not None, "1 to 4"), ("bi-rads", lambda v: _BIRADS.match(v.lower()), "0 to 6, 4a/4b/4c"))
    for column, valid, expected in checks:
        value = row.get(column)
        if value is not None and not valid(value):
            return f"{column} {value!r} is not {expected}"
    return ""


@dataclass
class _TableRow:
    line: int
    cells: dict[str, str | None]
    ref: str


def _read_table(path: Path, result: IndexResult) -> tuple[dict[str, _TableRow], set[str]]:
    """``(file name -> its row, file names refused)``. A blank row is ignored and a row without a usable file name
    quarantined, by row; an image whose row has an invalid cell, or whose rows differ, is refused (quarantined with
    all its rows); a row repeating another cell for cell is a duplicate."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    lines = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    if not lines:
        raise ValueError(f"{path}: empty table")
    header = [" ".join(name.split()).lower() for name in lines[0]]
    missing = [column for column in _TABLE_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; header is {lines[0]}")
    rows_of: dict[str, list[_TableRow]] = {}
    for line, cells in enumerate(lines[1:], start=2):
        ref = table_row(path, line)
        if not any(cell.strip() for cell in cells):
            result.ignore(str(path), f"row {line} is blank", [ref])
            continue
        row = {name: parse_missing(cell) for name, cell in zip(header, cells)}
        file_name = (row.get("file name") or "").split(".")[0]  # spreadsheet exports may write 20586908.0
        if any(cell.strip() for cell in cells[len(header):]) or not _FILE_NAME.match(file_name):
            problem = f"has {len(cells)} fields, expected {len(header)}" if len(cells) > len(header) else \
                f"has no 8-digit File Name ({row.get('file name')!r})"
            result.quarantine_record(ref, str(path), f"{TABLE_NAME} row {line} {problem}: which image it describes is "
                                     "unknown; fix the row", [ref])
            continue
        rows_of.setdefault(file_name, []).append(_TableRow(line, row, ref))
    table: dict[str, _TableRow] = {}
    refused: set[str] = set()
    for file_name, listed in rows_of.items():
        first, lines_of = listed[0], " and ".join(str(row.line) for row in listed)
        problems = [f"row {row.line}: {problem}" for row in listed if (problem := _cell_problem(row.cells))]
        if problems or any(row.cells != first.cells for row in listed[1:]):
            why = "; ".join(problems) or f"rows {lines_of} describe image {file_name} differently"
            result.quarantine_record(file_name, str(path), f"{TABLE_NAME} {why}; fix the table", [row.ref for row in listed])
            refused.add(file_name)
            continue
        table[file_name] = first
        for row in listed[1:]:
            result.duplicates.append({"case_id": file_name, "path": str(path), "duplicate_of": file_name, "table_rows": [row.ref],
                                      "reason": f"{TABLE_NAME} row {row.line} repeats row {first.line} cell for cell; used once"})
    return table, refused


def _parse_acr(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        acr = int(float(value))
    except ValueError:
        return None
    return acr if 1 <= acr <= 4 else None


def _label_fields(xml: Path, shape: tuple[int, int], kinds: tuple[str, ...], flags: list[str]) -> tuple[int, str]:
    """Validate one XML against its image; return ``(lesion_count, reason)`` with reason "" when usable."""
    try:
        rois = read_inbreast_rois(xml)
    except ValueError as error:
        return 0, str(error)
    selected = [roi for roi in rois if roi.kind in kinds]
    for number, roi in enumerate(selected):
        if not rasterize_inbreast_rois([roi], shape, kinds=(roi.kind,)).any():
            return 0, f"{xml}: {roi.kind} ROI {roi.name!r} (#{number}) covers no pixel of the {shape[0]}x{shape[1]} image"
    outside = points_outside(rois, shape)
    if outside:
        flags.append("xml-points-outside-image")
        names = sorted({point.name for point in outside})
        logger.warning("%s: %d point(s) of ROI(s) %s lie outside the %dx%d image; clipped", xml, len(outside), names, *shape)
    unknown = sorted({roi.name for roi in rois if roi.kind == "unknown"})
    if unknown:
        flags.append("unknown-roi-name")
        logger.warning("%s: ROI name(s) %s are not a known lesion kind; not drawn", xml, unknown)
    return len(selected), ""


def _annotations(release: Path, result: IndexResult) -> dict[str, Path]:
    xmls: dict[str, Path] = {}
    for path in sorted(release.rglob("*.xml")):
        if any("pectoral" in part.lower() for part in path.relative_to(release).parts[:-1]):
            continue
        if path.stem in xmls:
            result.quarantine_record(path.stem, str(path), f"a second annotation for {path.stem} (first: {xmls[path.stem]})")
            continue
        xmls[path.stem] = path
    return xmls


def index(root: Path, roi_kinds: tuple[str, ...] | list[str] = ("mass",)) -> IndexResult:
    """Index an INbreast release.

    Args:
        root: the release folder (holding ``AllDICOMs/``) or a folder above it.
        roi_kinds: the lesion kinds that make the label (``mass`` by default; see
            :data:`~breastseg.transforms.io.inbreast_xml.ROI_KINDS`); ``lesion_count`` counts ROIs of these kinds.

    Returns:
        One record per DICOM (see :mod:`breastseg.workflows.data.records`); annotated records carry
        ``label`` = the XML path, ``label_format`` ``"inbreast-xml"`` and ``roi_kinds`` (what to draw),
        and every record ``acquisition_date`` (``YYYYMM`` from the table).

    Raises:
        ValueError: unknown ``roi_kinds`` or a table without the expected columns.
        FileNotFoundError: no ``AllDICOMs/`` folder or no ``INbreast.csv``.
    """
    kinds = tuple(roi_kinds)
    if not kinds or set(kinds) - set(ROI_KINDS):
        raise ValueError(f"roi_kinds must be a non-empty subset of {ROI_KINDS}, got {roi_kinds!r}")
    release = _find_release(Path(root).absolute())
    table_path = release / TABLE_NAME
    if not table_path.is_file():
        raise FileNotFoundError(f"{TABLE_NAME} not found in {release}")
    result = IndexResult()
    table, refused = _read_table(table_path, result)
    xmls = _annotations(release, result)

    seen: dict[str, Path] = {}
    for path in sorted((release / "AllDICOMs").glob("*.dcm")):
        match = DICOM_NAME.match(path.name)
        if match is None:
            result.quarantine_record(path.stem, str(path), "file name is not <FileName>_<16-hex>_MG_<L|R>_<CC|ML>_ANON.dcm")
            continue
        file_name = match["file"]
        if file_name in seen:
            result.quarantine_record(file_name, str(path), f"another DICOM has FileName {file_name}: {seen[file_name]}")
            continue
        seen[file_name] = path
        if file_name in refused:
            continue  # quarantined with its table row
        try:
            header = read_header(path)
        except ValueError as error:
            result.quarantine_record(file_name, str(path), str(error))
            continue
        record = _record(path, match, header, table.get(file_name), xmls.get(file_name), kinds, result)
        if record is not None:
            result.records.append(record)

    for file_name, xml in xmls.items():
        if file_name not in seen:
            result.quarantine_record(file_name, str(xml), "annotation without a DICOM in AllDICOMs")
    for file_name, row in table.items():
        if file_name not in seen:
            result.quarantine_record(file_name, str(table_path), f"listed in {TABLE_NAME} (row {row.line}) but no DICOM in AllDICOMs",
                                     [row.ref])
    return result


def _record(
    path: Path,
    match: re.Match[str],
    header: DicomHeader,
    listed: _TableRow | None,
    xml: Path | None,
    kinds: tuple[str, ...],
    result: IndexResult,
) -> dict[str, Any] | None:
    file_name = match["file"]
    name_side, name_view = match["side"], "MLO" if match["view"] == "ML" else match["view"]
    flags: list[str] = []
    row = listed.cells if listed else None
    if row is None:
        flags.append("not-in-table")
        side, view = name_side, name_view
    else:
        side, view = (row.get("laterality") or name_side).upper(), (row.get("view") or name_view).upper()
        view = "MLO" if view == "ML" else view
        if (side, view) != (name_side, name_view):
            flags.append("table-name-mismatch")
    birads = (row or {}).get("bi-rads")
    birads = birads.lower() if birads and _BIRADS.match(birads.lower()) else None
    if header.spacing is None:
        flags = flags + ["spacing-nominal"]
    record = {
        "image": str(path),
        "label": None,
        "label_format": "none",
        "case_id": file_name,
        "patient_id": match["token"].lower(),
        "dataset": "inbreast",
        "modality": "MG",
        "laterality": side,
        "view": view,
        "birads": birads,
        "acr": _parse_acr((row or {}).get("acr")),
        "pathology": None,
        "subtlety": None,
        "lesion_count": 0,
        "spacing": header.spacing or NOMINAL_SPACING_MM,
        "default_spacing": list(NOMINAL_SPACING_MM),
        "rows": header.rows,
        "columns": header.columns,
        "flags": flags,
        "acquisition_date": (row or {}).get("acquisition date"),
        "table_rows": [listed.ref] if listed else [],
    }
    if xml is None:
        if birads is not None and int(birads[0]) >= FINDING_BIRADS:
            result.quarantine_record(
                file_name, str(path), f"BI-RADS {birads} reports a finding but there is no annotation {file_name}.xml; "
                "not trusted as normal (its lesion would be taught as background): add the XML or leave the image out"
            )
            return None
        record.update(pathology="normal", flags=sorted(flags + ["normal"]))
        return record
    count, reason = _label_fields(xml, header.shape, kinds, flags)
    if reason:
        result.quarantine_record(file_name, str(xml), reason)
        return None
    record.update(label=str(xml), label_format="inbreast-xml", lesion_count=count, roi_kinds=list(kinds), flags=sorted(flags))
    return record
