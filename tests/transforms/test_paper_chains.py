"""Each paper's chain from a datalist sample: output shapes, dtypes and ranges, inference without a
label, training augmentation, and preprocess -> inverse -> the original image geometry."""

import tempfile
import unittest

import numpy as np
import torch
from mammo_factory import phantom_mammogram, write_dicom, write_png
from monai.utils import set_determinism
from PIL import Image
from scipy import ndimage

from breastseg.transforms import NoBreastFoundError, brems_net, connected_unets, hybrid_attention_us, two_stage_msf, unetplusplus_mammo

torch.set_num_threads(1)
ROWS, COLS = 160, 128


def _symmetry_of_window(full, crop):
    """``(k, flipped)`` such that ``crop`` (image and label) is a window of the whole sample rotated k times by
    90 degrees and then optionally flipped; ``None`` if it is no such window."""
    size = crop["image"].shape[-1]
    for k in range(4):
        for flipped in (False, True):
            image, label = (torch.rot90(full[key].as_tensor(), k, (1, 2)) for key in ("image", "label"))
            if flipped:
                image, label = torch.flip(image, (1,)), torch.flip(label, (1,))
            for r in range(image.shape[1] - size + 1):
                for c in range(image.shape[2] - size + 1):
                    if torch.equal(image[:, r : r + size, c : c + size], crop["image"].as_tensor()) and torch.equal(
                        label[:, r : r + size, c : c + size], crop["label"].as_tensor()
                    ):
                        return k, flipped
    return None


