"""INbreast indexer on a generated release (cases=4, large plate 160 rows).

Expected counts follow from the generator's rules: cases 0, 1, 3 have both sides (4 images), case 2
one side (2 images) -> 14 images; each affected side has one mass per view and case 1's CC two -> 8
mass images, 9 masses; case 0's other side has calcification-only XMLs -> 10 annotated images, 4
normal; odd cases use the small plate (3328x2560 scaled: 130x100), even ones the large (160x130).
"""

from __future__ import annotations

import plistlib
import re
import shutil
import tempfile
import unittest
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import RLELossless

from breastseg.transforms import MissingDecoderError, read_dicom
from breastseg.workflows.data.datalist import build_datalist

from breastseg.transforms.io.inbreast_xml import rasterize_inbreast_rois, read_inbreast_rois
from breastseg.workflows.data.indexers import index_dataset
from breastseg.workflows.data.synthetic.inbreast import generate


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


class InbreastFixture(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.root = cls.tmp / "inbreast"
        generate(cls.root, cases=4, seed=5, rows=160)
        cls.release = cls.root / "INbreast Release 1.0"

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)


def without_decoder_plugin(test: unittest.TestCase, transfer_syntax: str, label: str) -> None:
    """Take ``label`` out of pydicom's decoder of ``transfer_syntax`` until ``test`` ends, as on a machine
    where it is not installed (pydicom 3 decodes RLE itself, so no other machine lacks an RLE decoder)."""
    decoder = get_decoder(transfer_syntax)
    function = decoder._available.get(label)
    if function is None:
        test.skipTest(f"pydicom has no {label!r} plugin for {transfer_syntax} here")
    decoder.remove_plugin(label)
    test.addCleanup(decoder.add_plugin, label, (function.__module__, function.__name__))


class TestUndecodableDicom(InbreastFixture):
    def copy_release(self) -> Path:
        target = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, target)
        shutil.copytree(self.root, target / "inbreast")
        return target / "inbreast"

    def normal_image(self, root: Path) -> Path:
        normal = next(r for r in index_dataset("inbreast", root).records if r["label"] is None)
        return Path(normal["image"])

    def test_rle_image_without_its_decoder_is_quarantined_before_any_split(self):
        root = self.copy_release()
        image = self.normal_image(root)
        ds = pydicom.dcmread(image)
        ds.compress(RLELossless)  # pydicom's own RLE encoder
        ds.save_as(image, enforce_file_format=True)
        without_decoder_plugin(self, RLELossless, "pydicom")
        with self.assertRaises(MissingDecoderError):  # what stopped training at epoch 0
            read_dicom(image)
        datalist = build_datalist("inbreast", root, seed=0, val_fraction=0.25, test_fraction=0.25)
        in_splits = [r["image"] for name in ("training", "validation", "test") for r in datalist[name]]
        self.assertNotIn(str(image), in_splits)
        self.assertEqual(len(in_splits), 13)
        [entry] = datalist["quarantine"]
        self.assertEqual(entry["path"], str(image))
        self.assertIn(f"transfer syntax {RLELossless} (RLE Lossless)", entry["reason"])
        self.assertIn("pip install pylibjpeg pylibjpeg-rle", entry["reason"])

    def test_rle_image_with_a_corrupt_payload_is_quarantined_and_strict_fails(self):
        import json
        import subprocess
        import sys

        import numpy as np
        from pydicom.encaps import encapsulate

        root = self.copy_release()
        normals = [Path(r["image"]) for r in index_dataset("inbreast", root).records if r["label"] is None]
        intact, corrupt = normals[:2]
        for image in (intact, corrupt):  # both RLE Lossless, pydicom's own encoder: its decoder is installed
            ds = pydicom.dcmread(image)
            ds.compress(RLELossless)
            ds.save_as(image, enforce_file_format=True)
        ds = pydicom.dcmread(corrupt)
        ds.PixelData = encapsulate([np.random.default_rng(0).bytes(4096)])  # a garbage frame, well encapsulated
        ds.save_as(corrupt, enforce_file_format=True)
        with self.assertRaises(ValueError):  # what stopped training at its first batch
            read_dicom(corrupt)
        before = snapshot(root)
        out = root.parent / "inbreast.json"
        done = subprocess.run([str(Path(sys.executable).with_name("breastseg")), "datalist", "--dataset", "inbreast",
                               "--root", str(root), "--out", str(out), "--strict"], capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 3, done.stderr)
        datalist = json.loads(out.read_text())
        [entry] = datalist["quarantine"]
        self.assertEqual(entry["path"], str(corrupt))
        self.assertIn("corrupt pixel data: RLE Lossless decoding failed", entry["reason"])
        self.assertNotIn("\n", entry["reason"])
        self.assertIn(str(corrupt), [q["path"] for q in index_dataset("inbreast", root).quarantine])  # by the indexer
        self.assertIn(f"{corrupt}: corrupt pixel data", done.stdout)
        in_splits = [r["image"] for name in ("training", "validation", "test") for r in datalist[name]]
        self.assertIn(str(intact), in_splits)  # an RLE file that decodes is kept
        self.assertEqual(snapshot(root), before)

    def test_jpeg_ls_image_without_any_installed_decoder_is_quarantined(self):
        from pydicom.data import get_testdata_file

        source = get_testdata_file("JPEGLSNearLossless_16.dcm")
        if get_decoder(pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID).is_available:
            self.skipTest("a JPEG-LS decoder is installed in this environment")
        root = self.copy_release()
        image = self.normal_image(root)
        shutil.copyfile(source, image)
        result = index_dataset("inbreast", root)
        self.assertNotIn(str(image), [r["image"] for r in result.records])
        [entry] = result.quarantine
        self.assertEqual(entry["path"], str(image))
        self.assertRegex(entry["reason"], r"no installed decoder for transfer syntax 1\.2\.840\.10008\.1\.2\.4\.81 .*pyjpegls")


