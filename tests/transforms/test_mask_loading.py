"""Lesion masks from datalist records: merge rules, PNG channel handling, size checks, no-label images."""

import os
import tempfile
import unittest

import numpy as np
import torch
from mammo_factory import write_dicom, write_png

from breastseg.transforms import LoadBreastImage, LoadBreastImaged, LoadLesionMask, LoadLesionMaskd, read_png

torch.set_num_threads(1)
SHAPE = (33, 47)


def _blob(r0, r1, c0, c1, value=255):
    mask = np.zeros(SHAPE, np.uint8)
    mask[r0:r1, c0:c1] = value
    return mask


class TestMaskLoading(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name
        grey = (np.arange(SHAPE[0] * SHAPE[1]) % 200).reshape(SHAPE).astype(np.uint8)
        self.image_png = write_png(f"{self.dir}/benign (4).png", np.dstack([grey] * 3))
        self.image_dcm = write_dicom(f"{self.dir}/full.dcm", grey.astype(np.uint16) * 100, pixel_spacing=(0.05, 0.05))

    def _load(self, label, label_format, image):
        sample = {"image": image, "label": label, "label_format": label_format}
        return LoadLesionMaskd("label")(LoadBreastImaged("image")(sample))

    def test_rgb_png_image_becomes_one_grey_channel(self):
        image = LoadBreastImage()(self.image_png)
        self.assertEqual(tuple(image.shape), (1, *SHAPE))
        expected = (np.arange(SHAPE[0] * SHAPE[1]) % 200).reshape(SHAPE)
        np.testing.assert_array_equal(image[0].numpy(), expected)
        self.assertFalse(image.meta["spacing_known"])

    def test_png_masks_are_reduced_binarised_and_ored(self):
        rgba = np.dstack([_blob(2, 6, 2, 6)] * 3 + [np.full(SHAPE, 255, np.uint8)])  # opaque alpha
        first = write_png(f"{self.dir}/benign (4)_mask.png", rgba, "RGBA")
        transparent = np.dstack([_blob(20, 25, 30, 40)] * 3 + [np.zeros(SHAPE, np.uint8)])  # alpha all off
        second = write_png(f"{self.dir}/benign (4)_mask_1.png", transparent, "RGBA")
        faint = write_png(f"{self.dir}/benign (4)_mask_2.png", _blob(10, 12, 10, 12, value=127))  # not > 127
        out = self._load([first, second, faint], "png", self.image_png)
        label = out["label"]
        self.assertEqual(tuple(label.shape), (1, *SHAPE))
        self.assertEqual(label.dtype, torch.float32)
        expected = (_blob(2, 6, 2, 6) > 0) | (_blob(20, 25, 30, 40) > 0)
        np.testing.assert_array_equal(label[0].numpy(), expected.astype(np.float32))
        torch.testing.assert_close(label.affine, out["image"].affine)

    def test_png_mask_with_partial_alpha_is_an_error(self):
        alpha = np.full(SHAPE, 255, np.uint8)
        alpha[:5] = 0
        path = write_png(f"{self.dir}/odd_mask.png", np.dstack([_blob(2, 6, 2, 6)] * 3 + [alpha]), "RGBA")
        with self.assertRaisesRegex(ValueError, "odd_mask.png"):
            self._load(path, "png", self.image_png)

    def test_dicom_masks_binarise_above_zero_and_or(self):
        first = write_dicom(f"{self.dir}/roi1.dcm", _blob(1, 4, 1, 4, value=1).astype(np.uint16))
        second = write_dicom(f"{self.dir}/roi2.dcm", _blob(10, 20, 30, 33, value=255).astype(np.uint16))
        label = self._load([first, second], "dicom", self.image_dcm)["label"]
        expected = (_blob(1, 4, 1, 4) > 0) | (_blob(10, 20, 30, 33) > 0)
        np.testing.assert_array_equal(label[0].numpy() > 0, expected)
        self.assertEqual(set(np.unique(label.numpy())), {0.0, 1.0})
        np.testing.assert_allclose(label.affine.diag().numpy(), [0.05, 0.05, 1, 1])

    def test_size_mismatch_names_both_files_and_sizes(self):
        wrong = write_dicom(f"{self.dir}/roi_wrong.dcm", np.zeros((33, 46), np.uint16))
        with self.assertRaises(ValueError) as ctx:
            self._load(wrong, "dicom", self.image_dcm)
        message = str(ctx.exception)
        for part in ("roi_wrong.dcm", "full.dcm", "33x46", "33x47"):
            self.assertIn(part, message)

    def test_no_label_gives_an_empty_mask_of_the_image_size(self):
        label = self._load(None, "none", self.image_dcm)["label"]
        self.assertEqual(tuple(label.shape), (1, *SHAPE))
        self.assertEqual(float(label.sum()), 0.0)

    def test_bad_records(self):
        image = LoadBreastImage()(self.image_dcm)
        with self.assertRaisesRegex(ValueError, "label_format"):
            LoadLesionMask()(None, "nifti", image)
        with self.assertRaisesRegex(ValueError, "needs a label path"):
            LoadLesionMask()(None, "png", image)
        with self.assertRaisesRegex(FileNotFoundError, "gone.png"):
            LoadLesionMask()(f"{self.dir}/gone.png", "png", image)
        with self.assertRaisesRegex(KeyError, "label_format"):
            LoadLesionMaskd("label")({"image": image, "label": None})

    def test_corrupt_png_names_the_file(self):
        path = f"{self.dir}/broken.png"
        with open(path, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        with self.assertRaisesRegex(ValueError, "broken.png"):
            read_png(path)

    def test_reading_leaves_files_unchanged(self):
        mask = write_png(f"{self.dir}/m.png", _blob(2, 6, 2, 6))
        before = {p: os.stat(p).st_mtime_ns for p in (mask, self.image_png)}
        contents = {p: open(p, "rb").read() for p in before}
        self._load(mask, "png", self.image_png)
        for path in before:
            self.assertEqual(os.stat(path).st_mtime_ns, before[path])
            self.assertEqual(open(path, "rb").read(), contents[path])

    def test_inbreast_xml_is_rasterised_at_the_image_size(self):
        try:
            from breastseg.transforms.io import inbreast_xml
        except ImportError:
            self.skipTest("breastseg.transforms.io.inbreast_xml has not landed yet")
        xml = f"{self.dir}/20586908.xml"
        points = "".join(f"<string>({x:.6f}, {y:.6f})</string>" for x, y in ((10, 5), (30, 5), (30, 20), (10, 20)))
        roi = (
            "<dict><key>Name</key><string>Mass</string><key>NumberOfPoints</key><integer>4</integer>"
            f"<key>Point_px</key><array>{points}</array><key>Type</key><integer>15</integer></dict>"
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict><key>Images</key><array><dict>'
            "<key>ImageIndex</key><integer>0</integer><key>NumberOfROIs</key><integer>1</integer>"
            f"<key>ROIs</key><array>{roi}</array></dict></array></dict></plist>\n"
        )
        with open(xml, "w") as fh:
            fh.write(body)
        rois = inbreast_xml.read_inbreast_rois(xml)
        label = self._load(xml, "inbreast-xml", self.image_dcm)["label"]
        self.assertEqual(tuple(label.shape), (1, *SHAPE))
        expected = inbreast_xml.rasterize_inbreast_rois(rois, shape=SHAPE, kinds=("mass",))
        np.testing.assert_array_equal(label[0].numpy() > 0, expected)
        self.assertTrue(label[0, 10, 20] > 0 and label[0, 30, 40] == 0)  # (x=20, y=10) inside, far corner outside


if __name__ == "__main__":
    unittest.main()
