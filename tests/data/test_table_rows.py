"""Every row of every table the indexers read (CBIS-DDSM's four description CSVs, ``INbreast.csv``,
``DatasetB.xlsx``) ends up in the datalist: in a record, in ``quarantine`` with its table file and row number, in
``duplicates`` or, blank, in ``ignored``. Each test breaks one row per column the indexer reads, adds a blank, a
repeated and a contradicting row, and runs the real ``breastseg datalist --strict``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from openpyxl import load_workbook

from breastseg.workflows.data.synthetic import generate

from forked_cli import run_breastseg
SPLITS = ("training", "validation", "test")


def datalist_cli(root: Path, dataset: str, out: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = run_breastseg("datalist", "--dataset", dataset, "--root", str(root), "--out", str(out), "--strict", *options)
    return done, json.loads(out.read_text()) if out.is_file() else {}


def named_rows(datalist: dict) -> Counter:
    """``"<file>:<row>"`` -> how many places of the datalist name it."""
    places = [r for name in SPLITS for r in datalist[name]] + datalist["quarantine"] + datalist["duplicates"] + datalist["ignored"]
    return Counter(row for place in places for row in place.get("table_rows", []))


def quarantined_rows(datalist: dict) -> dict[str, str]:
    return {row: entry["reason"] for entry in datalist["quarantine"] for row in entry.get("table_rows", [])}


def csv_refs(path: Path, delimiter: str = ",") -> set[str]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        return {f"{path.name}:{row}" for row in range(2, len(list(csv.reader(stream, delimiter=delimiter))) + 1)}


def assert_every_row_named(datalist: dict, expected: set[str]) -> None:
    named = named_rows(datalist)
    assert expected - set(named) == set(), "rows named nowhere in the datalist"
    assert set(named) - expected == set(), "rows that are not in the tables"


class CsvTable:
    """A CSV read as records (a quoted cell may hold a newline), edited by column name and written back."""

    def __init__(self, path: Path, delimiter: str = ","):
        self.path, self.delimiter = path, delimiter
        with path.open(newline="", encoding="utf-8-sig") as stream:
            self.rows = list(csv.reader(stream, delimiter=delimiter))
        self.header = [" ".join(name.replace("_", " ").split()).lower() for name in self.rows[0]]

    def column(self, name: str) -> int:
        return self.header.index(name)

    def set(self, row: int, column: str, value: str) -> str:
        """Set one cell of table row ``row`` (row 1 is the header); returns the row's name."""
        self.rows[row - 1][self.column(column)] = value
        return f"{self.path.name}:{row}"

    def append(self, cells: list[str]) -> str:
        self.rows.append(list(cells))
        return f"{self.path.name}:{len(self.rows)}"

    def save(self) -> None:
        with self.path.open("w", newline="") as stream:
            csv.writer(stream, delimiter=self.delimiter, lineterminator="\r\n").writerows(self.rows)


@pytest.fixture(scope="module")
def layouts(module_dir):
    roots = {"cbis-ddsm": module_dir / "cbis", "inbreast": module_dir / "inbreast", "udiat": module_dir / "udiat"}
    generate("cbis-ddsm", roots["cbis-ddsm"], cases=20, seed=3)
    generate("inbreast", roots["inbreast"], cases=4, seed=5)
    generate("udiat", roots["udiat"], cases=12, seed=0)
    return roots


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


#: one broken cell per column the CBIS-DDSM indexer reads (the descriptors are free text: any value is kept)
CBIS_FAULTS = {
    "image file path": "",  # the row that vanished (issue 26, item 1)
    "patient id": "P_1",
    "left or right breast": "MIDDLE",
    "image view": "AP",
    "abnormality id": "first",
    "abnormality type": "calcification",
    "assessment": "9",
    "pathology": "UNKNOWN",
    "subtlety": "7",
    "breast density": "5",
    "cropped image file path": "",
    "roi mask file path": "",
}


def test_every_cbis_ddsm_csv_row_is_in_the_datalist_and_a_broken_one_is_quarantined_by_row(layouts, tmp_path):
    root = _copy(layouts["cbis-ddsm"], tmp_path / "cbis")
    csvs = sorted(root.rglob("*_case_description_*_set.csv"))
    assert len(csvs) == 4
    table = CsvTable(root / "mass_case_description_train_set.csv")
    film_of = {row: table.rows[row - 1][table.column("image file path")].split("/")[0] for row in range(2, len(table.rows) + 1)}
    first_row_of_film = {}
    for row, film in film_of.items():
        first_row_of_film.setdefault(film, row)
    rows = iter(sorted(first_row_of_film.values()))  # one film per fault, so that each fault quarantines its own image
    broken = {column: table.set(next(rows), column, value) for column, value in CBIS_FAULTS.items()}
    other_patient = next(rows)
    path = table.rows[other_patient - 1][table.column("image file path")]
    broken["image of another patient"] = table.set(other_patient, "image file path", path.replace("_P_", "_P_9", 1))
    repeated, contradicted = table.rows[next(rows) - 1], table.rows[next(rows) - 1]
    duplicate = table.append(list(repeated))
    pathology = table.column("pathology")
    contradiction = table.append([*contradicted[:pathology], "BENIGN" if contradicted[pathology] == "MALIGNANT" else "MALIGNANT",
                                  *contradicted[pathology + 1:]])
    blank = table.append([""] * len(table.header))
    table.save()

    done, datalist = datalist_cli(root, "cbis-ddsm", tmp_path / "cbis.json", "--abnormality", "both")
    assert done.returncode == 3, done.stderr[-2000:]
    assert_every_row_named(datalist, set().union(*(csv_refs(path) for path in csvs)))
    quarantined = quarantined_rows(datalist)
    for column, row in broken.items():
        assert row in quarantined, f"{column}: {row} not quarantined"
    assert "image file path is empty" in quarantined[broken["image file path"]]
    assert "abnormality type 'calcification' is not 'mass'" in quarantined[broken["abnormality type"]]
    assert "image file path names 'Mass-Training_P_9" in quarantined[broken["image of another patient"]]
    assert "describe abnormality" in quarantined[contradiction] and "differently" in quarantined[contradiction]
    [entry] = [d for d in datalist["duplicates"] if duplicate in d.get("table_rows", [])]
    assert "cell for cell" in entry["reason"]
    assert [e["reason"] for e in datalist["ignored"] if blank in e.get("table_rows", [])] == [f"row {blank.split(':')[1]} is blank"]
    used = [r for name in SPLITS for r in datalist[name]]
    assert used and all(r["table_rows"] for r in used)
    assert all(r["lesion_count"] == len(r["label"]) for r in used)  # the repeated row is counted once


