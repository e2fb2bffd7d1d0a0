"""DICOM reading: pydicom and ITK agree on pixels and spacing; LUT/photometric/decoder branches."""

import hashlib
import unittest

import numpy as np
import pydicom
import torch
from mammo_factory import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, write_dicom
from parameterized import parameterized
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from breastseg.transforms import LoadBreastImage, MissingDecoderError, read_dicom, read_dicom_header, read_dicom_itk

torch.set_num_threads(1)
RNG = np.random.default_rng(7)
STORED = RNG.integers(0, 4096, (37, 23)).astype(np.uint16)  # odd, non-square: catches transposes

WRITTEN_CASES = [
    ("mono2_pixelspacing", dict(pixel_spacing=(0.1, 0.2)), (0.1, 0.2), "PixelSpacing"),
    ("mono1_imagerspacing", dict(photometric="MONOCHROME1", imager_spacing=(0.07, 0.09)), (0.07, 0.09), "ImagerPixelSpacing"),
    ("both_prefers_pixelspacing", dict(pixel_spacing=(0.1, 0.2), imager_spacing=(0.07, 0.09)), (0.1, 0.2), "PixelSpacing"),
    ("no_spacing_with_slope", dict(slope=2.0, intercept=-100), None, None),
    ("mono1_12bit_slope", dict(photometric="MONOCHROME1", bits_stored=12, slope=0.5, intercept=10), None, None),
]


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _testdata(name):
    path = get_testdata_file(name)
    if path is None:
        raise unittest.SkipTest(f"pydicom test file {name} is not installed")
    return path


class TestWrittenDicom(unittest.TestCase):
    def setUp(self):
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    @parameterized.expand(WRITTEN_CASES)
    def test_pydicom_and_itk_agree(self, name, kwargs, spacing, source):
        path = write_dicom(f"{self.tmp.name}/{name}.dcm", STORED, **kwargs)
        before = _digest(path)
        a = LoadBreastImage(reader="pydicom")(path)
        b = LoadBreastImage(reader="itk")(path)
        self.assertEqual(tuple(a.shape), (1, 37, 23))
        self.assertEqual(a.dtype, torch.float32)
        torch.testing.assert_close(a.as_tensor(), b.as_tensor(), rtol=0, atol=1e-3)
        torch.testing.assert_close(a.affine, b.affine)
        self.assertEqual(a.meta["spacing_known"], spacing is not None)
        self.assertEqual(b.meta["spacing_known"], spacing is not None)
        self.assertEqual(a.meta["spacing_source"], source or "")  # "" = not stated (collatable)
        expected_diag = [*(spacing or (1.0, 1.0)), 1.0, 1.0]
        np.testing.assert_allclose(a.affine.diag().numpy(), expected_diag)
        self.assertEqual(_digest(path), before, "reading modified the file")

    def test_pixel_pipeline_values(self):
        mono2 = read_dicom(write_dicom(f"{self.tmp.name}/m2.dcm", STORED, slope=2.0, intercept=-100)).array
        np.testing.assert_allclose(mono2, STORED * 2.0 - 100)
        mono1 = read_dicom(write_dicom(f"{self.tmp.name}/m1.dcm", STORED, photometric="MONOCHROME1", bits_stored=12)).array
        np.testing.assert_allclose(mono1, 4095.0 - STORED)  # bright = dense after inversion

    def test_voi_is_off_by_default_and_optional(self):
        path = write_dicom(f"{self.tmp.name}/w.dcm", STORED, window=(2000, 1000))
        raw = read_dicom(path)
        np.testing.assert_allclose(raw.array, STORED)  # 16-bit range kept
        windowed = read_dicom(path, apply_voi=True)
        ds = pydicom.dcmread(path)
        expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
        np.testing.assert_allclose(windowed.array, expected, rtol=1e-6)
        self.assertTrue(windowed.meta["voi_applied"])
        with self.assertRaises(ValueError):
            LoadBreastImage(reader="itk", apply_voi=True)

    def test_no_patient_identifiers_in_metadata(self):
        path = write_dicom(f"{self.tmp.name}/id.dcm", STORED, pixel_spacing=(0.1, 0.1))
        for reader in ("pydicom", "itk"):
            text = repr(dict(LoadBreastImage(reader=reader)(path).meta))
            for secret in (PATIENT_NAME, "Doe", PATIENT_ID, PATIENT_BIRTH_DATE):
                self.assertNotIn(secret, text, reader)
        header = read_dicom_header(path)
        self.assertEqual((header["rows"], header["columns"]), (37, 23))
        self.assertNotIn(PATIENT_ID, repr(header))

    def test_bad_input_names_the_file(self):
        corrupt = f"{self.tmp.name}/corrupt.dcm"
        with open(corrupt, "wb") as fh:
            fh.write(b"not a dicom at all" * 10)
        with self.assertRaisesRegex(ValueError, "corrupt.dcm"):
            read_dicom(corrupt)
        truncated = f"{self.tmp.name}/truncated.dcm"
        with open(write_dicom(truncated, STORED), "rb") as fh:
            data = fh.read()
        with open(truncated, "wb") as fh:
            fh.write(data[: len(data) - 300])
        with self.assertRaisesRegex(ValueError, "truncated.dcm"):
            read_dicom(truncated)
        with self.assertRaisesRegex(FileNotFoundError, "missing.dcm"):
            read_dicom(f"{self.tmp.name}/missing.dcm")