class TestPaperChains(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        root = cls.tmp.name
        image, mask = phantom_mammogram(ROWS, COLS, side="right")
        cls.mask = mask
        cls.mammo = {
            "image": write_dicom(f"{root}/full.dcm", image, pixel_spacing=(0.07, 0.07)),
            "label": [write_dicom(f"{root}/roi.dcm", mask.astype(np.uint16) * 255)],
            "label_format": "dicom",
        }
        us = (np.arange(90 * 70).reshape(90, 70) % 251).astype(np.uint8)
        us_mask = np.zeros((90, 70), np.uint8)
        us_mask[30:50, 20:45] = 255
        cls.us_mask = us_mask > 0
        cls.us = {
            "image": write_png(f"{root}/benign (1).png", np.dstack([us] * 3)),
            "label": [write_png(f"{root}/benign (1)_mask.png", us_mask)],
            "label_format": "png",
        }

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def _check(self, out, size, channels=1):
        for key, expected_channels in (("image", channels), ("label", 1)):
            self.assertEqual(tuple(out[key].shape), (expected_channels, *size), key)
            self.assertEqual(out[key].dtype, torch.float32, key)
        self.assertTrue(set(out["label"].unique().tolist()) <= {0.0, 1.0})
        self.assertGreater(float(out["label"].sum()), 0)
        self.assertGreaterEqual(float(out["image"].min()), -1e-6)
        self.assertLessEqual(float(out["image"].max()), 1 + 1e-6)

    def _check_inverse(self, chain, out, original_mask):
        back = chain.inverse(out)
        self.assertEqual(tuple(back["label"].shape[1:]), original_mask.shape)
        self.assertEqual(tuple(back["image"].shape[1:]), original_mask.shape)
        restored = back["label"][0].numpy() > 0.5
        overlap = (restored & original_mask).sum() / max(restored.sum(), original_mask.sum())
        return restored, overlap

    def test_brems_net(self):
        chain = brems_net(image_size=64)
        out = chain(dict(self.mammo))
        self._check(out, (64, 64))
        self.assertAlmostEqual(float(out["image"].pixdim[0]), 0.07 * ROWS / 64, places=5)  # spacing follows the resize
        _, overlap = self._check_inverse(chain, out, self.mask)
        self.assertGreater(overlap, 0.8)  # up to nearest-neighbour interpolation at 64 px

    def test_train_crop_gives_lesion_balanced_crops_of_the_resized_image(self):
        for whole, chain in ((brems_net(image_size=64), brems_net(image_size=64, train=True, train_crop=32)),
                             (connected_unets(image_size=64), connected_unets(image_size=64, train=True, train_crop=32))):
            full = whole(dict(self.mammo))
            windows = {
                (r, c): (full["image"][:, r : r + 32, c : c + 32], full["label"][:, r : r + 32, c : c + 32])
                for r in range(33) for c in range(33)
            }
            chain.set_random_state(seed=0)
            with_lesion = 0
            for _ in range(20):
                crops = chain(dict(self.mammo))
                self.assertEqual(len(crops), 1)
                crop = crops[0]
                self.assertEqual(tuple(crop["image"].shape), (1, 32, 32))
                matches = [k for k, (image, label) in windows.items()
                           if torch.equal(image, crop["image"].as_tensor()) and torch.equal(label, crop["label"].as_tensor())]
                self.assertTrue(matches, "the crop is not a window of the resized image and mask")
                with_lesion += bool(crop["label"].sum() > 0)
            self.assertTrue(8 <= with_lesion < 20, with_lesion)  # half centred on a lesion pixel, the rest anywhere
        self.assertEqual(len(brems_net(image_size=64, train_crop=32).transforms), len(brems_net(image_size=64).transforms))

    def test_crop_positive_fraction_sets_the_share_of_lesion_crops(self):
        def lesion_crops(fraction):
            chain = connected_unets(image_size=64, train=True, train_crop=16, crop_positive_fraction=fraction)
            chain.set_random_state(seed=0)
            return sum(bool(chain(dict(self.mammo))[0]["label"].sum() > 0) for _ in range(40))

        mostly_lesions, mostly_background = lesion_crops(0.9), lesion_crops(0.1)
        self.assertGreaterEqual(mostly_lesions, 34)  # 36 expected centred on a lesion pixel
        self.assertLessEqual(mostly_background, 16)  # 4 expected, plus backgrounds that graze the lesion
        for fraction in (0.0, 1.0):
            with self.assertRaisesRegex(ValueError, "crop_positive_fraction"):
                brems_net(image_size=64, train=True, train_crop=16, crop_positive_fraction=fraction)

    def test_crop_negative_threshold_centres_background_crops_on_bright_tissue(self):
        def centres(threshold):
            chain = brems_net(image_size=64, train=True, train_crop=8, crop_negative_threshold=threshold)
            chain.set_random_state(seed=0)
            crops = [chain(dict(self.mammo))[0] for _ in range(40)]
            return [(float(c["image"][0, 4, 4]), float(c["label"][0, 4, 4])) for c in crops]  # the crop's centre pixel

        bright = centres(0.8)
        self.assertTrue(all(label > 0 or value > 0.8 for value, label in bright), bright)
        self.assertTrue(any(label == 0 for _, label in bright))
        self.assertTrue(any(label == 0 and value <= 0.8 for value, label in centres(0.0)))  # anywhere by default
        with self.assertRaisesRegex(ValueError, "crop_negative_threshold"):
            brems_net(image_size=64, train=True, train_crop=8, crop_negative_threshold=1.0)

    def test_train_crop_backgrounds_are_drawn_inside_the_image_not_the_padding(self):
        with tempfile.TemporaryDirectory() as root:
            # a narrow film: about 70 % of the square input is padding
            image, mask = phantom_mammogram(160, 48, lesions=((80, 10, 6),), artefacts=False)
            sample = {
                "image": write_dicom(f"{root}/narrow.dcm", image),
                "label": [write_dicom(f"{root}/narrow_roi.dcm", mask.astype(np.uint16) * 255)],
                "label_format": "dicom",
            }
            for chain in (brems_net(image_size=64, train=True, train_crop=12),
                          connected_unets(image_size=64, train=True, train_crop=12)):
                chain.set_random_state(seed=0)
                crops = [chain(dict(sample))[0] for _ in range(30)]
                self.assertTrue(all(float(crop["image"].max()) > 0 for crop in crops), "a crop of padding only")
                self.assertTrue(any(float(crop["label"].sum()) == 0 for crop in crops))  # negatives are drawn

    def test_augment_rotates_and_flips_image_and_label_together(self):
        plain = connected_unets(image_size=64, train=True, train_crop=32)
        augmented = connected_unets(image_size=64, train=True, train_crop=32, augment=True)
        self.assertEqual(len(augmented.transforms), len(plain.transforms) + 3)
        full = connected_unets(image_size=64)(dict(self.mammo))
        augmented.set_random_state(seed=0)
        symmetries = [_symmetry_of_window(full, augmented(dict(self.mammo))[0]) for _ in range(20)]
        self.assertNotIn(None, symmetries, "a crop is not a rotated/flipped window of the image with its label")
        self.assertGreater(sum(symmetry != (0, False) for symmetry in symmetries), 5)

    def test_brems_net_canonical_side_and_inference(self):
        chain = brems_net(image_size=64, canonical_side="left")
        out = chain(dict(self.mammo))
        plain = brems_net(image_size=64)(dict(self.mammo))  # the phantom breast is on the right
        np.testing.assert_allclose(out["image"].numpy(), plain["image"].numpy()[..., ::-1], atol=1e-5)
        # nearest-neighbour sampling is not mirror-symmetric: allow a few edge pixels
        self.assertGreater((out["label"].numpy() == plain["label"].numpy()[..., ::-1]).mean(), 0.99)
        _, overlap = self._check_inverse(chain, out, self.mask)
        self.assertGreater(overlap, 0.8)
        image_only = brems_net(image_size=64, with_label=False)({"image": self.mammo["image"]})
        self.assertEqual(tuple(image_only["image"].shape), (1, 64, 64))
        self.assertNotIn("label", image_only)

    def test_unetplusplus_mammo_rois(self):
        chain = unetplusplus_mammo(image_size=32)
        samples = chain(dict(self.mammo))
        self.assertEqual(len(samples), 2)  # one per lesion
        for sample in samples:
            self._check(sample, (32, 32))
            self.assertAlmostEqual(float(sample["image"].min()), 0.0, places=5)  # min-max
            self.assertAlmostEqual(float(sample["image"].max()), 1.0, places=5)
            restored, _ = self._check_inverse(chain, sample, self.mask)
            r0, r1, c0, c1 = sample["roi_box"]
            inside = self.mask[r0:r1, c0:c1]
            agreement = (restored[r0:r1, c0:c1] == inside).mean()
            self.assertGreater(agreement, 0.95)
            self.assertFalse(restored[:, : max(c0 - 1, 0)].any())  # nothing pasted outside the box

    def test_unetplusplus_mammo_training_augmentation_is_invertible(self):
        set_determinism(seed=0)
        chain = unetplusplus_mammo(image_size=32, train=True)
        flips_seen = set()
        for _ in range(4):
            for sample in chain(dict(self.mammo)):
                flips_seen.add(tuple(op["class"] for op in sample["image"].applied_operations if op.get("do_transforms")))
                self._check(sample, (32, 32))
                restored, _ = self._check_inverse(chain, sample, self.mask)
                r0, r1, c0, c1 = sample["roi_box"]
                self.assertGreater((restored[r0:r1, c0:c1] == self.mask[r0:r1, c0:c1]).mean(), 0.95)
        set_determinism(seed=None)
        self.assertGreater(len(flips_seen), 1)  # the random part really varies

    def test_unetplusplus_mammo_inference_with_known_boxes(self):
        chain = unetplusplus_mammo(image_size=32, with_label=False)
        (sample,) = chain({"image": self.mammo["image"], "roi_boxes": [[40, 80, 60, 100]]})
        self.assertEqual(tuple(sample["image"].shape), (1, 32, 32))
        back = chain.inverse(sample)
        self.assertEqual(tuple(back["image"].shape), (1, ROWS, COLS))

    def test_unetplusplus_mammo_crops_a_known_lesion_box_as_training_crops_its_label(self):
        """A reader's box around a lesion (its bounds, as --roi_file and the served 'roi' give it) is cropped with the
        training margin: the inference patch is the very patch the network was trained on."""
        training = unetplusplus_mammo(image_size=32)(dict(self.mammo))
        lesions, _ = ndimage.label(self.mask)
        bounds = [[rows.start, rows.stop, cols.start, cols.stop] for rows, cols in ndimage.find_objects(lesions)]
        inference = unetplusplus_mammo(image_size=32, with_label=False)({"image": self.mammo["image"], "roi_boxes": bounds})
        self.assertEqual(sorted(s["roi_box"] for s in inference), sorted(s["roi_box"] for s in training))
        for sample in inference:
            (trained,) = [s for s in training if s["roi_box"] == sample["roi_box"]]
            torch.testing.assert_close(sample["image"].as_tensor(), trained["image"].as_tensor())

    def test_two_stage_msf_patches(self):
        chain = two_stage_msf(patch_size=48)
        samples = chain(dict(self.mammo))
        self.assertEqual(len(samples), 2)
        for sample in samples:
            self._check(sample, (48, 48))
            restored, _ = self._check_inverse(chain, sample, self.mask)
            r0, r1, c0, c1 = sample["roi_box"]
            self.assertGreater((restored[r0:r1, c0:c1] == self.mask[r0:r1, c0:c1]).mean(), 0.95)

    def test_hybrid_attention_us(self):
        chain = hybrid_attention_us(image_size=40)
        out = chain(dict(self.us))
        self._check(out, (40, 40))
        restored, overlap = self._check_inverse(chain, out, self.us_mask)
        self.assertGreater(overlap, 0.85)
        image_only = hybrid_attention_us(image_size=40, with_label=False)({"image": self.us["image"]})
        self.assertEqual(tuple(image_only["image"].shape), (1, 40, 40))

    def test_hybrid_attention_us_scales_by_the_files_bit_depth(self):
        # the same picture exported as 16-bit (value x 257): a fixed 0-255 range saturated it (issue 16, item 9)
        picture = np.asarray(Image.open(self.us["image"]).convert("L"))
        wide = write_png(f"{self.tmp.name}/benign (2).png", picture.astype(np.uint16) * 257)
        self.assertEqual(Image.open(wide).mode, "I;16")
        chain = hybrid_attention_us(image_size=40)
        eight_bit = chain(dict(self.us))["image"]
        sixteen_bit = chain({**self.us, "image": wide})["image"]
        self.assertLess(float((sixteen_bit >= 1.0).float().mean()), 0.01)
        torch.testing.assert_close(sixteen_bit.as_tensor(), eight_bit.as_tensor(), atol=1e-6, rtol=0)
        self.assertEqual((sixteen_bit.meta["bit_depth"], eight_bit.meta["bit_depth"]), (16, 8))

    def test_scale_by_bit_depth_uses_the_dicom_bits_stored(self):
        image = (np.arange(ROWS * COLS).reshape(ROWS, COLS) % 4096).astype(np.uint16)
        path = write_dicom(f"{self.tmp.name}/us12.dcm", image, bits_stored=12)
        out = hybrid_attention_us(image_size=ROWS, with_label=False)({"image": path})["image"]
        self.assertAlmostEqual(float(out.max()), 4095 / 4095)
        self.assertAlmostEqual(float(out.mean()), float(image.mean()) / 4095, places=4)

    def test_connected_unets_cbis_and_inbreast(self):
        for dataset in ("cbis-ddsm", "inbreast"):
            chain = connected_unets(image_size=64, dataset=dataset)
            out = chain(dict(self.mammo))
            self._check(out, (64, 64))
            _, overlap = self._check_inverse(chain, out, self.mask)
            self.assertGreater(overlap, 0.7, dataset)  # nearest 2.5x down and up; a wrong inverse gives ~0
        with self.assertRaisesRegex(ValueError, "dataset"):
            connected_unets(dataset="busi")

    def test_connected_unets_blank_image_names_the_file(self):
        blank = write_dicom(f"{self.tmp.name}/blank.dcm", np.zeros((ROWS, COLS), np.uint16))
        with self.assertRaises(RuntimeError) as ctx:  # MONAI's Compose wraps the transform's error
            connected_unets(image_size=48)({"image": blank, "label": None, "label_format": "none"})
        self.assertIsInstance(ctx.exception.__cause__, NoBreastFoundError)
        self.assertIn("blank.dcm", str(ctx.exception.__cause__))


if __name__ == "__main__":
    unittest.main()
