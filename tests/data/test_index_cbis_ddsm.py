"""CBIS-DDSM indexer on generated layouts (cases=6: patients P_00001..P_00036 carry the traps).

Expected counts for cases=6 follow from the generator's rules: 11 mass films with 13 masses (the CC
views of P_00008 and P_00029 have two), P_00022 MLO has a mask of another size (quarantined);
5 calc images (2 calc-only patients, the first with CC+MLO, plus the 2 duplicated films).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pydicom

from breastseg.workflows.data.indexers import index_dataset
from breastseg.workflows.data.synthetic.cbis_ddsm import generate


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def by_case(result) -> dict[str, dict]:
    return {record["case_id"]: record for record in result.records}


class CbisFixture(unittest.TestCase):
    tree = "tcia"

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.root = cls.tmp / "cbis"
        generate(cls.root, cases=6, seed=3, rows=128, tree=cls.tree)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)


class TestMassIndex(CbisFixture):
    def test_exact_counts_and_quarantine(self):
        result = index_dataset("cbis-ddsm", self.root)
        self.assertEqual(len(result.records), 10)
        self.assertEqual(sum(r["lesion_count"] for r in result.records), 12)
        self.assertEqual(len({r["patient_id"] for r in result.records}), 6)
        self.assertEqual(result.duplicates, [])
        self.assertEqual(len(result.quarantine), 1)
        entry = result.quarantine[0]
        self.assertEqual(entry["case_id"], "Mass-Training_P_00022_RIGHT_MLO")
        self.assertIn("never resized", entry["reason"])
        self.assertTrue(Path(entry["path"]).is_file(), "the quarantine entry names the mask file on disk")

    def test_record_contract(self):
        records = by_case(index_dataset("cbis-ddsm", self.root))
        first = records["Mass-Training_P_00001_LEFT_CC"]
        self.assertEqual(first["patient_id"], "P_00001")
        self.assertEqual((first["dataset"], first["modality"], first["laterality"], first["view"]), ("cbis-ddsm", "MG", "L", "CC"))
        self.assertEqual((first["label_format"], first["official_split"], first["abnormality"]), ("dicom", "train", "mass"))
        self.assertEqual(first["subtlety"], 0)  # P_00710-style row: subtlety 0 kept, NA shape/margins -> None
        self.assertIsNone(first["abnormalities"][0]["mass_shape"])
        self.assertIsNone(first["abnormalities"][0]["mass_margins"])
        self.assertIsNone(first["spacing"])  # CBIS headers state no spacing
        header = pydicom.dcmread(first["image"], stop_before_pixels=True)
        self.assertEqual((first["rows"], first["columns"]), (header.Rows, header.Columns))
        self.assertEqual(records["Mass-Test_P_00015_LEFT_CC"]["official_split"], "test")

    def test_all_masks_of_an_image_are_listed_and_valid(self):
        record = by_case(index_dataset("cbis-ddsm", self.root))["Mass-Training_P_00008_RIGHT_CC"]
        self.assertEqual(record["lesion_count"], 2)
        self.assertEqual(len(set(record["label"])), 2)
        union = np.zeros((record["rows"], record["columns"]), dtype=bool)
        for path in record["label"]:
            pixels = pydicom.dcmread(path).pixel_array
            self.assertEqual(pixels.shape, union.shape)
            self.assertEqual(set(np.unique(pixels)), {0, 255})
            union |= pixels > 0
        self.assertGreater(union.sum(), 0)

    def test_masks_in_another_series_are_found(self):
        record = by_case(index_dataset("cbis-ddsm", self.root))["Mass-Training_P_00008_RIGHT_MLO"]
        mask = pydicom.dcmread(record["label"][0], stop_before_pixels=True)
        self.assertEqual(mask.SeriesDescription, "ROI mask images")
        siblings = list(Path(record["label"][0]).parent.glob("*.dcm"))
        self.assertEqual(len(siblings), 1, "the crop lives in another series")

    def test_swap_rule_by_shape(self):
        records = by_case(index_dataset("cbis-ddsm", self.root))
        swapped = [case for case, record in records.items() if "mask-crop-swapped" in record["flags"]]
        self.assertEqual(swapped, ["Mass-Test_P_00015_LEFT_CC"])
        record = records["Mass-Test_P_00015_LEFT_CC"]
        pixels = pydicom.dcmread(record["label"][0]).pixel_array
        self.assertEqual(pixels.shape, (record["rows"], record["columns"]))

    def test_reading_changes_no_file(self):
        before = snapshot(self.root)
        for abnormality in ("mass", "calc", "both"):
            index_dataset("cbis-ddsm", self.root, abnormality=abnormality)
        self.assertEqual(snapshot(self.root), before)


class TestCalcAndBoth(CbisFixture):
    def test_calc_table(self):
        result = index_dataset("cbis-ddsm", self.root, abnormality="calc")
        records = by_case(result)
        self.assertEqual(len(records), 5)
        self.assertEqual(result.quarantine, [])
        self.assertEqual(len({r["patient_id"] for r in records.values()}), 4)
        density_zero = [case for case, r in records.items() if r["acr"] == 0]
        self.assertEqual(density_zero, ["Calc-Test_P_00043_LEFT_CC", "Calc-Test_P_00043_LEFT_MLO"])
        self.assertEqual(records["Calc-Test_P_00043_LEFT_CC"]["abnormalities"][0]["type"], "calcification")
        self.assertIn("calc_type", records["Calc-Test_P_00043_LEFT_CC"]["abnormalities"][0])

    def test_both_tables_deduplicate_films(self):
        result = index_dataset("cbis-ddsm", self.root, abnormality="both")
        records = by_case(result)
        self.assertEqual(len(records), 13)
        self.assertEqual(sum(r["lesion_count"] for r in records.values()), 17)
        removed = sorted(entry["case_id"] for entry in result.duplicates)
        self.assertEqual(removed, ["Calc-Test_P_00036_RIGHT_CC", "Calc-Training_P_00029_LEFT_CC"])
        kept = records["Mass-Training_P_00029_LEFT_CC"]
        self.assertEqual((kept["lesion_count"], len(kept["label"])), (3, 3))
        self.assertIn("calc-masks-from-duplicate", kept["flags"])
        self.assertNotIn("Calc-Test_P_00036_RIGHT_CC", records)

    def test_bad_options(self):
        with self.assertRaisesRegex(ValueError, "abnormality"):
            index_dataset("cbis-ddsm", self.root, abnormality="masses")
        with self.assertRaises(FileNotFoundError):
            index_dataset("cbis-ddsm", self.tmp / "nowhere")
        empty = self.tmp / "empty"
        empty.mkdir()
        with self.assertRaisesRegex(FileNotFoundError, "mass_case_description_train_set.csv"):
            index_dataset("cbis-ddsm", empty)


class TestClassicTree(CbisFixture):
    tree = "classic"

    def test_same_records_as_the_tcia_tree(self):
        classic = index_dataset("cbis-ddsm", self.root, abnormality="both")
        tcia_root = self.tmp / "tcia"
        generate(tcia_root, cases=6, seed=3, rows=128, tree="tcia")
        tcia = index_dataset("cbis-ddsm", tcia_root, abnormality="both")

        def strip_paths(result):
            drop = ("image", "label", "abnormalities")
            return sorted((sorted((k, str(v)) for k, v in r.items() if k not in drop) for r in result.records))

        self.assertEqual(strip_paths(classic), strip_paths(tcia))
        self.assertEqual(len(classic.records), 13)
        image = Path(by_case(classic)["Mass-Training_P_00001_LEFT_CC"]["image"])
        self.assertEqual(image.name, "000000.dcm")  # the classic tree is the CSV path itself

    def test_older_na_spelling(self):
        root = self.tmp / "older"
        generate(root, cases=6, seed=3, rows=128, tree="classic", missing_token="N/A")
        self.assertIn(b",N/A,N/A,", (root / "mass_case_description_train_set.csv").read_bytes())
        record = by_case(index_dataset("cbis-ddsm", root))["Mass-Training_P_00001_LEFT_CC"]
        self.assertIsNone(record["abnormalities"][0]["mass_shape"])


class TestBadInput(CbisFixture):
    def setUp(self):
        self.copy = Path(tempfile.mkdtemp()) / "cbis"
        shutil.copytree(self.root, self.copy)
        self.records = by_case(index_dataset("cbis-ddsm", self.copy))

    def tearDown(self):
        shutil.rmtree(self.copy.parent)

    def quarantined(self) -> dict[str, dict]:
        return {entry["case_id"]: entry for entry in index_dataset("cbis-ddsm", self.copy).quarantine}

    def test_truncated_image(self):
        image = Path(self.records["Mass-Training_P_00001_LEFT_CC"]["image"])
        image.write_bytes(image.read_bytes()[:-100])
        entry = self.quarantined()["Mass-Training_P_00001_LEFT_CC"]
        self.assertIn("truncated", entry["reason"])
        self.assertIn(str(image), entry["reason"])

    def test_unreadable_image(self):
        image = Path(self.records["Mass-Training_P_00001_LEFT_MLO"]["image"])
        image.write_bytes(b"not a dicom file at all")
        entry = self.quarantined()["Mass-Training_P_00001_LEFT_MLO"]
        self.assertIn("unreadable DICOM", entry["reason"])
        self.assertIn(str(image), entry["reason"])

    def test_missing_mask(self):
        mask = Path(self.records["Mass-Training_P_00008_RIGHT_MLO"]["label"][0])
        mask.unlink()
        entry = self.quarantined()["Mass-Training_P_00008_RIGHT_MLO"]
        self.assertIn("no DICOM file of series", entry["reason"])

    def test_empty_mask(self):
        mask_path = Path(self.records["Mass-Training_P_00036_RIGHT_CC"]["label"][0])
        ds = pydicom.dcmread(mask_path)
        ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
        ds.save_as(mask_path)
        entry = self.quarantined()["Mass-Training_P_00036_RIGHT_CC"]
        self.assertEqual(entry["path"], str(mask_path))
        self.assertIn("empty", entry["reason"])

    def test_bad_csv_row(self):
        csv_path = self.copy / "mass_case_description_test_set.csv"
        data = csv_path.read_bytes().replace(b",LEFT,CC,", b",LEFT,XCC,", 1)
        csv_path.write_bytes(data)
        entries = [e for e in index_dataset("cbis-ddsm", self.copy).quarantine if e["path"] == str(csv_path)]
        self.assertEqual(len(entries), 1)
        self.assertRegex(entries[0]["reason"], r"row 2: image view 'XCC'")

    def edit_csv_row(self, name: str, case_id: str, abnormality_id: str, column: str, value: str) -> Path:
        """Set one cell of the row of ``case_id``'s abnormality ``abnormality_id``, keeping the CSV's bytes otherwise."""
        csv_path = self.copy / name
        with csv_path.open(newline="") as stream:
            rows = list(csv.reader(stream))
        header = rows[0]
        [row] = [row for row in rows[1:] if row[header.index("image file path")].startswith(case_id + "/")
                 and row[header.index("abnormality id")] == abnormality_id]
        row[header.index(column)] = value
        with csv_path.open("w", newline="") as stream:
            csv.writer(stream, lineterminator="\r\n").writerows(rows)
        return csv_path

    def test_an_image_with_a_lesion_row_without_mask_is_quarantined_whole(self):
        # two masses; the second row's ROI path is blank: one lesion alone would teach the other as background
        case = "Mass-Training_P_00008_RIGHT_CC"
        self.assertEqual(self.records[case]["lesion_count"], 2)
        csv_path = self.edit_csv_row("mass_case_description_train_set.csv", case, "2", "ROI mask file path", "")
        result = index_dataset("cbis-ddsm", self.copy)
        self.assertNotIn(case, list(by_case(result)))
        [entry] = [e for e in result.quarantine if e["case_id"] == case]
        self.assertEqual(entry["path"], str(csv_path))
        self.assertRegex(entry["reason"], r"row \d+: roi mask file path is empty")
        self.assertIn(f"image {case} quarantined whole", entry["reason"])
        self.assertEqual(len(result.records), len(self.records) - 1)

    def test_a_row_without_image_path_quarantines_its_film_by_patient_side_and_view(self):
        case = "Mass-Training_P_00008_RIGHT_CC"
        self.edit_csv_row("mass_case_description_train_set.csv", case, "1", "image file path", "")
        result = index_dataset("cbis-ddsm", self.copy)
        self.assertNotIn(case, list(by_case(result)))
        [entry] = [e for e in result.quarantine if e["case_id"] == case]
        self.assertIn("image file path is empty", entry["reason"])

    def test_both_tables_quarantine_the_twin_of_a_quarantined_film(self):
        # P_00029 LEFT CC is listed as a Mass- and a Calc- series: without the mass row, the calc image alone
        # would teach the mass as background (and the other way round for P_00036 RIGHT CC)
        self.edit_csv_row("mass_case_description_train_set.csv", "Mass-Training_P_00029_LEFT_CC", "1", "ROI mask file path", "")
        self.edit_csv_row("calc_case_description_test_set.csv", "Calc-Test_P_00036_RIGHT_CC", "1", "ROI mask file path", "")
        result = index_dataset("cbis-ddsm", self.copy, abnormality="both")
        quarantined = {entry["case_id"]: entry["reason"] for entry in result.quarantine}
        for case, twin in (("Calc-Training_P_00029_LEFT_CC", "Mass-Training_P_00029_LEFT_CC"),
                           ("Mass-Training_P_00036_RIGHT_CC", "Calc-Test_P_00036_RIGHT_CC")):
            self.assertIn(twin, quarantined)
            self.assertIn(f"same patient, side and view as {twin}", quarantined[case])
            self.assertNotIn(case, by_case(result))
        self.assertEqual(result.duplicates, [])
        self.assertEqual(len(result.records), 13 - 2)

    def test_csv_without_expected_columns(self):
        csv_path = self.copy / "mass_case_description_train_set.csv"
        csv_path.write_bytes(csv_path.read_bytes().replace(b"mass margins", b"margin", 1))
        with self.assertRaisesRegex(ValueError, r"mass_case_description_train_set\.csv.*mass margins"):
            index_dataset("cbis-ddsm", self.copy)


if __name__ == "__main__":
    unittest.main()
