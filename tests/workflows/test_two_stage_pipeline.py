"""The two-stage pipeline of paper 002: patch boxes, paste-back geometry, misses, and the real detector + MSF."""

from __future__ import annotations

import unittest

import numpy as np
import torch
from monai.data import MetaTensor
from parameterized import parameterized

from breastseg.networks import YOLOv3
from breastseg.transforms import lesion_boxes
from breastseg.workflows.two_stage.pipeline import (
    MultiScaleFusionBoxes,
    PatchPasteInferer,
    SingleScaleBoxes,
    WholeImageBox,
    detector_input,
    patch_boxes,
    segmenter_chain,
)

torch.set_num_threads(1)


class LeftHalfLesion(torch.nn.Module):
    """A segmenter whose logits are +20 on the left half of every patch and -20 on the right half."""

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        logits = torch.full((patches.shape[0], 1, *patches.shape[2:]), -20.0)
        logits[..., : patches.shape[-1] // 2] = 20.0
        return logits


class FixedBoxes:
    def __init__(self, detections):
        self.detections = np.asarray(detections, dtype=np.float64).reshape(-1, 5)

    def __call__(self, image):
        return self.detections


def mammogram(rows=60, cols=40):
    return MetaTensor(torch.rand(1, rows, cols) * 1000)


class TestPatchBoxes(unittest.TestCase):
    @parameterized.expand([((10, 12, 30, 20),), ((3, 40, 9, 58),), ((0, 0, 39, 59),)])
    def test_same_square_rule_as_the_training_patches(self, box):
        x0, y0, x1, y1 = box
        mask = torch.zeros(1, 60, 40)
        mask[0, y0:y1, x0:x1] = 1
        expected = [list(b) for b in lesion_boxes(mask, margin=0.25, min_size=32)]
        self.assertEqual(patch_boxes([[x0, y0, x1, y1, 0.9]], (60, 40), margin=0.25, min_size=32), expected)

    def test_boxes_outside_the_image_are_clipped_or_dropped(self):
        detections = [[-20, -10, 10, 8, 0.9], [45, 70, 60, 90, 0.8], [30, 50, 55, 75, 0.7]]
        boxes = patch_boxes(detections, (60, 40), margin=0.0, min_size=1)
        # first: x [0, 10), y [0, 8) -> 10x10 square inside; second: no pixel inside; third: x [30, 40), y [50, 60)
        self.assertEqual(boxes, [[0, 10, 0, 10], [50, 60, 30, 40]])

    def test_bad_layout_and_margin_are_refused(self):
        with self.assertRaisesRegex(ValueError, "detections must be"):
            patch_boxes([[1, 2, 3]], (10, 10))
        with self.assertRaisesRegex(ValueError, "margin"):
            patch_boxes([[1, 2, 3, 4, 1]], (10, 10), margin=-1)


class TestPatchPasteInferer(unittest.TestCase):
    def inferer(self, finder, patch_size=16, margin=0.0):
        chain = segmenter_chain(patch_size=patch_size, in_channels=3, with_label=False, load=False)
        return PatchPasteInferer(finder, chain, margin=margin, min_size=1)

    def test_a_known_patch_lands_in_its_box_at_full_resolution(self):
        # the detection is the square x [8, 40) x y [20, 52): the 16x16 patch is scaled x2 back into it
        inferer = self.inferer(FixedBoxes([[8, 20, 40, 52, 0.9]]))
        probabilities = inferer(mammogram(64, 48)[None], LeftHalfLesion())
        expected = torch.zeros(1, 1, 64, 48)
        expected[..., 20:52, 8:24] = 1.0
        self.assertEqual(probabilities.shape, (1, 1, 64, 48))
        torch.testing.assert_close((probabilities >= 0.5).float(), expected)
        (result,) = inferer.last_results
        self.assertTrue(result.detected)
        self.assertEqual(result.patch_boxes, [[20, 52, 8, 40]])

    def test_patches_see_the_segmenter_chain(self):
        seen = []

        class Recorder(LeftHalfLesion):
            def forward(self, patches):
                seen.append(patches)
                return super().forward(patches)

        self.inferer(FixedBoxes([[8, 20, 40, 52, 0.9], [0, 0, 10, 10, 0.5]]))(mammogram()[None], Recorder())
        patches = torch.cat(seen)
        self.assertEqual(tuple(patches.shape), (2, 3, 16, 16))  # grey repeated to v19U-Net++'s 3 channels
        self.assertTrue(torch.equal(patches[:, 0], patches[:, 2]))
        self.assertAlmostEqual(float(patches.max()), 1.0, places=5)  # histogram equalised to [0, 1]

    def test_no_detection_gives_an_empty_mask_and_says_so(self):
        inferer = self.inferer(FixedBoxes(np.zeros((0, 5))))
        probabilities = inferer(mammogram(64, 48)[None], LeftHalfLesion())
        self.assertEqual(probabilities.shape, (1, 1, 64, 48))
        self.assertEqual(float(probabilities.abs().sum()), 0.0)
        (result,) = inferer.last_results
        self.assertFalse(result.detected)
        self.assertEqual(result.patch_boxes, [])

    def test_one_stage_segments_the_whole_down_sampled_image(self):
        inferer = self.inferer(WholeImageBox(), margin=0.25)
        probabilities = inferer(mammogram(64, 48)[None], LeftHalfLesion())
        expected = torch.zeros(1, 1, 64, 48)
        expected[..., :24] = 1.0
        torch.testing.assert_close((probabilities >= 0.5).float(), expected)
        self.assertEqual(inferer.last_results[0].patch_boxes, [[0, 64, 0, 48]])

    def test_batches_of_mammograms_only(self):
        with self.assertRaisesRegex(ValueError, r"\(B, C, H, W\)"):
            self.inferer(WholeImageBox())(mammogram(), LeftHalfLesion())


class TestDetectorBoxes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.detector = YOLOv3(in_channels=3, num_classes=1, base_channels=2).eval()

    def test_msf_with_nothing_above_the_confidence_threshold_is_a_miss(self):
        finder = MultiScaleFusionBoxes(self.detector, view_sizes=[(64, 32), (96, 64)], threshold=0.6, conf_thresholds=1.0)
        inferer = PatchPasteInferer(finder, segmenter_chain(16, 3, with_label=False, load=False))
        probabilities = inferer(mammogram(128, 64)[None], LeftHalfLesion())
        self.assertEqual(float(probabilities.sum()), 0.0)
        self.assertFalse(inferer.last_results[0].detected)

    def test_msf_boxes_are_full_resolution_components_of_the_fused_map(self):
        finder = MultiScaleFusionBoxes(self.detector, view_sizes=[(64, 32), (96, 64)], threshold=0.0, conf_thresholds=0.0)
        detections = finder(mammogram(128, 64))
        self.assertEqual(detections.shape[1], 5)
        self.assertGreater(len(detections), 0)  # lambda 0 with every box kept: the union of all boxes
        self.assertTrue((detections[:, [0, 2]] <= 64).all() and (detections[:, [1, 3]] <= 128).all())

    def test_single_scale_boxes_are_one_view_mapped_back(self):
        finder = SingleScaleBoxes(self.detector, view_size=(64, 32), conf_threshold=0.0, nms_threshold=0.45)
        detections = finder(mammogram(128, 64))
        self.assertGreater(len(detections), 0)
        self.assertTrue((detections[:, [0, 2]] <= 64).all() and (detections[:, [1, 3]] <= 128).all())

    def test_views_must_suit_the_detector_stride(self):
        with self.assertRaisesRegex(ValueError, r"view sizes \[\(160, 80\)\] must be positive \(H, W\) multiples of 32"):
            MultiScaleFusionBoxes(self.detector, view_sizes=[(128, 64), (160, 80)])

    def test_detector_input_is_unit_range_with_the_detector_channels(self):
        view = detector_input(3)(mammogram())
        self.assertEqual(tuple(view.shape), (3, 60, 40))
        self.assertAlmostEqual(float(view.min()), 0.0)
        self.assertAlmostEqual(float(view.max()), 1.0)


if __name__ == "__main__":
    unittest.main()
