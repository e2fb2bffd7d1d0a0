"""UDIAT Dataset B indexer on a generated layout (8 images, seed 0) and copies with planted faults.

In the 8-image layout images 3 and 6 are malignant, image 8 is a rescaled re-export of image 1 (benign, like it), and
GT 4 and 8 have grey (anti-aliased) margins.
"""

from __future__ import annotations

import hashlib
import shutil
import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from openpyxl import Workbook, load_workbook
from PIL import Image

from breastseg.workflows.data.indexers import index_dataset
from breastseg.workflows.data.indexers.udiat import read_labels
from breastseg.workflows.data.records import IndexResult
from breastseg.workflows.data.synthetic import generate

torch.set_num_threads(1)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


class TestIndexUdiat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = TemporaryDirectory()
        cls.out = Path(cls._tmp.name) / "udiat"
        cls.summary = generate("udiat", cls.out, cases=8, seed=0)
        cls.base = cls.out / "Dataset_B"

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def faulty_copy(self, folder_name: str = "Dataset_B") -> Path:
        self._copy = TemporaryDirectory()
        self.addCleanup(self._copy.cleanup)
        target = Path(self._copy.name) / folder_name
        shutil.copytree(self.base, target)
        return target

    def test_exact_counts_and_xlsx_labels(self):
        self.assertEqual((self.summary["benign"], self.summary["malignant"]), (6, 2))
        result = index_dataset("udiat", self.out)
        self.assertEqual((len(result.records), result.quarantine, result.duplicates), (8, [], []))
        records = {r["case_id"]: r for r in result.records}
        self.assertEqual(sorted(records), [f"{n:06d}" for n in range(1, 9)])
        self.assertEqual({c for c, r in records.items() if r["pathology"] == "malignant"}, {"000003", "000006"})
        self.assertEqual({c for c, r in records.items() if "gt-not-binary" in r["flags"]}, {"000004", "000008"})
        sheet = load_workbook(self.base / "DatasetB.xlsx").active
        written = {f"{row[0]:06d}": row[2] for row in sheet.iter_rows(min_row=2, values_only=True)}
        self.assertEqual({c: r["diagnosis"] for c, r in records.items()}, written)
        record = records["000004"]
        self.assertEqual(Path(record["label"]).parent.name, "GT")
        self.assertEqual((record["label_format"], record["patient_id"], record["lesion_count"]), ("png", "000004", 1))
        with Image.open(record["image"]) as image:
            self.assertEqual((record["columns"], record["rows"]), image.size)
        grey = np.unique(np.asarray(Image.open(record["label"])))
        self.assertTrue(set(grey.tolist()) - {0, 255})

    def test_root_may_be_dataset_b_its_parent_or_bus(self):
        reference = index_dataset("udiat", self.base).records
        self.assertEqual(index_dataset("udiat", self.out).records, reference)
        bus = self.faulty_copy("BUS")
        from_bus = index_dataset("udiat", bus.parent).records
        self.assertEqual([r["case_id"] for r in from_bus], [r["case_id"] for r in reference])
        with self.assertRaisesRegex(FileNotFoundError, "not a UDIAT Dataset B folder"):
            index_dataset("udiat", self.base / "GT")

    def test_missing_xlsx_gives_no_pathology(self):
        base = self.faulty_copy()
        (base / "DatasetB.xlsx").unlink()
        result = index_dataset("udiat", base)
        self.assertEqual(len(result.records), 8)
        self.assertTrue(all(r["pathology"] is None and r["diagnosis"] is None for r in result.records))
        self.assertFalse(any("not-in-xlsx" in r["flags"] for r in result.records))

    def test_missing_gt_orphan_gt_size_mismatch_empty_gt_and_sheet_row_are_quarantined(self):
        base = self.faulty_copy()
        (base / "GT" / "000002.png").unlink()
        (base / "original" / "000005.png").unlink()
        (base / "original" / "000007.png").unlink()
        (base / "GT" / "000007.png").unlink()
        gt = base / "GT" / "000003.png"
        with Image.open(gt) as image:
            image.resize((image.width, image.height - 2)).save(gt)
        Image.new("L", Image.open(base / "GT" / "000001.png").size).save(base / "GT" / "000001.png")
        result = index_dataset("udiat", base)
        reasons = {q["case_id"]: (Path(q["path"]).relative_to(base).as_posix(), q["reason"]) for q in result.quarantine}
        self.assertEqual(sorted(reasons), ["000001", "000002", "000003", "000005", "000007"])
        self.assertEqual(reasons["000002"][0], "original/000002.png")
        self.assertIn("image without GT", reasons["000002"][1])
        self.assertEqual(reasons["000005"], ("GT/000005.png", "GT mask without image in original/"))
        self.assertRegex(reasons["000003"][1], r"GT size \d+x\d+ differs from image")
        self.assertEqual(reasons["000001"], ("GT/000001.png", "GT mask is empty (no pixel above 127)"))
        self.assertEqual(reasons["000007"][0], "DatasetB.xlsx")
        self.assertEqual([r["case_id"] for r in result.records], ["000004", "000006", "000008"])

    def test_duplicate_image_removed_and_unlisted_image_flagged(self):
        base = self.faulty_copy()
        shutil.copy(base / "original" / "000006.png", base / "original" / "000009.png")
        shutil.copy(base / "GT" / "000006.png", base / "GT" / "000009.png")
        shutil.copy(base / "original" / "000001.png", base / "original" / "000010.png")
        with Image.open(base / "original" / "000010.png") as image:
            pixels = np.asarray(image).copy()
        pixels[0, 0] ^= 1  # one pixel differs: not a duplicate
        Image.fromarray(pixels).save(base / "original" / "000010.png")
        shutil.copy(base / "GT" / "000001.png", base / "GT" / "000010.png")
        result = index_dataset("udiat", base)
        self.assertEqual([d["case_id"] for d in result.duplicates], ["000009"])
        self.assertEqual(result.duplicates[0]["reason"], "identical pixels to 000006")
        extra = next(r for r in result.records if r["case_id"] == "000010")
        self.assertEqual((extra["pathology"], extra["flags"]), (None, ["not-in-xlsx"]))

    def test_every_file_is_indexed_quarantined_or_ignored_in_any_pil_format(self):
        base = self.faulty_copy()
        picture = Image.open(base / "original" / "000002.png")
        mirror = Image.Transpose.FLIP_LEFT_RIGHT
        (base / "original" / "000002.png").unlink()
        picture.transpose(mirror).save(base / "original" / "000002.bmp")  # BMP image, PNG GT
        Image.open(base / "GT" / "000002.png").transpose(mirror).save(base / "GT" / "000002.png")
        Image.open(base / "original" / "000003.png").convert("RGB").save(base / "original" / "000003.jpg")  # two images
        sixteen = np.asarray(Image.open(base / "original" / "000004.png").convert("L")).astype(np.uint16) * 257
        Image.fromarray(sixteen).save(base / "original" / "000004.png")
        (base / "original" / "Thumbs.db").write_bytes(b"\0")
        (base / "GT" / "old").mkdir()
        result = index_dataset("udiat", base)
        records = {r["case_id"]: r for r in result.records}
        self.assertEqual(Path(records["000002"]["image"]).name, "000002.bmp")
        self.assertIn("image-16-bit", records["000004"]["flags"])
        self.assertNotIn("000003", records)
        quarantined = {Path(q["path"]).relative_to(base).as_posix() for q in result.quarantine if q["case_id"] == "000003"}
        self.assertEqual(quarantined, {"original/000003.png", "original/000003.jpg", "GT/000003.png"})
        self.assertTrue(all("several files share the stem '000003'" in q["reason"]
                            for q in result.quarantine if q["case_id"] == "000003"))
        self.assertEqual({Path(entry["path"]).name for entry in result.ignored}, {"Thumbs.db", "old"})

    def test_bad_sheet_rows_are_named_and_bad_sheets_raise(self):
        with TemporaryDirectory() as folder:
            path = Path(folder) / "DatasetB.xlsx"
            book = Workbook()
            book.active.append(["Image", "Type", "Tumor"])
            book.active.append([1, "Benign", "CYST"])
            book.active.append([2, "Unknown", "CYST"])
            book.save(path)
            result = IndexResult()
            labels, refused = read_labels(path, result)
            self.assertEqual(labels["000001"], {"pathology": "benign", "diagnosis": "CYST", "table_rows": ["DatasetB.xlsx:2"]})
            self.assertRegex(refused["000002"], r"DatasetB.xlsx row 3: Type 'Unknown' is not Benign or Malignant")
            self.assertEqual(labels["000002"]["table_rows"], ["DatasetB.xlsx:3"])
            book = Workbook()
            book.active.append(["Picture", "Type"])
            book.save(path)
            with self.assertRaisesRegex(ValueError, r"no \['image'\] column"):
                read_labels(path, IndexResult())
            path.write_bytes(b"not a zip")
            with self.assertRaisesRegex(ValueError, "cannot read"):
                read_labels(path, IndexResult())

    def test_indexing_leaves_files_unchanged(self):
        before = snapshot(self.out)
        index_dataset("udiat", self.out)
        self.assertEqual(snapshot(self.out), before)


if __name__ == "__main__":
    unittest.main()
