"""``build_datalist`` / ``load_datalist`` / ``fold_split`` and the ``breastseg datalist`` console script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from monai.bundle import ConfigParser

from breastseg.workflows.commands.bundle import locate_bundle, split_settings
from breastseg.workflows.data.datalist import build_datalist, fold_split, format_summary, load_datalist, write_datalist
from breastseg.workflows.data.synthetic import generate

torch.set_num_threads(1)
# the console script installed beside the interpreter that runs the tests (any venv, any machine)
from forked_cli import run_breastseg
SPLITS = ("training", "validation", "test")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_breastseg(*args, timeout=120)


class TestDatalist(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = TemporaryDirectory()
        cls.tmp = Path(cls._tmp.name)
        cls.busi = cls.tmp / "busi"
        done = run_cli("synth", "--layout", "busi", "--out", str(cls.busi), "--cases", "20", "--seed", "0")
        assert done.returncode == 0, done.stderr  # fixture set-up, not a user error
        cls.udiat = cls.tmp / "udiat"
        generate("udiat", cls.udiat, cases=12, seed=0)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_busi_datalist_counts_keys_and_no_leak(self):
        datalist = build_datalist("busi", self.busi, folds=3, seed=0, val_fraction=0.2, test_fraction=0.2)
        self.assertEqual(set(datalist), {"dataset", "root", "seed", "split", *SPLITS, "quarantine", "duplicates", "ignored",
                                         "near_duplicates", "audit", "summary"})
        self.assertEqual(datalist["split"]["method"], "grouped-random")
        self.assertEqual(datalist["split"]["folds"], 3)
        # 20 images: benign 12 (benign (12) repeats benign (2); (10) and (11) are re-exports of (1) and (5)),
        # malignant 5, normal 3 -> 19 after dedup, in 17 groups
        self.assertEqual(datalist["summary"]["total"]["images"], 19)
        self.assertEqual(datalist["summary"]["total"]["groups"], 17)
        self.assertEqual(datalist["audit"]["leaked_test_images"], 0)
        self.assertEqual([d["case_id"] for d in datalist["duplicates"]], ["benign (12)"])
        self.assertEqual((len(datalist["test"]), len(datalist["validation"])), (4, 4))
        images = [r["image"] for name in SPLITS for r in datalist[name]]
        self.assertEqual(len(images), len(set(images)))
        non_test = datalist["training"] + datalist["validation"]
        self.assertEqual({r["fold"] for r in non_test}, {0, 1, 2})
        self.assertTrue(all("fold" not in r for r in datalist["test"]))
        self.assertEqual(sum(f["images"] for f in datalist["summary"]["folds"]), len(non_test))

    def test_same_seed_same_json_other_seed_differs(self):
        first = build_datalist("udiat", self.udiat, folds=2, seed=7)
        again = build_datalist("udiat", self.udiat, folds=2, seed=7)
        other = build_datalist("udiat", self.udiat, folds=2, seed=8)
        self.assertEqual(json.dumps(first), json.dumps(again))
        self.assertNotEqual([r["case_id"] for r in first["test"]], [r["case_id"] for r in other["test"]])

    def test_write_load_round_trip_and_fold_split(self):
        datalist = build_datalist("udiat", self.udiat, folds=4, seed=1)
        path = write_datalist(datalist, self.tmp / "out" / "udiat.json")
        loaded = load_datalist(path)
        self.assertEqual(loaded, json.loads(json.dumps(datalist)))
        non_test = {r["case_id"] for r in loaded["training"] + loaded["validation"]}
        seen_val: set[str] = set()
        for fold in range(4):
            train, val = fold_split(loaded, fold)
            train_ids, val_ids = {r["case_id"] for r in train}, {r["case_id"] for r in val}
            self.assertFalse(train_ids & val_ids)
            self.assertEqual(train_ids | val_ids, non_test)
            self.assertTrue(val_ids)
            seen_val |= val_ids
        self.assertEqual(seen_val, non_test)
        with self.assertRaisesRegex(ValueError, "fold must be in 0..3"):
            fold_split(loaded, 4)
        with self.assertRaisesRegex(ValueError, "no folds"):
            fold_split(build_datalist("udiat", self.udiat), 0)

    def test_load_rejects_leaks_and_malformed_files(self):
        datalist = json.loads(json.dumps(build_datalist("udiat", self.udiat, seed=0)))
        path = self.tmp / "bad.json"

        def expect(message: str, content: str) -> None:
            path.write_text(content)
            with self.assertRaisesRegex(ValueError, message):
                load_datalist(path)

        leaked = json.loads(json.dumps(datalist))
        leaked["test"].append(dict(leaked["training"][0]))
        expect(rf"bad.json.*'{leaked['training'][0]['image']}'.*in both 'training' and 'test'", json.dumps(leaked))
        patient = json.loads(json.dumps(datalist))
        moved = dict(patient["test"][0], image="/elsewhere/x.png", case_id="other")
        patient["validation"].append(moved)
        expect(rf"patient '{moved['patient_id']}' \(case '[^']+'\) is in both 'validation' and 'test'", json.dumps(patient))
        twice = json.loads(json.dumps(datalist))
        twice["training"].append(dict(twice["training"][0]))
        expect("listed twice in 'training'", json.dumps(twice))
        missing = json.loads(json.dumps(datalist))
        del missing["training"][2]["patient_id"]
        expect(r"training\[2\].*has no \['patient_id'\]", json.dumps(missing))
        expect(r"lacks key\(s\) \['test'\]", json.dumps({k: v for k, v in datalist.items() if k != "test"}))
        expect("is not valid JSON", "{not json")
        with self.assertRaises(FileNotFoundError):
            load_datalist(self.tmp / "absent.json")

    def test_load_rejects_a_group_in_two_splits(self):
        datalist = json.loads(json.dumps(build_datalist("busi", self.busi, seed=0)))
        (group,) = [g for g in datalist["near_duplicates"] if len(g["members"]) == 2][:1]
        first, second = (m["case_id"] for m in group["members"])
        moved = next(r for split in SPLITS for r in datalist[split] if r["case_id"] == second)
        for split in SPLITS:
            datalist[split] = [r for r in datalist[split] if r["case_id"] != second]
        where = next(split for split in SPLITS if any(r["case_id"] == first for r in datalist[split]))
        other = "test" if where != "test" else "training"
        datalist[other].append(moved)  # the copy of an image filed in another partition: a leak written by hand
        path = self.tmp / "group_leak.json"
        path.write_text(json.dumps(datalist))
        with self.assertRaisesRegex(ValueError, re.escape(f"group '{moved['group_id']}' (case '{second}') is in both")):
            load_datalist(path)

    def test_cli_near_duplicate_options_and_cache(self):
        out = self.tmp / "listed.json"
        listed = run_cli("datalist", "--dataset", "busi", "--root", str(self.busi), "--out", str(out),
                         "--near-duplicates", "list", "--test-fraction", "0.3")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("near-duplicate groups: 2 (4 images; 0 label conflict(s)); near duplicates: list", listed.stdout)
        self.assertRegex(listed.stdout, r"test <-> training: \d+ of \d+ test image\(s\) have a near duplicate")
        self.assertTrue((self.tmp / "listed.fingerprints.npz").is_file())  # the cache beside the datalist
        self.assertEqual(json.loads(out.read_text())["split"]["near_duplicates"], "list")

    def test_load_rejects_patient_in_two_folds(self):
        datalist = json.loads(json.dumps(build_datalist("udiat", self.udiat, folds=3, seed=0)))
        first = datalist["training"][0]
        datalist["training"].append(dict(first, image="/x/copy.png", case_id="copy", fold=(first["fold"] + 1) % 3))
        path = self.tmp / "folds.json"
        path.write_text(json.dumps(datalist))
        with self.assertRaisesRegex(ValueError, rf"patient '{first['patient_id']}' is in folds"):
            load_datalist(path)

    def test_official_split_only_for_cbis_and_bad_folds(self):
        with self.assertRaisesRegex(ValueError, "no official split"):
            build_datalist("busi", self.busi, official_split=True)
        with self.assertRaisesRegex(ValueError, "folds must be"):
            build_datalist("busi", self.busi, folds=-1)

    def test_cli_strict_exit_codes_and_summary_lines(self):
        out = self.tmp / "cli.json"
        clean = run_cli("datalist", "--dataset", "busi", "--root", str(self.busi), "--out", str(out), "--strict",
                        "--folds", "2")
        self.assertEqual(clean.returncode, 0, clean.stderr)
        self.assertIn("duplicates removed: 1", clean.stdout)
        self.assertRegex(clean.stdout, r"benign \(12\)\.png: identical pixels to benign \(2\)")
        self.assertEqual(load_datalist(out)["summary"]["quarantined"], 0)

        broken = self.tmp / "broken"
        shutil.copytree(self.busi, broken)
        (broken / "Dataset_BUSI_with_GT" / "malignant" / "malignant (4)_mask.png").unlink()
        strict = run_cli("datalist", "--dataset", "busi", "--root", str(broken), "--out", str(out), "--strict")
        self.assertEqual(strict.returncode, 3)
        self.assertIn("quarantined: 1", strict.stdout)
        self.assertRegex(strict.stdout, r"malignant \(4\)\.png: no mask file")
        self.assertIn("1 record(s) quarantined", strict.stderr)
        lenient = run_cli("datalist", "--dataset", "busi", "--root", str(broken), "--out", str(out))
        self.assertEqual(lenient.returncode, 0, lenient.stderr)
        self.assertEqual([q["case_id"] for q in load_datalist(out)["quarantine"]], ["malignant (4)"])

    def test_cli_lists_ignored_files_without_failing_strict(self):
        tidy = self.tmp / "tidy"
        shutil.copytree(self.busi, tidy)
        stray = tidy / "Dataset_BUSI_with_GT" / "normal" / "Thumbs.db"
        stray.write_bytes(b"\0")
        out = self.tmp / "tidy.json"
        done = run_cli("datalist", "--dataset", "busi", "--root", str(tidy), "--out", str(out), "--strict")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("ignored (not images): 1", done.stdout)
        self.assertIn(f"{stray}: not an image format PIL reads (.db)", done.stdout)
        written = load_datalist(out)
        self.assertEqual((written["summary"]["ignored"], written["ignored"][0]["path"]), (1, str(stray)))

    def test_cli_bundle_gives_the_split_the_bundle_trains_on(self):
        out = self.tmp / "hybrid.json"
        done = run_cli("datalist", "--bundle", "hybrid_attention_us", "--root", str(self.busi), "--out", str(out))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("split settings of bundle hybrid_attention_us", done.stdout)
        written = load_datalist(out)
        split = written["split"]
        self.assertEqual((written["dataset"], split["val_fraction"], split["test_fraction"]), ("busi", 0.18, 0.1))
        # the datalist the bundle's own train.json makes from the same folder: the same images in every split
        parser = ConfigParser()
        parser.read_config(Path(locate_bundle("hybrid_attention_us")) / "configs" / "train.json")
        parser.update({"dataset_dir": str(self.busi), "output_dir": str(self.tmp / "hybrid_run")})
        trained = parser.get_parsed_content("datalist")
        for name in SPLITS:
            self.assertEqual([r["image"] for r in written[name]], [r["image"] for r in trained[name]], name)

        explicit = run_cli("datalist", "--bundle", "hybrid_attention_us", "--root", str(self.busi), "--out", str(out),
                           "--val-fraction", "0.25")
        self.assertEqual(explicit.returncode, 0, explicit.stderr)
        self.assertEqual(load_datalist(out)["split"]["val_fraction"], 0.25)  # an option given on the line wins
        self.assertEqual(load_datalist(out)["split"]["test_fraction"], 0.1)

    def test_bundle_split_settings_follow_the_dataset(self):
        self.assertEqual(split_settings("connected_unets"), {"dataset": "cbis-ddsm", "seed": 0, "folds": 0,
                         "val_fraction": 0.15, "test_fraction": 21 / 107, "official_split": True,
                         "near_duplicates": "group", "label_conflicts": "quarantine"})
        inbreast = split_settings("connected_unets", "inbreast")
        self.assertEqual((inbreast["val_fraction"], inbreast["official_split"]), (17 / 107, False))
        with self.assertRaisesRegex(FileNotFoundError, "bundle 'no_such_bundle' not found"):
            split_settings("no_such_bundle")

    def test_format_summary_lists_splits_and_quarantine(self):
        datalist = build_datalist("udiat", self.udiat, folds=2, seed=0)
        datalist["quarantine"] = [{"case_id": "000099", "path": "/d/GT/000099.png", "reason": "GT mask without image"}]
        text = format_summary(datalist)
        for expected in ("training", "validation", "test", "fold 0", "fold 1",
                         "quarantined: 1", "/d/GT/000099.png: GT mask without image"):
            self.assertIn(expected, text)
        self.assertRegex(text, r"total\s+12 images\s+12 lesion images\s+12 lesions\s+12 patients")

    def test_cli_summary_names_lesion_images_and_lesions_apart(self):
        # BUSI gives an image one mask file per lesion: "lesions" counts those, "lesion images" the images
        out = self.tmp / "lesions.json"
        done = run_cli("datalist", "--dataset", "busi", "--root", str(self.busi), "--out", str(out))
        self.assertEqual(done.returncode, 0, done.stderr)
        records = [r for name in SPLITS for r in load_datalist(out)[name]]
        lesion_images = sum(r["lesion_count"] > 0 for r in records)
        lesions = sum(r["lesion_count"] for r in records)
        self.assertLess(lesion_images, lesions)
        self.assertRegex(done.stdout, rf"total\s+{len(records)} images\s+{lesion_images} lesion images\s+{lesions} lesions")
        self.assertEqual(load_datalist(out)["summary"]["total"]["lesion_images"], lesion_images)


if __name__ == "__main__":
    unittest.main()