def test_every_inbreast_table_row_is_in_the_datalist_and_a_broken_one_is_quarantined_by_row(layouts, tmp_path):
    root = _copy(layouts["inbreast"], tmp_path / "inbreast")
    [path] = root.rglob("INbreast.csv")
    table = CsvTable(path, delimiter=";")
    broken = {
        "laterality": table.set(2, "laterality", "X"),
        "view": table.set(3, "view", "AP"),
        "acr": table.set(4, "acr", "9"),
        "bi-rads": table.set(5, "bi-rads", "7"),
        "file name": table.set(6, "file name", ""),
        "file name not a number": table.set(7, "file name", "case7"),
    }
    duplicate = table.append(list(table.rows[7]))
    contradiction = table.append([*table.rows[8][:table.column("acr")], "4" if table.rows[8][table.column("acr")] != "4" else "3",
                                  *table.rows[8][table.column("acr") + 1:]])
    blank = table.append([""] * len(table.header))
    table.save()

    done, datalist = datalist_cli(root, "inbreast", tmp_path / "inbreast.json")
    assert done.returncode == 3, done.stderr[-2000:]
    assert_every_row_named(datalist, csv_refs(path, ";"))
    quarantined = quarantined_rows(datalist)
    for column, row in broken.items():
        assert row in quarantined, f"{column}: {row} not quarantined"
    assert "bi-rads '7' is not" in quarantined[broken["bi-rads"]]
    assert "has no 8-digit File Name" in quarantined[broken["file name"]]
    assert "differently" in quarantined[contradiction] and "INbreast.csv:9" in [
        row for entry in datalist["quarantine"] if contradiction in entry.get("table_rows", []) for row in entry["table_rows"]]
    assert any(duplicate in d.get("table_rows", []) for d in datalist["duplicates"])
    assert any(blank in e.get("table_rows", []) for e in datalist["ignored"])


def test_every_udiat_sheet_row_is_in_the_datalist_and_a_broken_one_is_quarantined_by_row(layouts, tmp_path):
    root = _copy(layouts["udiat"], tmp_path / "udiat")
    [path] = root.rglob("DatasetB.xlsx")
    book = load_workbook(path)
    sheet = book.worksheets[0]
    header = [str(cell.value).strip().lower() for cell in sheet[1]]
    image, kind = header.index("image") + 1, header.index("type") + 1
    sheet.cell(row=2, column=image).value = None  # a row whose image is blank, its label given (value=None sets nothing)
    sheet.cell(row=3, column=image, value="third")
    sheet.cell(row=4, column=kind, value="Unknown")
    repeated = [cell.value for cell in sheet[5]]
    contradicted = [cell.value for cell in sheet[6]]
    contradicted[kind - 1] = "Malignant" if str(contradicted[kind - 1]).lower() == "benign" else "Benign"
    sheet.append([None] * len(header))
    sheet.append(repeated)
    sheet.append(contradicted)
    book.save(path)
    rows = sheet.max_row
    name = path.name
    broken = {"image blank": f"{name}:2", "image not an integer": f"{name}:3", "type": f"{name}:4"}

    done, datalist = datalist_cli(root, "udiat", tmp_path / "udiat.json")
    assert done.returncode == 3, done.stderr[-2000:]
    assert len(pd.read_excel(path, dtype=object)) == rows - 1
    assert_every_row_named(datalist, {f"{name}:{row}" for row in range(2, rows + 1)})
    quarantined = quarantined_rows(datalist)
    for what, row in broken.items():
        assert row in quarantined, f"{what}: {row} not quarantined"
    assert "Type 'Unknown' is not Benign or Malignant" in quarantined[f"{name}:4"]
    assert f"{name}:{rows}" in quarantined and "differently" in quarantined[f"{name}:{rows}"]
    assert any(f"{name}:{rows - 1}" in d.get("table_rows", []) for d in datalist["duplicates"])
    assert any(f"{name}:{rows - 2}" in e.get("table_rows", []) for e in datalist["ignored"])
