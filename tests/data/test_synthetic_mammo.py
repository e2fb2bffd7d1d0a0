"""Synthetic mammography: the renderer and the CBIS-DDSM / INbreast layouts, byte-level where it matters."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import unittest
from pathlib import Path

import cv2
import numpy as np
import pydicom
from parameterized import parameterized

from breastseg.workflows.data.synthetic import generate as generate_layout
from breastseg.workflows.data.synthetic.cbis_ddsm import CALC_HEADER, MASS_HEADER
from breastseg.workflows.data.synthetic.cbis_ddsm import generate as generate_cbis
from breastseg.workflows.data.synthetic.inbreast import generate as generate_inbreast
from breastseg.workflows.data.synthetic.mammogram import MASS_STYLES, render_mammogram

MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
PLIST_PROLOG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
    b'<plist version="1.0">\n<dict>\n\t<key>Images</key>\n'
)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


class TestRenderer(unittest.TestCase):
    def test_masses_are_visible_at_low_contrast(self):
        contrasts = []
        for seed in range(6):
            style = list(MASS_STYLES)[seed % len(MASS_STYLES)]
            mammogram = render_mammogram(np.random.default_rng(seed), (320, 200), "MLO" if seed % 2 else "CC", seed % 3 == 0, 1 + seed % 4, (style,))
            image, mask = mammogram.image, mammogram.lesions[0].mask
            self.assertEqual((image.dtype, image.shape), (np.float32, (320, 200)))
            self.assertTrue(0.0 <= image.min() and image.max() <= 1.0)
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
            contrasts.append(image[mask].mean() - image[ring].mean())
        mean_contrast = float(np.mean(contrasts))
        self.assertGreater(mean_contrast, 0.02)  # visible ...
        self.assertLess(mean_contrast, 0.15)  # ... but a few percent of the range, not a bright blob

    def test_deterministic_and_outline_matches_mask(self):
        first = render_mammogram(np.random.default_rng(7), (256, 160), "CC", False, 2, ("lobulated", "round"), 1)
        again = render_mammogram(np.random.default_rng(7), (256, 160), "CC", False, 2, ("lobulated", "round"), 1)
        np.testing.assert_array_equal(first.image, again.image)
        self.assertEqual([lesion.kind for lesion in first.lesions], ["mass", "mass", "calcification"])
        for lesion in first.lesions:
            self.assertTrue(lesion.mask.any())
            rows, cols = np.nonzero(lesion.mask)
            self.assertTrue(lesion.outline[:, 0].min() <= cols.min() and cols.max() <= lesion.outline[:, 0].max())
            self.assertTrue(lesion.outline[:, 1].min() <= rows.min() and rows.max() <= lesion.outline[:, 1].max())
        self.assertFalse((first.lesions[0].mask & first.lesions[1].mask).any())

    @parameterized.expand([({"view": "LAT"}, "view"), ({"density": 5}, "density"), ({"masses": ("blob",)}, "blob"), ({"shape": (16, 16)}, "32x32")])
    def test_invalid_arguments(self, override, message):
        arguments = {"shape": (64, 48), "view": "CC", "chest_wall_left": True, "density": 2, "masses": ()}
        arguments.update(override)
        with self.assertRaisesRegex(ValueError, message):
            render_mammogram(np.random.default_rng(0), **arguments)


class TestCbisLayout(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.root = cls.tmp / "a"
        cls.summary = generate_cbis(cls.root, cases=6, seed=1, rows=128)
        cls.generate = staticmethod(generate_cbis)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_summary(self):
        expected = {"images": 16, "mass_images": 11, "calc_images": 5, "lesions": 18, "mass_lesions": 13, "calc_lesions": 5, "patients": 8}
        self.assertEqual({key: self.summary[key] for key in expected}, expected)
        self.assertIn("size-mismatched mask", self.summary["traps"])

    def test_csv_bytes(self):
        rows = {"mass_case_description_train_set.csv": 11, "mass_case_description_test_set.csv": 2,
                "calc_case_description_train_set.csv": 2, "calc_case_description_test_set.csv": 3}
        for name, count in rows.items():
            data = (self.root / name).read_bytes()
            header = MASS_HEADER if name.startswith("mass") else CALC_HEADER
            self.assertTrue(data.startswith(header.encode() + b"\r\n"))
            self.assertTrue(data.endswith(b"\r\n"))
            records = data.split(b"\r\n")[1:-1]
            self.assertEqual(len(records), count)
            for record in records:
                self.assertEqual(record.count(b'.dcm\n"'), 1, "one quoted path field ends in a bare LF")
                quoted = record.split(b'"')[1]
                # the quoted field is the ROI column (last) in mass files, the crop column (13th) in calc files
                last_quoted = record.endswith(b'\n"')
                self.assertEqual(last_quoted, name.startswith("mass"))
                self.assertEqual(len(record.split(b",")), 14)
                self.assertRegex(quoted.decode(), r"^(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)_\d/1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.\d+/1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.\d+/00000[01]\.dcm\n$")
        mass_train = (self.root / "mass_case_description_train_set.csv").read_bytes()
        self.assertIn(b"P_00001,1,LEFT,CC,1,mass,NA,NA,", mass_train)
        self.assertIn(b",0,Mass-Training_P_00001_LEFT_CC/", mass_train)  # subtlety 0
        self.assertIn(b"P_00043,0,LEFT,MLO,1,calcification,", (self.root / "calc_case_description_test_set.csv").read_bytes())

    def test_tcia_tree_and_dicom_attributes(self):
        self.assertTrue((self.root / "metadata.csv").read_text().startswith("Series UID,Collection,"))
        fulls = sorted(self.root.glob("CBIS-DDSM/*/*-DDSM-*/1.000000-full mammogram images-*/1-1.dcm"))
        self.assertEqual(len(fulls), 16)
        full = pydicom.dcmread(fulls[0])
        self.assertEqual(full.file_meta.TransferSyntaxUID, EXPLICIT_VR_LITTLE_ENDIAN)
        self.assertEqual((full.SOPClassUID, full.Modality, full.PhotometricInterpretation), (SECONDARY_CAPTURE, "MG", "MONOCHROME2"))
        self.assertEqual((full.BitsAllocated, full.pixel_array.dtype), (16, np.uint16))
        self.assertGreater(int(full.pixel_array.max()) - int(full.pixel_array.min()), 30000)
        self.assertNotIn("PixelSpacing", full)
        self.assertTrue(full.StudyInstanceUID.startswith("1.3.6.1.4.1.9590.100.1.2."))
        masks = [pydicom.dcmread(p) for p in self.root.glob("CBIS-DDSM/*_1/*/*ROI mask images*/1-*.dcm")]
        binary = [m for m in masks if m.BitsAllocated == 8]
        self.assertGreater(len(binary), 0)
        self.assertTrue(all(set(np.unique(m.pixel_array)) == {0, 255} for m in binary))

    def test_deterministic_bytes_and_classic_tree(self):
        again = self.tmp / "b"
        self.generate(again, cases=6, seed=1, rows=128)
        self.assertEqual(digests(again), digests(self.root))
        other = self.tmp / "c"
        self.generate(other, cases=6, seed=2, rows=128)
        self.assertNotEqual(digests(other), digests(self.root))
        classic = self.tmp / "d"
        self.generate(classic, cases=6, seed=1, rows=128, tree="classic")
        row = (classic / "mass_case_description_train_set.csv").read_bytes().split(b"\r\n")[1].decode()
        for path in re.findall(r"[\w-]+/[\d.]+/[\d.]+/\d+\.dcm", row):
            self.assertTrue((classic / path).is_file(), f"classic tree holds the CSV path {path}")

    def test_invalid_arguments(self):
        with self.assertRaisesRegex(ValueError, "not empty"):
            self.generate(self.root, cases=6, rows=128)
        with self.assertRaisesRegex(ValueError, "cases >= 6"):
            self.generate(self.tmp / "e", cases=3, rows=128)
        with self.assertRaisesRegex(ValueError, "tree"):
            self.generate(self.tmp / "f", cases=6, rows=128, tree="nbia")


class TestInbreastLayout(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.generate = staticmethod(generate_inbreast)
        cls.summary = generate_inbreast(cls.tmp / "a", cases=4, seed=4, rows=204)
        cls.release = cls.tmp / "a" / "INbreast Release 1.0"

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_summary(self):
        expected = {"images": 14, "annotated_images": 10, "mass_images": 8, "lesions": 9, "normal_images": 4, "small_plate_images": 8}
        self.assertEqual({key: self.summary[key] for key in expected}, expected)

    def test_file_names_sizes_and_headers(self):
        dicoms = sorted((self.release / "AllDICOMs").glob("*.dcm"))
        self.assertEqual(len(dicoms), 14)
        photometric, sizes = set(), set()
        for path in dicoms:
            self.assertRegex(path.name, r"^\d{8}_[0-9a-f]{16}_MG_[LR]_(CC|ML)_ANON\.dcm$")
            ds = pydicom.dcmread(path)
            self.assertEqual((ds.SOPClassUID, ds.Modality, ds.BitsAllocated, ds.BitsStored), (MAMMO_FOR_PRESENTATION, "MG", 16, 14))
            self.assertLessEqual(int(ds.pixel_array.max()), 16383)
            self.assertEqual(str(ds.PatientName), "ANON")
            photometric.add(ds.PhotometricInterpretation)
            sizes.add((ds.Rows, ds.Columns))
        self.assertEqual(photometric, {"MONOCHROME1", "MONOCHROME2"})
        self.assertEqual(sizes, {(204, 166), (166, 128)})  # 4084x3328 and 3328x2560 scaled by 204/4084

    def test_table_bytes(self):
        data = (self.release / "INbreast.csv").read_bytes()
        lines = data.split(b"\r\n")
        self.assertEqual(lines[0], b"Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads")
        self.assertEqual((lines[-1], len(lines)), (b"", 16))
        self.assertNotIn(b"\n", b"".join(lines))
        self.assertTrue(all(line.startswith(b"removed;removed;") for line in lines[1:-1]))
        self.assertIn(b";MLO;", data)
        self.assertNotIn(b";ML;", data)
        self.assertEqual(len(re.findall(rb";\d{8}; {10,};", data)), 1, "one ACR cell is a run of spaces")

    def test_xml_form_and_pectoral_folder(self):
        xmls = sorted((self.release / "AllXML").glob("*.xml"))
        self.assertEqual(len(xmls), 10)
        names = set()
        for path in xmls:
            data = path.read_bytes()
            self.assertTrue(data.startswith(PLIST_PROLOG))
            self.assertTrue(data.endswith(b"</plist>\n"))
            names.update(re.findall(rb"<key>Name</key>\n\t+<string>([^<]*)</string>", data))
            self.assertEqual(len(list((self.release / "AllDICOMs").glob(f"{path.stem}_*.dcm"))), 1)
        self.assertTrue({b"Mass", b"Spiculated Region", b"Calcification", b"Unnamed", b"Assymetry"} <= names)
        self.assertEqual(len(list((self.release / "PectoralMuscle").rglob("*.xml"))), 2)

    def test_deterministic_bytes(self):
        again = self.tmp / "b"
        self.generate(again, cases=4, seed=4, rows=204)
        self.assertEqual(digests(again), digests(self.tmp / "a"))

    def test_default_size_through_the_registry(self):
        summary = generate_layout("inbreast", self.tmp / "default", cases=2, seed=0)
        self.assertEqual((summary["images"], summary["mass_images"]), (8, 4))
        sizes = {(ds.Rows, ds.Columns) for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in Path(summary["root"]).glob("AllDICOMs/*.dcm"))}
        self.assertEqual(sizes, {(1024, 834), (834, 642)})


if __name__ == "__main__":
    unittest.main()
