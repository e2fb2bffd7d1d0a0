"""Multi-scale fusion (paper 002 eq. 1) on hand-made boxes: the map, lambda, N, clipping, misses, views."""

from __future__ import annotations

import unittest

import numpy as np
import torch
from parameterized import parameterized

from breastseg.networks import YOLOv3
from breastseg.workflows.two_stage.detection import (
    PAPER_VIEW_SIZES,
    MultiScaleFusion,
    detect_at_scales,
    fusion_map,
    view_to_full_resolution,
)

torch.set_num_threads(1)

IMAGE = (20, 30)  # (H, W)
BOX_A = [2, 2, 10, 10, 0.8]  # scale 0
BOX_B = [4, 4, 12, 12, 0.4]  # scale 1, overlaps A on [4, 10) x [4, 10)
BOX_C = [20, 5, 25, 15, 0.2]  # scale 1, alone
THREE_SCALES = [[BOX_A], [BOX_B, BOX_C], []]  # the third scale found nothing: N = 3 all the same


class TestFusionMap(unittest.TestCase):
    def test_equation_one_by_hand(self):
        fused = fusion_map(THREE_SCALES, IMAGE)
        self.assertEqual(fused.shape, IMAGE)
        normaliser = 3 * 0.8  # N x max c_i
        expected = np.zeros(IMAGE)
        expected[2:10, 2:10] += 0.8
        expected[4:12, 4:12] += 0.4
        expected[5:15, 20:25] += 0.2
        np.testing.assert_allclose(fused, expected / normaliser, rtol=1e-6)
        self.assertAlmostEqual(float(fused[5, 5]), (0.8 + 0.4) / 2.4, places=6)  # row y = 5, column x = 5
        self.assertAlmostEqual(float(fused[3, 3]), 0.8 / 2.4, places=6)
        self.assertAlmostEqual(float(fused[11, 11]), 0.4 / 2.4, places=6)
        self.assertAlmostEqual(float(fused[10, 22]), 0.2 / 2.4, places=6)
        self.assertEqual(float(fused[10, 15]), 0.0)

    def test_n_is_the_number_of_scales(self):
        two_scales = fusion_map(THREE_SCALES[:2], IMAGE)
        self.assertAlmostEqual(float(two_scales[5, 5]), 1.2 / 1.6, places=6)
        # the same box at every scale with the top score reaches exactly 1
        np.testing.assert_allclose(fusion_map([[BOX_A]] * 5, IMAGE)[2:10, 2:10], 1.0)

    def test_boxes_are_clipped_and_outside_boxes_dropped(self):
        fused = fusion_map([[[-5, -5, 4, 4, 0.5], [25, 15, 40, 40, 0.25], [50, 50, 60, 60, 1.0]]], IMAGE)
        expected = np.zeros(IMAGE)
        expected[0:4, 0:4] = 0.5 / 0.5  # the box fully outside does not set max c_i
        expected[15:20, 25:30] = 0.25 / 0.5
        np.testing.assert_allclose(fused, expected)

    def test_fractional_boxes_cover_every_touched_pixel(self):
        fused = fusion_map([[[2.5, 3.2, 7.1, 8.0, 0.7]]], IMAGE)
        rows, cols = np.nonzero(fused)
        self.assertEqual((cols.min(), cols.max(), rows.min(), rows.max()), (2, 7, 3, 7))