class TestFindingWithoutAnnotation(InbreastFixture):
    def test_birads_3_or_more_without_xml_is_quarantined_not_kept_as_normal(self):
        root = Path(tempfile.mkdtemp()) / "inbreast"
        self.addCleanup(shutil.rmtree, root.parent)
        shutil.copytree(self.root, root)
        release = root / "INbreast Release 1.0"
        records = index_dataset("inbreast", root).records
        # a BI-RADS 5 mass image whose XML went missing
        mass = next(r for r in records if r["birads"] == "5" and r["lesion_count"] > 0)
        Path(mass["label"]).unlink()
        # a normal image whose table row says BI-RADS 3 (probably benign: a finding all the same)
        normal = next(r for r in records if r["label"] is None and r["birads"] == "1")
        table = release / "INbreast.csv"
        text = table.read_bytes()
        row = next(line for line in text.split(b"\r\n") if f";{normal['case_id']};".encode() in line)
        table.write_bytes(text.replace(row, row[: row.rindex(b";") + 1] + b"3"))

        result = index_dataset("inbreast", root)
        kept = {r["case_id"]: r for r in result.records}
        quarantined = {q["case_id"]: q for q in result.quarantine}
        for record, birads in ((mass, "5"), (normal, "3")):
            self.assertNotIn(record["case_id"], list(kept))
            entry = quarantined[record["case_id"]]
            self.assertEqual(entry["path"], record["image"])
            self.assertIn(f"BI-RADS {birads} reports a finding but there is no annotation {record['case_id']}.xml", entry["reason"])
        self.assertEqual(len(kept), len(records) - 2)
        self.assertTrue(all(r["birads"] in ("1", "2") for r in kept.values() if r["label"] is None))


class TestInbreastIndex(InbreastFixture):
    def test_exact_counts(self):
        result = index_dataset("inbreast", self.root)
        records = result.records
        self.assertEqual(result.quarantine, [])
        self.assertEqual(len(records), 14)
        self.assertEqual(len({r["patient_id"] for r in records}), 4)
        self.assertEqual(sum(r["lesion_count"] for r in records), 9)
        self.assertEqual(sum(r["lesion_count"] > 0 for r in records), 8)
        self.assertEqual(sum(r["label"] is not None for r in records), 10)
        flags = Counter(flag for r in records for flag in r["flags"])
        self.assertEqual(
            flags, Counter({"normal": 4, "spacing-nominal": 2, "unknown-roi-name": 1, "xml-points-outside-image": 1})
        )
        self.assertEqual(Counter((r["rows"], r["columns"]) for r in records), Counter({(160, 130): 6, (130, 100): 8}))

    def test_record_fields(self):
        records = index_dataset("inbreast", self.root).records
        for record in records:
            match = re.match(r"^(\d{8})_([0-9a-f]{16})_MG_([LR])_(CC|ML)_ANON\.dcm$", Path(record["image"]).name)
            self.assertIsNotNone(match)
            self.assertEqual((record["case_id"], record["patient_id"], record["laterality"]), match.group(1, 2, 3))
            self.assertEqual(record["view"], {"CC": "CC", "ML": "MLO"}[match.group(4)])
            self.assertEqual((record["dataset"], record["modality"]), ("inbreast", "MG"))
            if record["label"] is None:
                self.assertEqual((record["label_format"], record["pathology"], record["lesion_count"]), ("none", "normal", 0))
            else:
                self.assertEqual((record["label_format"], record["roi_kinds"]), ("inbreast-xml", ["mass"]))
        self.assertEqual(sum(r["acr"] is None for r in records), 1)  # the blank (space-only) ACR cell
        self.assertEqual({type(r["birads"]) for r in records}, {str})
        # PixelSpacing or ImagerPixelSpacing on 12 files; 2 state none and get INbreast's nominal 0.07 mm
        nominal = [r for r in records if "spacing-nominal" in r["flags"]]
        self.assertEqual(len(nominal), 2)
        self.assertTrue(all(r["spacing"] == [0.07, 0.07] or tuple(r["spacing"]) == (0.07, 0.07) for r in nominal))
        self.assertTrue(all(r["spacing"] is not None and r["default_spacing"] == [0.07, 0.07] for r in records))

    def test_mask_near_the_edge_of_a_small_image(self):
        record = next(r for r in index_dataset("inbreast", self.root).records if "xml-points-outside-image" in r["flags"])
        header = pydicom.dcmread(record["image"], stop_before_pixels=True)
        self.assertEqual((header.Rows, header.Columns), (130, 100))
        rois = read_inbreast_rois(record["label"])
        mask = rasterize_inbreast_rois(rois, (record["rows"], record["columns"]))
        self.assertEqual(mask.shape, (130, 100))
        edge_column = 0 if record["laterality"] == "L" else 99
        self.assertTrue(mask[:, edge_column].any(), "the mass is clipped at the chest wall, not dropped")

    def test_roi_kinds_option(self):
        records = index_dataset("inbreast", self.root, roi_kinds=("mass", "calcification")).records
        self.assertGreater(sum(r["lesion_count"] for r in records), 9)
        with self.assertRaisesRegex(ValueError, "roi_kinds"):
            index_dataset("inbreast", self.root, roi_kinds=("tumour",))

    def test_lf_only_table_and_release_folder_as_root(self):
        copy = self.tmp / "lf"
        shutil.copytree(self.release, copy)
        table = copy / "INbreast.csv"
        table.write_bytes(table.read_bytes().replace(b"\r\n", b"\n"))
        crlf = index_dataset("inbreast", self.root).records
        lf = index_dataset("inbreast", copy).records
        self.assertEqual([(r["case_id"], r["acr"], r["birads"]) for r in lf], [(r["case_id"], r["acr"], r["birads"]) for r in crlf])

    def test_pectoral_xmls_are_skipped(self):
        pectoral = list((self.release / "PectoralMuscle").rglob("*.xml"))
        self.assertGreater(len(pectoral), 0)
        self.assertTrue(all((self.release / "AllXML" / p.name).exists() for p in pectoral))
        labels = {r["label"] for r in index_dataset("inbreast", self.root).records}
        self.assertFalse(labels & {str(p) for p in pectoral})

    def test_reading_changes_no_file(self):
        before = snapshot(self.root)
        index_dataset("inbreast", self.root)
        self.assertEqual(snapshot(self.root), before)

    def test_missing_release(self):
        with self.assertRaisesRegex(FileNotFoundError, "AllDICOMs"):
            index_dataset("inbreast", self.tmp)


