"""The datalist record contract shared by every indexer, the splitter and the harness.

A *record* is one image (one mammogram or ultrasound frame) as a plain JSON-able dict:

===================  ==========================================================================
key                  meaning
===================  ==========================================================================
``image``            absolute path of the image file (DICOM or PNG), exactly as found on disk
``label``            where the lesion mask comes from: one path, a list of paths whose masks are
                     OR-ed (CBIS-DDSM abnormality rows, BUSI ``_mask_N``), an INbreast XML path,
                     or ``None`` for an image without lesion (empty mask)
``label_format``     ``"dicom"``, ``"png"``, ``"inbreast-xml"`` or ``"none"``
``case_id``          unique id of the image inside the dataset
``patient_id``       the grouping key for splits (CBIS ``P_00001``, INbreast case token, BUSI /
                     UDIAT image id: those two have no patient ids)
``dataset``          ``cbis-ddsm``, ``inbreast``, ``busi`` or ``udiat``
``modality``         ``"MG"`` or ``"US"``
``laterality``       ``"L"``, ``"R"`` or ``None``
``view``             ``"CC"``, ``"MLO"`` (INbreast ``ML`` is normalised), ``"FB"`` or ``None``
``birads``           BI-RADS / CBIS assessment as a string (``"4a"``, ``"0"``) or ``None``
``acr``              ACR density 1-4, or ``None`` (CBIS density 0 is kept as 0)
``pathology``        ``"malignant"``, ``"benign"``, ``"benign_without_callback"``, ``"normal"`` or ``None``
``subtlety``         CBIS subtlety (0-5) or ``None``
``lesion_count``     number of annotated lesions of the kind indexed (masses by default)
``spacing``          ``[row_mm, col_mm]`` when the file states it, else ``None``
``rows``/``columns`` image size in pixels (from the header, never assumed)
``flags``            list of notes on the record (``"normal"``, ``"mask-crop-swapped"``, ...)
``table_rows``       the rows of the dataset's table the record comes from (see below; ``[]`` for
                     BUSI, which has no table, and an image its table does not list)
===================  ==========================================================================

Indexers may add dataset-specific keys (``official_split``, ``abnormality``, ``mass_shape``...).
Missing values are ``None`` (JSON ``null``), never an empty string or ``"NA"``.

A *quarantine entry* is ``{"case_id": ..., "path": <the file at fault>, "reason": <why>}``: every
record an indexer cannot use is listed, never dropped silently. An *ignored entry* ``{"path", "reason"}``
lists a file or folder inside a dataset's image folders that is no image at all (``.DS_Store``, notes,
sub-folders), so that every file there is indexed, quarantined or ignored by name.

Rows of the datasets' tables (CBIS-DDSM's description CSVs, ``INbreast.csv``, ``DatasetB.xlsx``) are accounted
for the same way: a record, a quarantine entry, a duplicate entry or an ignored entry (a blank row) built from
table rows lists them in ``table_rows`` (``"<file name>:<row>"``, row 1 being the header), so every row of
every table read ends up in one of these places, by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["IndexResult", "quarantine_entry", "table_row", "name_table_rows", "MISSING_TOKENS", "parse_missing"]

#: Cell values that mean "no value" in the datasets' tables.
MISSING_TOKENS = frozenset({"", "NA", "N/A", "NAN", "NONE", "NULL"})


def parse_missing(value: Any) -> Any:
    """Return ``None`` for the tables' missing-value spellings, the stripped string otherwise."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.upper() in MISSING_TOKENS else text


def table_row(table: str | Path, row: int) -> str:
    """How records and entries name a table row: ``"<file name>:<row>"`` (row 1 is the header)."""
    return f"{Path(table).name}:{row}"


def name_table_rows(entries: Iterable[dict[str, Any]], rows_of: Mapping[str, Sequence[str]]) -> None:
    """Give each entry without ``table_rows`` those of its case (``rows_of``: case id -> rows), for entries made by
    steps that know files, not tables (an image quarantined for its pixels, an exact duplicate)."""
    for entry in entries:
        rows = rows_of.get(str(entry.get("case_id")))
        if rows and not entry.get("table_rows"):
            entry["table_rows"] = list(rows)


def quarantine_entry(case_id: str, path: str, reason: str, table_rows: Sequence[str] = ()) -> dict[str, Any]:
    entry: dict[str, Any] = {"case_id": str(case_id), "path": str(path), "reason": reason}
    if table_rows:
        entry["table_rows"] = list(table_rows)
    return entry


@dataclass
class IndexResult:
    """What an indexer returns: usable records, quarantined ones, exact duplicates removed, and files ignored."""

    records: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)

    def quarantine_record(self, case_id: str, path: str, reason: str, table_rows: Sequence[str] = ()) -> dict[str, Any]:
        """Add a quarantine entry (``table_rows``: the table rows it leaves unused) and return it."""
        self.quarantine.append(quarantine_entry(case_id, path, reason, table_rows))
        return self.quarantine[-1]

    def ignore(self, path: str, reason: str, table_rows: Sequence[str] = ()) -> None:
        self.ignored.append({"path": str(path), "reason": reason, **({"table_rows": list(table_rows)} if table_rows else {})})