class TestMultiScaleFusion(unittest.TestCase):
    @parameterized.expand(
        [
            # lambda, scales, expected half-open boxes (x0, y0, x1, y1)
            [0.5, THREE_SCALES, [[4, 4, 10, 10]]],  # only the overlap reaches (0.8 + 0.4) / 2.4 = 0.5
            [0.3, THREE_SCALES, [[2, 2, 10, 10]]],  # A alone is 1/3
            [0.0, THREE_SCALES, [[2, 2, 12, 12], [20, 5, 25, 15]]],  # lambda = 0 keeps every detection
            [0.6, THREE_SCALES, []],  # with N = 3 nothing reaches 0.6 ...
            [0.6, THREE_SCALES[:2], [[4, 4, 10, 10]]],  # ... with N = 2 the overlap is 0.75
            [0.6, [[BOX_A], [BOX_A], [BOX_C]], [[2, 2, 10, 10]]],  # found at two of three scales: 2/3 >= 0.6
            [0.7, [[BOX_A], [BOX_A], [BOX_C]], []],  # ... but 2/3 < 0.7
        ]
    )
    def test_lambda_and_n(self, threshold, scales, expected):
        result = MultiScaleFusion(threshold=threshold)(scales, IMAGE)
        self.assertEqual(result.boxes.tolist(), expected)
        self.assertEqual(result.boxes.dtype, np.int64)
        for (x0, y0, x1, y1), score in zip(result.boxes, result.scores):
            # half-open: the last kept column/row is x1 - 1 / y1 - 1, and the score is the component's max M_s
            kept = result.fused[y0:y1, x0:x1]
            self.assertAlmostEqual(float(score), float(kept.max()), places=6)
            self.assertGreaterEqual(float(result.fused[y1 - 1, x1 - 1]), threshold)

    def test_no_detection_is_an_empty_result(self):
        result = MultiScaleFusion()([[], np.zeros((0, 5)), []], IMAGE)
        self.assertEqual(result.boxes.shape, (0, 4))
        self.assertEqual(result.detections.shape, (0, 5))
        self.assertEqual(float(result.fused.max()), 0.0)

    def test_detections_layout(self):
        result = MultiScaleFusion(threshold=0.0)(THREE_SCALES, IMAGE)
        np.testing.assert_allclose(result.detections[:, :4], result.boxes)
        np.testing.assert_allclose(result.detections[:, 4], [1.2 / 2.4, 0.2 / 2.4], rtol=1e-6)

    @parameterized.expand(
        [
            [lambda: MultiScaleFusion(threshold=1.2), r"lambda\) must be in \[0, 1\]"],
            [lambda: fusion_map([], IMAGE), "at least one scale"],
            [lambda: fusion_map([[[0, 0, 1, 1]]], IMAGE), r"detections_per_scale\[0\] must be \(K, 5\)"],
            [lambda: fusion_map([[], [[0, 0, 1, 1, -0.1]]], IMAGE), r"detections_per_scale\[1\] has a negative"],
            [lambda: fusion_map([[BOX_A]], (0, 30)), "image_size"],
        ]
    )
    def test_bad_input(self, call, message):
        with self.assertRaisesRegex(ValueError, message):
            call()


class TestViews(unittest.TestCase):
    def test_paper_views_map_to_the_2048_by_1024_mammogram(self):
        self.assertTrue(all(h % 32 == 0 and w % 32 == 0 and h == 2 * w for h, w in PAPER_VIEW_SIZES))
        mapped = view_to_full_resolution([[10, 20, 30, 40, 0.7]], (320, 160), (2048, 1024))
        np.testing.assert_allclose(mapped, [[64, 128, 192, 256, 0.7]])
        mapped = view_to_full_resolution([[10, 20, 30, 40, 0.7]], (64, 64), (128, 32))  # anisotropic
        np.testing.assert_allclose(mapped, [[5, 40, 15, 80, 0.7]])

    def test_detect_at_scales_returns_full_resolution_boxes_per_view(self):
        torch.manual_seed(0)
        detector = YOLOv3(in_channels=1, base_channels=4, prior_probability=0.5)
        image = torch.rand(1, 100, 60)
        views = [(64, 32), (96, 64)]
        found = detect_at_scales(detector, image, views, conf_thresholds=[0.0, 0.0], nms_thresholds=0.3)
        self.assertEqual(len(found), 2)
        for detections in found:
            self.assertEqual(detections.shape[1], 5)
            self.assertGreater(len(detections), 0)
            self.assertTrue(np.all(detections[:, [0, 2]] >= 0) and np.all(detections[:, [0, 2]] <= 60))
            self.assertTrue(np.all(detections[:, [1, 3]] >= 0) and np.all(detections[:, [1, 3]] <= 100))
        strict = detect_at_scales(detector, image, views, conf_thresholds=1.0)
        self.assertEqual([len(d) for d in strict], [0, 0])  # nothing found: empty arrays, not errors
        self.assertEqual(MultiScaleFusion()(strict, (100, 60)).boxes.shape, (0, 4))
        with self.assertRaisesRegex(ValueError, r"nms_thresholds must be one value or one per view \(2\)"):
            detect_at_scales(detector, image, views, nms_thresholds=[0.5])


if __name__ == "__main__":
    unittest.main()