class TestInbreastBadInput(InbreastFixture):
    def setUp(self):
        self.copy = Path(tempfile.mkdtemp()) / "release"
        shutil.copytree(self.release, self.copy)
        self.records = {r["case_id"]: r for r in index_dataset("inbreast", self.copy).records}
        self.annotated = sorted(case for case, r in self.records.items() if r["lesion_count"] > 0)

    def tearDown(self):
        shutil.rmtree(self.copy.parent)

    def quarantine(self) -> dict[str, dict]:
        return {entry["case_id"]: entry for entry in index_dataset("inbreast", self.copy).quarantine}

    def xml(self, case: str) -> Path:
        return Path(self.records[case]["label"])

    def test_malformed_xml(self):
        case = self.annotated[0]
        self.xml(case).write_text("<plist><dict><key>Images")
        entry = self.quarantine()[case]
        self.assertEqual(entry["path"], str(self.xml(case)))
        self.assertIn(str(self.xml(case)), entry["reason"])

    def test_number_of_points_mismatch(self):
        case = self.annotated[1]
        document = plistlib.loads(self.xml(case).read_bytes())
        document["Images"][0]["ROIs"][0]["NumberOfPoints"] += 1
        self.xml(case).write_bytes(plistlib.dumps(document, sort_keys=True))
        self.assertIn("NumberOfPoints", self.quarantine()[case]["reason"])

    def test_mass_entirely_outside_the_image(self):
        case = self.annotated[2]
        document = plistlib.loads(self.xml(case).read_bytes())
        roi = document["Images"][0]["ROIs"][0]
        roi["Point_px"] = [f"({5000 + i:.6f}, {5000 + 2 * i % 7:.6f})" for i in range(len(roi["Point_px"]))]
        self.xml(case).write_bytes(plistlib.dumps(document, sort_keys=True))
        self.assertIn("covers no pixel", self.quarantine()[case]["reason"])

    def test_corrupt_dicom(self):
        case = self.annotated[3]
        Path(self.records[case]["image"]).write_bytes(b"\0" * 300)
        entry = self.quarantine()[case]
        self.assertEqual(entry["path"], self.records[case]["image"])
        self.assertIn("unreadable DICOM", entry["reason"])

    def test_missing_dicom_quarantines_its_xml_and_table_row(self):
        case = self.annotated[0]
        Path(self.records[case]["image"]).unlink()
        entries = [e for e in index_dataset("inbreast", self.copy).quarantine if e["case_id"] == case]
        self.assertEqual(sorted(e["path"] for e in entries), sorted([str(self.xml(case)), str(self.copy / "INbreast.csv")]))

    def test_unexpected_file_name(self):
        image = Path(self.records[self.annotated[0]]["image"])
        image.rename(image.with_name("scan.dcm"))
        entry = self.quarantine()["scan"]
        self.assertIn("_MG_", entry["reason"])


if __name__ == "__main__":
    unittest.main()
