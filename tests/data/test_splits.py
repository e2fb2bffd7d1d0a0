"""Grouped splits, folds, the official-split rule and exact-duplicate removal."""

from __future__ import annotations

import unittest
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from parameterized import parameterized
from PIL import Image

from breastseg.workflows.data.splits import (
    assign_folds,
    natural_key,
    official_split,
    pixel_digest,
    remove_exact_duplicates,
    split_groups,
)

torch.set_num_threads(1)


def make_records(patients: int = 40, seed: int = 0) -> list[dict]:
    """Patients with 1-5 images each; one patient in eight malignant."""
    rng = np.random.default_rng(seed)
    records = []
    for patient in range(patients):
        pathology = "malignant" if patient % 8 == 0 else "benign"
        for image in range(int(rng.integers(1, 6))):
            records.append({
                "image": f"/data/P_{patient:05d}_{image}.dcm",
                "case_id": f"P_{patient:05d}_{image}",
                "patient_id": f"P_{patient:05d}",
                "pathology": pathology,
                "lesion_count": 1,
            })
    return records


def patients_of(records: list[dict]) -> set[str]:
    return {r["patient_id"] for r in records}


class TestSplitGroups(unittest.TestCase):
    @parameterized.expand([(seed,) for seed in range(8)])
    def test_no_patient_in_two_splits_and_nothing_lost(self, seed):
        records = make_records(seed=seed)
        splits = split_groups(records, seed=seed, val_fraction=0.2, test_fraction=0.15)
        train, val, test = (patients_of(splits[name]) for name in ("training", "validation", "test"))
        self.assertFalse(train & val or train & test or val & test)
        self.assertEqual(sorted(r["case_id"] for s in splits.values() for r in s), sorted(r["case_id"] for r in records))
        total = len(records)
        # whole patients (at most 5 images) are added until the target is reached
        self.assertGreaterEqual(len(splits["test"]), round(0.15 * total))
        self.assertLess(len(splits["test"]), round(0.15 * total) + 5)
        self.assertGreaterEqual(len(splits["validation"]), round(0.2 * total))
        self.assertLess(len(splits["validation"]), round(0.2 * total) + 5)

    def test_same_seed_same_split_other_seed_differs_input_order_irrelevant(self):
        records = make_records()
        first = split_groups(records, seed=3, val_fraction=0.1, test_fraction=0.2)
        again = split_groups(list(reversed(records)), seed=3, val_fraction=0.1, test_fraction=0.2)
        other = split_groups(records, seed=4, val_fraction=0.1, test_fraction=0.2)
        self.assertEqual(patients_of(first["test"]), patients_of(again["test"]))
        self.assertEqual(patients_of(first["validation"]), patients_of(again["validation"]))
        self.assertNotEqual(patients_of(first["test"]), patients_of(other["test"]))

    def test_stratified_by_worst_pathology(self):
        records = make_records(patients=80)
        for seed in range(5):
            test = split_groups(records, seed=seed, val_fraction=0.1, test_fraction=0.25)["test"]
            malignant = {r["patient_id"] for r in test if r["pathology"] == "malignant"}
            # 10 malignant patients of 80; a quarter of the images -> about 2-3 of them in test
            self.assertGreaterEqual(len(malignant), 1)

    def test_zero_fractions_keep_everything_in_training(self):
        records = make_records(patients=5)
        splits = split_groups(records, seed=0, val_fraction=0.0, test_fraction=0.0)
        self.assertEqual(len(splits["training"]), len(records))
        self.assertEqual(splits["validation"] + splits["test"], [])

    @parameterized.expand([(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5), (0.7, 0.4)])
    def test_bad_fractions_raise(self, val, test):
        with self.assertRaisesRegex(ValueError, "fraction"):
            split_groups(make_records(patients=4), seed=0, val_fraction=val, test_fraction=test)

    def test_missing_group_key_names_the_case(self):
        records = make_records(patients=3)
        records[1]["patient_id"] = None
        with self.assertRaisesRegex(ValueError, records[1]["case_id"]):
            split_groups(records, seed=0, val_fraction=0.1, test_fraction=0.1)

    def test_too_few_groups_for_training_raises(self):
        records = make_records(patients=2)
        with self.assertRaisesRegex(ValueError, "nothing for training"):
            split_groups(records, seed=0, val_fraction=0.45, test_fraction=0.45)


