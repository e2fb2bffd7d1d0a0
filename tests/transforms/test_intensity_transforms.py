"""Intensity transforms against their references: scipy's Wiener, MONAI's histogram equalisation,
scikit-image's CLAHE; dictionary twins; parameter validation."""

import unittest

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import HistogramNormalize
from parameterized import parameterized
from scipy.signal import wiener
from skimage.exposure import equalize_adapthist

from breastseg.transforms import (
    CLAHE,
    CLAHEd,
    HistogramEqualize,
    HistogramEqualized,
    ScaleByBitDepth,
    ScaleByBitDepthd,
    WienerFilter,
    WienerFilterd,
)

torch.set_num_threads(1)
RNG = np.random.default_rng(3)


def _textured(rows=63, cols=45):
    rr, cc = np.mgrid[0:rows, 0:cols]
    image = 2000 + 800 * np.sin(rr / 5.0) * np.cos(cc / 7.0) + RNG.normal(0, 150, (rows, cols))
    image[20:30, 10:18] = 6000  # a flat bright block: zero local variance inside
    return np.clip(image, 0, 65535).round()


class TestWiener(unittest.TestCase):
    @parameterized.expand([((3, 3), None), ((5, 5), None), ((3, 7), None), ((5, 3), 2500.0), ((1, 3), None)])
    def test_matches_scipy(self, window, noise):
        image = _textured()
        expected = wiener(image, window, noise)
        out = WienerFilter(window=window, noise=noise)(torch.as_tensor(image, dtype=torch.float32)[None])
        np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-2)

    def test_keeps_metadata_and_channels(self):
        image = MetaTensor(torch.as_tensor(np.stack([_textured(), _textured()]), dtype=torch.float32), affine=torch.diag(torch.tensor([0.07, 0.07, 1.0, 1.0], dtype=torch.float64)))
        out = WienerFilterd("image", window=3)({"image": image})["image"]
        self.assertIsInstance(out, MetaTensor)
        self.assertEqual(tuple(out.shape), (2, 63, 45))
        torch.testing.assert_close(out.affine, image.affine)

    def test_degenerate_inputs_stay_finite(self):
        out = WienerFilter()(torch.full((1, 9, 9), 5.0))
        self.assertTrue(torch.isfinite(out).all())
        torch.testing.assert_close(out[:, 1:-1, 1:-1], torch.full((1, 7, 7), 5.0))  # borders see scipy's zero padding
        image = torch.as_tensor(_textured(), dtype=torch.float32)[None]
        torch.testing.assert_close(WienerFilter(window=1)(image), image)  # 1x1: nothing to average

    @parameterized.expand([(4,), ((3, 2),), (0,)])
    def test_rejects_even_or_empty_windows(self, window):
        with self.assertRaises(ValueError):
            WienerFilter(window=window)


class TestHistogramEqualize(unittest.TestCase):
    @parameterized.expand([(256,), (64,), (1000,)])
    def test_same_mapping_as_monai_histogram_normalize(self, bins):
        image = torch.as_tensor(_textured(), dtype=torch.float32)[None]
        expected = HistogramNormalize(num_bins=bins, min=0, max=1)(image)
        out = HistogramEqualize(num_bins=bins)(image)
        np.testing.assert_allclose(out.numpy(), np.asarray(expected), atol=1e-5)

    def test_flattens_the_histogram(self):
        skewed = torch.as_tensor(RNG.exponential(500.0, (64, 64)), dtype=torch.float32)[None]
        out = HistogramEqualize()(skewed)[0].numpy()
        self.assertAlmostEqual(out.min(), 0.0, places=5)
        self.assertAlmostEqual(out.max(), 1.0, places=5)
        counts, _ = np.histogram(out, bins=4, range=(0, 1))
        self.assertLess(counts.max() / counts.min(), 1.5)  # equalised: quartiles about equally full
        self.assertTrue(np.all(np.diff(out.ravel()[np.argsort(skewed[0].numpy().ravel())]) >= -1e-6))  # monotone

    def test_dictionary_twin_and_validation(self):
        image = torch.as_tensor(_textured(), dtype=torch.float32)[None]
        out = HistogramEqualized("image", out_min=-1, out_max=1)({"image": image})["image"]
        self.assertAlmostEqual(float(out.min()), -1.0, places=5)
        with self.assertRaises(ValueError):
            HistogramEqualize(num_bins=1)
        with self.assertRaises(ValueError):
            HistogramEqualize(out_min=1, out_max=0)


class TestCLAHE(unittest.TestCase):
    @parameterized.expand([(0.01,), (0.03,)])
    def test_clip_limit_means_what_it_means_in_scikit_image(self, clip):
        image = _textured(256, 192)
        ours = CLAHE(clip_limit=clip, tile_grid=8)(torch.as_tensor(image, dtype=torch.float32)[None])[0].numpy()
        scaled = (image - image.min()) / (image.max() - image.min())

        def distance(sk_clip):
            reference = equalize_adapthist(scaled, kernel_size=(32, 24), clip_limit=sk_clip, nbins=256)
            return np.abs(ours - reference).mean()

        same = distance(clip)
        self.assertLess(same, 0.04)
        self.assertLess(same, distance(clip / 2))
        self.assertLess(same, distance(clip * 3))

    def test_raises_local_contrast_within_range(self):
        cc = np.mgrid[0:128, 0:128][1]
        faint = RNG.normal(0, 30, (128, 128)) + np.where(cc < 64, 1000, 4000)  # faint texture on two plateaus
        out = CLAHE(clip_limit=0.02, tile_grid=4)(torch.as_tensor(faint, dtype=torch.float32)[None])[0].numpy()
        self.assertGreaterEqual(out.min(), 0.0)
        self.assertLessEqual(out.max(), 1.0)
        before = faint[:, :40].std() / (faint.max() - faint.min())
        self.assertGreater(out[:, :40].std(), 3 * before)

    def test_sixteen_bit_quantisation_and_dictionary(self):
        image = torch.as_tensor(_textured(), dtype=torch.float32)[None]
        out = CLAHEd("image", num_bins=65536, tile_grid=(2, 3))({"image": image})["image"]
        self.assertEqual(out.dtype, torch.float32)
        self.assertGreater(len(np.unique(out.numpy())), 256)  # more grey levels than the 8-bit path

    @parameterized.expand([(dict(clip_limit=0.0),), (dict(clip_limit=2.0),), (dict(tile_grid=0),), (dict(num_bins=1024),)])
    def test_validation(self, kwargs):
        with self.assertRaises(ValueError):
            CLAHE(**kwargs)


class TestScaleByBitDepth(unittest.TestCase):
    def test_scales_by_the_stated_depth_and_clips(self):
        image = MetaTensor(torch.tensor([[[0.0, 4095.0, 5000.0]]]), meta={"bit_depth": 12, "filename_or_obj": "a.dcm"})
        out = ScaleByBitDepthd("image")({"image": image})["image"]
        torch.testing.assert_close(out.as_tensor(), torch.tensor([[[0.0, 1.0, 1.0]]]))
        self.assertEqual(out.meta["filename_or_obj"], "a.dcm")

    def test_an_image_without_a_bit_depth_is_refused_with_its_file_named(self):
        with self.assertRaisesRegex(ValueError, "float.tif: its file states no bit depth"):
            ScaleByBitDepth()(MetaTensor(torch.ones(1, 2, 2), meta={"bit_depth": "", "filename_or_obj": "float.tif"}))
        with self.assertRaisesRegex(ValueError, "no bit depth"):
            ScaleByBitDepth()(torch.ones(1, 2, 2))


if __name__ == "__main__":
    unittest.main()