class TestPydicomTestFiles(unittest.TestCase):
    def test_cr_monochrome1_imager_spacing(self):
        path = _testdata("6154")
        ds = pydicom.dcmread(path)
        self.assertEqual(ds.PhotometricInterpretation, "MONOCHROME1")
        image = read_dicom(path)
        self.assertEqual(image.meta["spacing"], (0.1, 0.1))
        self.assertEqual(image.meta["spacing_source"], "ImagerPixelSpacing")
        modality = apply_modality_lut(ds.pixel_array, ds)
        lo, hi = float(ds.RescaleIntercept), (2**ds.BitsStored - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(image.array, lo + hi - modality, rtol=1e-6)
        np.testing.assert_allclose(image.array, read_dicom_itk(path).array, atol=1e-3)

    @parameterized.expand([("MR_small.dcm",), ("CT_small.dcm",)])
    def test_modality_lut_and_itk_agree(self, name):
        path = _testdata(name)
        ds = pydicom.dcmread(path)
        image = read_dicom(path)
        np.testing.assert_allclose(image.array, apply_modality_lut(ds.pixel_array, ds))
        np.testing.assert_allclose(image.array, read_dicom_itk(path).array, atol=1e-3)
        self.assertEqual(image.meta["spacing"], tuple(float(v) for v in ds.PixelSpacing))

    def test_rle_decodes_like_uncompressed(self):
        np.testing.assert_array_equal(read_dicom(_testdata("MR_small_RLE.dcm")).array, read_dicom(_testdata("MR_small.dcm")).array)

    def test_jpeg2000_without_its_decoder_names_the_package(self):
        path = _testdata("JPEG2000.dcm")
        with self.assertRaisesRegex(MissingDecoderError, "pylibjpeg-openjpeg") as ctx:
            read_dicom(path, decoding_plugin="pylibjpeg")  # the pylibjpeg plugin is not installed here
        self.assertIn("JPEG2000.dcm", str(ctx.exception))

    def test_jpegls_without_any_decoder_names_the_package(self):
        path = _testdata("JPEGLSNearLossless_16.dcm")
        try:
            read_dicom(path)
        except MissingDecoderError as err:
            self.assertIn("pylibjpeg-libjpeg", str(err))
            self.assertIn("JPEGLSNearLossless_16.dcm", str(err))
        else:
            self.skipTest("a JPEG-LS decoder is installed in this environment")


if __name__ == "__main__":
    unittest.main()


def test_nominal_spacing_applies_only_when_the_file_states_none(tmp_path):
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from breastseg.transforms import LoadBreastImaged

    def write(path, spacing):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID, "MG"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 3, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if spacing:
            ds.PixelSpacing = list(spacing)
        ds.PixelData = np.arange(12, dtype=np.uint16).reshape(4, 3).tobytes()
        ds.save_as(path, enforce_file_format=True)

    write(tmp_path / "none.dcm", None)
    write(tmp_path / "stated.dcm", (0.1, 0.2))
    load = LoadBreastImaged("image")
    nominal = load({"image": str(tmp_path / "none.dcm"), "default_spacing": [0.07, 0.07]})
    assert "default_spacing" not in nominal
    assert nominal["image"].meta["spacing_known"] and nominal["image"].meta["spacing_source"] == "dataset default"
    assert np.allclose(np.diag(nominal["image"].affine.numpy())[:2], [0.07, 0.07])
    stated = load({"image": str(tmp_path / "stated.dcm"), "default_spacing": [0.07, 0.07]})
    assert np.allclose(np.diag(stated["image"].affine.numpy())[:2], [0.1, 0.2])
    unknown = load({"image": str(tmp_path / "none.dcm"), "default_spacing": None})
    assert not unknown["image"].meta["spacing_known"]