class TestAssignFolds(unittest.TestCase):
    @parameterized.expand([(seed, folds) for seed in range(4) for folds in (2, 5)])
    def test_patient_in_one_fold_and_folds_balanced(self, seed, folds):
        records = make_records(seed=seed)
        fold_of = assign_folds(records, folds=folds, seed=seed)
        self.assertEqual(set(fold_of), patients_of(records))
        self.assertEqual(set(fold_of.values()), set(range(folds)))
        images = Counter(fold_of[r["patient_id"]] for r in records)
        # greedy fill by images: folds differ by less than the largest patient (5 images)
        self.assertLessEqual(max(images.values()) - min(images.values()), 5)

    def test_folds_deterministic_and_seed_dependent(self):
        records = make_records()
        self.assertEqual(assign_folds(records, 5, seed=1), assign_folds(records[::-1], 5, seed=1))
        self.assertNotEqual(assign_folds(records, 5, seed=1), assign_folds(records, 5, seed=2))

    def test_bad_fold_counts(self):
        with self.assertRaisesRegex(ValueError, "at least 2"):
            assign_folds(make_records(patients=4), folds=1, seed=0)
        with self.assertRaisesRegex(ValueError, "5 folds from 3 group"):
            assign_folds(make_records(patients=3), folds=5, seed=0)


class TestOfficialSplit(unittest.TestCase):
    def setUp(self):
        self.records = make_records(patients=30)
        for record in self.records:
            number = int(record["patient_id"][2:])
            record["official_split"] = "test" if number % 5 == 0 else "train"
        # P_00001 also has an official-test image (a calc-test row): it must end up only in test
        self.records.append({**self.records[-1], "case_id": "P_00001_calc", "image": "/data/P_00001_calc.dcm",
                             "patient_id": "P_00001", "official_split": "test"})

    def test_official_test_kept_and_shared_patient_moved_to_test(self):
        splits, moved = official_split(self.records, seed=0, val_fraction=0.2)
        self.assertEqual(moved, ["P_00001"])
        test_cases = {r["case_id"] for r in splits["test"]}
        self.assertTrue({r["case_id"] for r in self.records if r["official_split"] == "test"} <= test_cases)
        self.assertTrue({r["case_id"] for r in self.records if r["patient_id"] == "P_00001"} <= test_cases)
        train, val, test = (patients_of(splits[name]) for name in ("training", "validation", "test"))
        self.assertFalse(train & val or train & test or val & test)
        self.assertGreater(len(val), 0)
        self.assertEqual(sum(len(s) for s in splits.values()), len(self.records))

    def test_record_without_official_split_is_named(self):
        self.records[3]["official_split"] = None
        with self.assertRaisesRegex(ValueError, self.records[3]["case_id"]):
            official_split(self.records, seed=0, val_fraction=0.1)


class TestExactDuplicates(unittest.TestCase):
    def test_grey_stored_as_rgb_rgba_or_l_is_one_picture(self):
        rng = np.random.default_rng(0)
        grey = rng.integers(0, 256, (37, 41), dtype=np.uint8)
        other = grey.copy()
        other[5, 5] ^= 1
        with TemporaryDirectory() as folder:
            paths = {}
            for name, pixels, mode in [
                ("img (10)", grey, "L"), ("img (9)", grey, "RGB"), ("img (2)", other, "L"), ("img (11)", grey, "RGBA"),
            ]:
                paths[name] = Path(folder) / f"{name}.png"
                Image.fromarray(pixels, mode="L").convert(mode).save(paths[name])
            self.assertEqual(pixel_digest(paths["img (9)"]), pixel_digest(paths["img (10)"]))
            self.assertEqual(pixel_digest(paths["img (11)"]), pixel_digest(paths["img (10)"]))
            self.assertNotEqual(pixel_digest(paths["img (2)"]), pixel_digest(paths["img (10)"]))
            records = [{"image": str(p), "case_id": name, "patient_id": name} for name, p in paths.items()]
            kept, duplicates = remove_exact_duplicates(records)
        # natural order: img (2) < img (9) < img (10) < img (11); (9) is the first of the grey copies
        self.assertEqual([r["case_id"] for r in kept], ["img (2)", "img (9)"])
        self.assertEqual([d["case_id"] for d in duplicates], ["img (10)", "img (11)"])
        self.assertTrue(all(d["duplicate_of"].endswith("img (9).png") for d in duplicates))
        self.assertEqual(duplicates[0]["reason"], "identical pixels to img (9)")

    def test_natural_key(self):
        names = ["benign (10)", "benign (2)", "benign (1)_mask_1", "benign (1)"]
        self.assertEqual(sorted(names, key=natural_key), ["benign (1)", "benign (1)_mask_1", "benign (2)", "benign (10)"])


if __name__ == "__main__":
    unittest.main()
