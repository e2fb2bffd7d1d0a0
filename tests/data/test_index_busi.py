"""BUSI indexer on a generated ``Dataset_BUSI_with_GT`` (12 images, seed 0) and copies with planted faults.

The 12-image layout holds benign (1)-(7), malignant (1)-(3), normal (1)-(2); benign (4) has three masks,
malignant (3) two; malignant (2)_mask is RGBA, benign (5)_mask RGB; benign (7) repeats benign (2).
"""

from __future__ import annotations

import hashlib
import shutil
import unittest
import unittest.mock
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from PIL import Image, ImageFile

from breastseg.transforms import LoadBreastImage
from breastseg.workflows.data.indexers import index_dataset
from breastseg.workflows.data.indexers.busi import mask_base_stem
from breastseg.workflows.data.synthetic import generate

torch.set_num_threads(1)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


class TestIndexBusi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = TemporaryDirectory()
        cls.out = Path(cls._tmp.name) / "busi"
        cls.summary = generate("busi", cls.out, cases=12, seed=0)
        cls.base = cls.out / "Dataset_BUSI_with_GT"

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def faulty_copy(self) -> Path:
        """A private copy of the layout that a test may damage."""
        self._copy = TemporaryDirectory()
        self.addCleanup(self._copy.cleanup)
        target = Path(self._copy.name) / "busi"
        shutil.copytree(self.out, target)
        return target / "Dataset_BUSI_with_GT"

    def test_exact_counts_of_clean_layout(self):
        self.assertEqual((self.summary["benign"], self.summary["malignant"], self.summary["normal"]), (7, 3, 2))
        self.assertEqual(self.summary["lesions"], 13)
        result = index_dataset("busi", self.out)
        self.assertEqual(len(result.records), 11)
        self.assertEqual(result.quarantine, [])
        self.assertEqual(len(result.duplicates), 1)
        duplicate = result.duplicates[0]
        self.assertEqual(duplicate["case_id"], "benign (7)")
        self.assertTrue(duplicate["path"].endswith("benign/benign (7).png"))
        self.assertTrue(duplicate["duplicate_of"].endswith("benign/benign (2).png"))
        self.assertEqual(sum(r["lesion_count"] for r in result.records), 12)
        self.assertEqual(
            [r["case_id"] for r in result.records],
            [f"benign ({n})" for n in range(1, 7)] + [f"malignant ({n})" for n in (1, 2, 3)] + ["normal (1)", "normal (2)"],
        )

    def test_each_image_is_decoded_once(self):
        # the duplicate check takes its pixel digest from the decode that proves the file readable
        loads = []
        original_load = ImageFile.ImageFile.load

        def counted_load(image):
            if image.tile:  # pixels not decoded yet
                loads.append(Path(image.filename).name)
            return original_load(image)

        with unittest.mock.patch.object(ImageFile.ImageFile, "load", counted_load):
            result = index_dataset("busi", self.out)
        images = [Path(r["image"]).name for r in result.records] + [Path(d["path"]).name for d in result.duplicates]
        self.assertEqual(len(images), 12)
        self.assertEqual({name: loads.count(name) for name in images}, dict.fromkeys(images, 1))

    def test_record_contract_and_multi_mask_listing(self):
        records = {r["case_id"]: r for r in index_dataset("busi", self.out).records}
        benign4 = records["benign (4)"]
        self.assertEqual([Path(p).name for p in benign4["label"]],
                         ["benign (4)_mask.png", "benign (4)_mask_1.png", "benign (4)_mask_2.png"])
        self.assertEqual(benign4["lesion_count"], 3)
        self.assertEqual(records["malignant (3)"]["lesion_count"], 2)
        with Image.open(benign4["image"]) as image:
            self.assertEqual((benign4["columns"], benign4["rows"]), image.size)
            self.assertEqual(image.mode, "RGB")
        self.assertEqual(benign4["patient_id"], "benign (4)")
        self.assertTrue(Path(benign4["image"]).is_absolute())
        for key, value in {"label_format": "png", "dataset": "busi", "modality": "US", "pathology": "benign",
                           "spacing": None, "laterality": None, "birads": None}.items():
            self.assertEqual(benign4[key], value, key)

    def test_normal_kept_with_empty_mask_and_rgba_rgb_masks_flagged(self):
        records = {r["case_id"]: r for r in index_dataset("busi", self.out).records}
        normal = records["normal (1)"]
        self.assertEqual((normal["pathology"], normal["lesion_count"], normal["flags"]), ("normal", 0, ["normal"]))
        self.assertEqual([Path(p).name for p in normal["label"]], ["normal (1)_mask.png"])
        self.assertFalse(np.asarray(Image.open(normal["label"][0])).any())
        self.assertIn("mask-rgba", records["malignant (2)"]["flags"])
        self.assertIn("mask-rgb", records["benign (5)"]["flags"])
        with Image.open(records["malignant (2)"]["label"][0]) as mask:
            self.assertEqual(mask.mode, "RGBA")

    def test_root_may_be_the_dataset_folder_or_its_parent(self):
        from_parent = index_dataset("busi", self.out).records
        from_folder = index_dataset("busi", self.base).records
        self.assertEqual(from_parent, from_folder)
        with self.assertRaisesRegex(FileNotFoundError, "not a BUSI folder"):
            index_dataset("busi", self.base / "benign")

    def test_missing_mask_size_mismatch_orphan_and_empty_mask_are_quarantined(self):
        base = self.faulty_copy()
        (base / "benign" / "benign (3)_mask.png").unlink()
        mask = base / "malignant" / "malignant (1)_mask.png"
        with Image.open(mask) as image:
            image.resize((image.width + 3, image.height)).save(mask)
        (base / "benign" / "benign (6).png").unlink()
        Image.new("L", Image.open(base / "benign" / "benign (1).png").size).save(base / "benign" / "benign (1)_mask.png")
        result = index_dataset("busi", base)
        reasons = {(Path(q["path"]).name, q["case_id"]): q["reason"] for q in result.quarantine}
        self.assertEqual(len(result.quarantine), 4)
        self.assertIn("no mask file", reasons["benign (3).png", "benign (3)"])
        self.assertRegex(reasons["malignant (1)_mask.png", "malignant (1)"], r"mask size \d+x\d+ differs from image")
        self.assertEqual(reasons["benign (6)_mask.png", "benign (6)"], "mask without an image")
        self.assertEqual(reasons["benign (1)_mask.png", "benign (1)"], "benign image but every mask is empty")
        self.assertEqual(len(result.records), 11 - 4)

    def test_truncated_png_is_quarantined_with_the_file_named(self):
        base = self.faulty_copy()
        image = base / "malignant" / "malignant (3).png"
        image.write_bytes(image.read_bytes()[:200])
        mask = base / "benign" / "benign (4)_mask_2.png"
        mask.write_bytes(mask.read_bytes()[:-40])
        result = index_dataset("busi", base)
        by_path = {Path(q["path"]).name: q["reason"] for q in result.quarantine}
        self.assertEqual(set(by_path), {"malignant (3).png", "benign (4)_mask_2.png"})
        self.assertTrue(by_path["malignant (3).png"].startswith("unreadable image"))
        self.assertTrue(by_path["benign (4)_mask_2.png"].startswith("unreadable mask"))

    def test_every_file_of_a_class_folder_is_indexed_quarantined_or_ignored(self):
        base = self.faulty_copy()
        benign = base / "benign"
        picture = Image.open(benign / "benign (1).png")
        picture.convert("RGB").save(benign / "benign (98).jpg")  # no mask
        mirror = Image.Transpose.FLIP_LEFT_RIGHT  # another picture, not an exact duplicate of benign (1)
        picture.transpose(mirror).save(benign / "benign (99).bmp")
        Image.open(benign / "benign (1)_mask.png").transpose(mirror).save(benign / "benign (99)_mask.png")
        picture.save(benign / "benign (97).tif")
        shutil.copy(benign / "benign (1).png", benign / "benign (97).png")  # two images, one stem
        shutil.copy(benign / "benign (1)_mask.png", benign / "benign (97)_mask.png")
        (benign / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (benign / "notes.txt").write_text("axilla images removed\n")
        (benign / "extra").mkdir()
        result = index_dataset("busi", base)

        records = {r["case_id"]: r for r in result.records}
        self.assertEqual(Path(records["benign (99)"]["image"]).name, "benign (99).bmp")
        self.assertEqual([Path(p).name for p in records["benign (99)"]["label"]], ["benign (99)_mask.png"])
        quarantined = {Path(q["path"]).name: q["reason"] for q in result.quarantine}
        self.assertIn("no mask file", quarantined["benign (98).jpg"])
        for name in ("benign (97).png", "benign (97).tif", "benign (97)_mask.png"):
            self.assertIn("several files share the stem 'benign (97)'", quarantined[name])
        ignored = {Path(entry["path"]).name: entry["reason"] for entry in result.ignored}
        self.assertEqual(set(ignored), {".DS_Store", "notes.txt", "extra"})
        self.assertIn("not an image format", ignored["notes.txt"])
        self.assertIn("not searched", ignored["extra"])
        # every file of a class folder is accounted for (a duplicate's masks go with its image)
        listed = {Path(r["image"]).name for r in result.records}
        listed |= {Path(mask).name for r in result.records for mask in r["label"]}
        listed |= {Path(entry["path"]).name for entry in result.quarantine + result.ignored + result.duplicates}
        listed |= {f"{entry['case_id']}_mask.png" for entry in result.duplicates}
        on_disk = {path.name for folder in ("benign", "malignant", "normal") for path in (base / folder).iterdir()}
        self.assertEqual(on_disk - listed, set())
        # the image formats PIL reads are read as images, not as DICOM
        bmp = LoadBreastImage()(records["benign (99)"]["image"])
        np.testing.assert_array_equal(bmp[0].numpy(), LoadBreastImage()(records["benign (1)"]["image"])[0].numpy()[:, ::-1])

    def test_a_16_bit_image_is_flagged(self):
        base = self.faulty_copy()
        image = base / "benign" / "benign (3).png"
        picture = np.asarray(Image.open(image).convert("L")).astype(np.uint16) * 257
        Image.fromarray(picture).save(image)
        records = {r["case_id"]: r for r in index_dataset("busi", base).records}
        self.assertIn("image-16-bit", records["benign (3)"]["flags"])
        self.assertNotIn("image-16-bit", records["benign (2)"]["flags"])

    def test_mask_stem_rule_and_natural_mask_order(self):
        self.assertEqual(mask_base_stem("benign (4)_mask_1"), "benign (4)")
        self.assertEqual(mask_base_stem("benign (4)_mask"), "benign (4)")
        base = self.faulty_copy()
        source = base / "benign" / "benign (1)_mask.png"
        for extra in (10, 2):
            shutil.copy(source, base / "benign" / f"benign (1)_mask_{extra}.png")
        record = next(r for r in index_dataset("busi", base).records if r["case_id"] == "benign (1)")
        self.assertEqual([Path(p).name for p in record["label"]],
                         ["benign (1)_mask.png", "benign (1)_mask_2.png", "benign (1)_mask_10.png"])

    def test_indexing_leaves_files_unchanged(self):
        before = snapshot(self.out)
        index_dataset("busi", self.out)
        self.assertEqual(snapshot(self.out), before)


if __name__ == "__main__":
    unittest.main()
