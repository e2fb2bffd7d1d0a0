"""Detection metrics of paper 002 (AP at IoU >= 0.5, FROC / TPR@FPavg) on hand-made cases."""

from __future__ import annotations

import math
import unittest

import numpy as np
from parameterized import parameterized

from breastseg.workflows.two_stage.detection import average_precision, froc_curve, match_detections

# image 0: two lesions, one found, one found with a duplicate, plus a false positive elsewhere
# image 1: normal image with one false positive; image 2: one lesion, missed
GROUND_TRUTHS = [
    [[0, 0, 10, 10], [20, 20, 30, 30]],
    [],
    [[5, 5, 15, 15]],
]
DETECTIONS = [
    [
        [0, 0, 10, 10, 0.9],  # TP
        [1, 1, 10, 10, 0.8],  # duplicate of the first lesion: FP
        [20, 20, 30, 31, 0.7],  # IoU 100/110 with the second lesion: TP
        [50, 50, 60, 60, 0.6],  # FP
    ],
    [[0, 0, 5, 5, 0.95]],  # FP on the normal image
    [],
]


class TestMatching(unittest.TestCase):
    def test_voc_matching_ranks_all_images(self):
        matches = match_detections(DETECTIONS, GROUND_TRUTHS)
        np.testing.assert_allclose(matches.scores, [0.95, 0.9, 0.8, 0.7, 0.6])
        self.assertEqual(matches.true_positive.tolist(), [False, True, False, True, False])
        self.assertEqual((matches.num_lesions, matches.num_images), (3, 3))

    def test_iou_threshold(self):
        detection = [[[0, 0, 10, 5.5, 1.0]]]  # IoU 0.55 with the 10 x 10 lesion
        truth = [[[0, 0, 10, 10]]]
        self.assertEqual(match_detections(detection, truth, 0.5).true_positive.tolist(), [True])
        self.assertEqual(match_detections(detection, truth, 0.6).true_positive.tolist(), [False])


class TestAveragePrecision(unittest.TestCase):
    def test_by_hand(self):
        # precision 0, 1/2, 1/3, 2/4, 2/5 at recall 0, 1/3, 1/3, 2/3, 2/3: AP = 1/3 * 1/2 + 1/3 * 1/2
        self.assertAlmostEqual(average_precision(DETECTIONS, GROUND_TRUTHS), 1 / 3)

    def test_perfect_and_empty(self):
        truth = [[[0, 0, 10, 10]], [[5, 5, 9, 9]]]
        perfect = [[[0, 0, 10, 10, 0.6]], [[5, 5, 9, 9, 0.9]]]
        self.assertEqual(average_precision(perfect, truth), 1.0)
        self.assertEqual(average_precision([[], []], truth), 0.0)
        self.assertTrue(math.isnan(average_precision([[[0, 0, 1, 1, 0.5]]], [[]])))

    def test_tied_scores_are_one_operating_point(self):
        truth = [[[0, 0, 10, 10]]]
        for order in ([[0, 0, 10, 10, 0.5], [40, 40, 50, 50, 0.5]], [[40, 40, 50, 50, 0.5], [0, 0, 10, 10, 0.5]]):
            self.assertEqual(average_precision([order], truth), 0.5)


class TestFROC(unittest.TestCase):
    def test_curve_by_hand(self):
        curve = froc_curve(DETECTIONS, GROUND_TRUTHS)
        np.testing.assert_allclose(curve.thresholds, [0.95, 0.9, 0.8, 0.7, 0.6])
        np.testing.assert_allclose(curve.fp_per_image, np.array([1, 1, 2, 2, 3]) / 3)
        np.testing.assert_allclose(curve.sensitivity, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
        tpr, fp_avg = curve.operating_point()
        self.assertAlmostEqual(tpr, 2 / 3)
        self.assertAlmostEqual(fp_avg, 1.0)
        self.assertAlmostEqual(curve.sensitivity_at(0.5), 1 / 3)
        self.assertAlmostEqual(curve.sensitivity_at(1.0), 2 / 3)
        self.assertEqual(curve.sensitivity_at(0.1), 0.0)

    def test_no_detection_at_all(self):
        curve = froc_curve([[], []], [[[0, 0, 4, 4]], []])
        self.assertEqual(curve.operating_point(), (0.0, 0.0))
        self.assertEqual(curve.sensitivity_at(1.0), 0.0)

    def test_no_lesion_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "at least one ground-truth box"):
            froc_curve([[[0, 0, 1, 1, 0.5]]], [[]])

    @parameterized.expand(
        [
            [lambda: match_detections([[]], [[], []]), "1 detection lists for 2 ground-truth lists"],
            [lambda: match_detections([[[0, 0, 1, 1]]], [[]]), r"detections\[0\] must be \(N, 5\)"],
            [lambda: match_detections([[], []], [[], [[0, 0, 1]]]), r"ground_truths\[1\] must be \(N, 4\)"],
            [lambda: match_detections([[]], [[]], iou_threshold=0.0), "iou_threshold"],
        ]
    )
    def test_bad_input(self, call, message):
        with self.assertRaisesRegex(ValueError, message):
            call()


if __name__ == "__main__":
    unittest.main()
