"""``breastseg audit`` on the four forms a split comes in, its contact sheet, its one-line errors, and the leak report
of a stored datalist written before near duplicates were searched."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import unittest
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from PIL import Image

from breastseg.workflows.commands.bundle import case_metadata, prepare_datalist
from breastseg.workflows.commands.nnunet_export import export_nnunet
from breastseg.workflows.data.datalist import build_datalist, write_datalist
from breastseg.workflows.data.synthetic import generate

torch.set_num_threads(1)
from forked_cli import run_breastseg
SPLITS = ("training", "validation", "test")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_breastseg(*args, timeout=600)


def leaks_of(report: dict, split: str = "split") -> dict[tuple[str, str], int]:
    return {tuple(entry["between"]): entry["groups"] for entry in report["splits"][split]["leaks"]}


class TestAudit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = TemporaryDirectory()
        cls.tmp = Path(cls._tmp.name)
        summary = generate("busi", cls.tmp / "busi", cases=40, seed=0)
        cls.root = Path(summary["root"])
        # a per-image split, as published ones: its near duplicates leak, which the audit must count
        cls.leaky = build_datalist("busi", cls.root, seed=0, near_duplicates="list", test_fraction=0.3,
                                   label_conflicts="keep")
        cls.leaky_file = write_datalist(cls.leaky, cls.tmp / "leaky.json")
        partition = {r["case_id"]: split for split in SPLITS for r in cls.leaky[split]}
        cls.expected = {}
        for first, second in (("test", "training"), ("test", "validation"), ("validation", "training")):
            cls.expected[(first, second)] = sum(
                1 for g in cls.leaky["near_duplicates"] if {first, second} <= {partition[m["case_id"]] for m in g["members"]})

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def audit(self, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
        out = self.tmp / f"audit_{len(list(self.tmp.glob('audit_*')))}"
        done = run_cli("audit", *args, "--out", str(out))
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads((out / "audit.json").read_text())
        with Image.open(out / "contact_sheet.png") as sheet:
            self.assertGreater(sheet.height, 100 * min(len(report["near_duplicate_groups"]), 60))
        return done, report

    def test_project_datalist(self):
        self.assertTrue(any(self.expected.values()))
        done, report = self.audit(str(self.leaky_file))
        self.assertEqual(leaks_of(report), self.expected)
        self.assertIn("test <-> training:", done.stdout)
        self.assertEqual(report["label_conflicts"], 1)  # the planted benign/malignant copy, kept on purpose here

    def test_case_reports_name_the_leaked_cases(self):
        metadata = case_metadata(self.leaky)
        leaked_test = [c for c, row in metadata.items() if row["split"] == "test" and row["near_duplicate_in"]]
        self.assertEqual(len(leaked_test), self.leaky["audit"]["leaked_test_images"])
        self.assertTrue(leaked_test)
        self.assertTrue(all(set(metadata[c]["near_duplicate_in"].split("+")) <= {"training", "validation"} for c in leaked_test))

    def test_grouped_datalist_has_no_leak_and_strict_passes(self):
        grouped = write_datalist(build_datalist("busi", self.root, seed=0, test_fraction=0.3), self.tmp / "grouped.json")
        done = run_cli("audit", str(grouped), "--out", str(self.tmp / "grouped_audit"), "--strict")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        strict = run_cli("audit", str(self.leaky_file), "--out", str(self.tmp / "strict_audit"), "--strict")
        self.assertEqual(strict.returncode, 3)

    def test_monai_datalist_with_relative_paths(self):
        folder = self.tmp / "monai"
        folder.mkdir()
        base = self.root.parent
        user = {split: [{"image": str(Path(r["image"]).relative_to(base)), "label": "unused.png"} for r in self.leaky[split]]
                for split in ("training", "validation")}
        user["test"] = [str(Path(r["image"]).relative_to(base)) for r in self.leaky["test"]]  # MONAI allows bare paths
        (folder / "datalist.json").write_text(json.dumps(user))
        _, report = self.audit(str(folder / "datalist.json"), "--images-root", str(base))
        self.assertEqual(leaks_of(report), self.expected)
        self.assertEqual(report["kind"], "MONAI datalist")

    def test_csv_of_image_and_partition(self):
        table = self.tmp / "split.csv"
        with table.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Image", "Split", "Class"])
            short = {"training": "train", "validation": "val", "test": "test"}
            writer.writerows([r["image"], short[split], r["pathology"]] for split in SPLITS for r in self.leaky[split])
        _, report = self.audit(str(table))
        self.assertEqual(leaks_of(report), self.expected)
        self.assertEqual(report["label_conflicts"], 1)

    def test_nnunet_splits_with_raw_dataset(self):
        # every image, normal ones too, so fold 0 holds the whole datalist split and its leaks
        manifest = export_nnunet(self.leaky_file, 531, self.tmp / "nnUNet_raw", bundle="hybrid_attention_us",
                                 lesions_only=False)
        raw = Path(manifest["folder"])
        _, report = self.audit(str(raw / "splits_final.json"), "--nnunet-raw", str(raw))
        self.assertEqual(report["kind"], "nnU-Net splits_final.json")
        self.assertEqual(leaks_of(report, "fold 0"), self.expected)  # fold 0 is the datalist's own split

    def test_bad_inputs_end_in_one_line(self):
        moved = dict(self.leaky, test=[{**r, "image": r["image"].replace("Dataset_BUSI", "Moved_BUSI")} for r in self.leaky["test"]])
        (self.tmp / "moved.json").write_text(json.dumps(moved))
        twice = dict(self.leaky, test=self.leaky["test"] + self.leaky["test"][:1])
        (self.tmp / "twice.json").write_text(json.dumps(twice))
        (self.tmp / "columns.csv").write_text("file_name,fold\na.png,1\n")
        cases = {
            "moved.json": ("not found", "--images-root"),
            "twice.json": ("listed twice in test", "remove one"),
            "columns.csv": ("needs an image column", "partition column"),
        }
        for name, fragments in cases.items():
            done = run_cli("audit", str(self.tmp / name), "--out", str(self.tmp / f"bad_{name}"))
            self.assertEqual(done.returncode, 1, name)
            lines = done.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, done.stderr)
            self.assertIn(name, lines[0])
            for fragment in fragments:
                self.assertIn(fragment, lines[0])


class TestStoredDatalist(unittest.TestCase):
    """A datalist.json written before near duplicates were searched: reported when evaluation starts, re-split by a
    new training run, never changed by reading it."""

    def test_leaky_stored_datalist_is_reported_then_re_split(self):
        with TemporaryDirectory() as folder:
            folder = Path(folder)
            root = Path(generate("busi", folder / "busi", cases=40, seed=0)["root"]).parent
            leaky = build_datalist("busi", root, seed=0, near_duplicates="list", test_fraction=0.3, label_conflicts="keep")
            for key in ("near_duplicates", "audit"):
                del leaky[key]
            for key in ("near_duplicates", "near_duplicate_method", "label_conflicts"):
                del leaky["split"][key]
            for split in SPLITS:
                for record in leaky[split]:
                    del record["group_id"]
            stored = write_datalist(leaky, folder / "runs" / "datalist.json")
            before = stored.read_bytes()
            settings = dict(seed=0, val_fraction=0.1, test_fraction=0.3)
            with self.assertLogs("breastseg.bundle", logging.WARNING) as logs:
                kept = prepare_datalist("busi", str(root), str(stored), replace=False, **settings)
            self.assertEqual(stored.read_bytes(), before)  # reading it changes nothing
            self.assertEqual([r["case_id"] for r in kept["test"]], [r["case_id"] for r in leaky["test"]])
            (line,) = logs.output
            self.assertRegex(line, r"\d+ of \d+ test images have a near duplicate in training or validation "
                                   r"\(written before near-duplicate grouping\); a new training run")
            resplit = prepare_datalist("busi", str(root), str(stored), replace=True, **settings)
            self.assertEqual(resplit["audit"]["leaked_test_images"], 0)
            self.assertIn("near_duplicates", json.loads(stored.read_text()))


if __name__ == "__main__":
    unittest.main()
