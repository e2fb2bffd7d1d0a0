"""Lesion metrics: values against independent scipy/numpy computations and stock MONAI, the empty-mask rule."""

from __future__ import annotations

import math
import unittest
import unittest.mock

import numpy as np
import torch
from ignite.engine import Engine
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from parameterized import parameterized
from scipy import ndimage, stats

from breastseg.workflows.metrics import surface
from breastseg.workflows.metrics import (
    CASE_COLUMNS,
    LesionDice,
    LesionHD95,
    LesionSegmentationMetric,
    LesionSensitivity,
    PixelAUC,
    PixelROCAUC,
    compute_case_table,
    image_diagonal,
    table_to_rows,
    union_bounding_box,
)

torch.set_num_threads(1)


def _blobs(seed: int, shape: tuple[int, int], count: int, border: bool = False) -> np.ndarray:
    """Union of a few random discs; with ``border`` one disc is centred on the image edge."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for index in range(count):
        centre = [rng.integers(0, shape[0]), rng.integers(0, shape[1])]
        if border and index == 0:
            centre[rng.integers(0, 2)] = 0
        mask |= np.hypot(rows - centre[0], cols - centre[1]) < rng.uniform(2, 9)
    return mask


def _reference_hausdorff(pred: np.ndarray, label: np.ndarray, spacing=(1.0, 1.0)) -> tuple[float, float]:
    """HD95 and HD max from Euclidean distance transforms of each mask's boundary (independent of MONAI)."""
    edges_pred = pred & ~ndimage.binary_erosion(pred)
    edges_label = label & ~ndimage.binary_erosion(label)
    to_label = ndimage.distance_transform_edt(~edges_label, sampling=spacing)[edges_pred]
    to_pred = ndimage.distance_transform_edt(~edges_pred, sampling=spacing)[edges_label]
    hd95 = max(np.percentile(to_label, 95), np.percentile(to_pred, 95))
    return float(hd95), float(max(to_label.max(), to_pred.max()))


def _batch(*masks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))


def _column(table: torch.Tensor, name: str) -> np.ndarray:
    return table[:, CASE_COLUMNS.index(name)].numpy()


# (seed, shape, blobs in pred, blobs in label, a disc on the border)
RANDOM_CASES = [
    [0, (37, 45), 2, 3, False],
    [1, (64, 33), 4, 1, True],
    [2, (51, 51), 1, 1, True],
    [3, (40, 70), 3, 3, False],
]


class TestCaseValues(unittest.TestCase):
    @parameterized.expand(RANDOM_CASES)
    def test_against_scipy_and_hand_counts(self, seed, shape, n_pred, n_label, border):
        pred = _blobs(seed, shape, n_pred, border)
        label = _blobs(seed + 100, shape, n_label, border) | np.roll(pred, 3, axis=1)  # overlapping lesion
        spacing = (0.8, 0.3)
        table = compute_case_table(_batch(pred), _batch(label), spacing=[spacing])
        row = table_to_rows(table)[0]
        tp, fp = int((pred & label).sum()), int((pred & ~label).sum())
        fn, tn = int((~pred & label).sum()), int((~pred & ~label).sum())
        self.assertEqual((row["tp"], row["fp"], row["fn"], row["tn"]), (tp, fp, fn, tn))
        self.assertEqual(row["status"], "lesion")
        self.assertAlmostEqual(row["dice"], 2 * tp / (2 * tp + fp + fn))
        self.assertAlmostEqual(row["iou"], tp / (tp + fp + fn))
        self.assertAlmostEqual(row["sensitivity"], tp / (tp + fn))
        self.assertAlmostEqual(row["specificity"], tn / (tn + fp))
        self.assertAlmostEqual(row["precision"], tp / (tp + fp))
        self.assertAlmostEqual(row["accuracy"], (tp + tn) / pred.size)
        hd95_px, hd_max_px = _reference_hausdorff(pred, label)
        hd95_mm, hd_max_mm = _reference_hausdorff(pred, label, spacing)
        np.testing.assert_allclose(
            [row["hd95_px"], row["hd_max_px"], row["hd95_mm"], row["hd_max_mm"]],
            [hd95_px, hd_max_px, hd95_mm, hd_max_mm],
            rtol=1e-5,
        )

    @parameterized.expand(RANDOM_CASES)
    def test_equals_stock_monai_on_full_image(self, seed, shape, n_pred, n_label, border):
        pred = _batch(_blobs(seed, shape, n_pred, border), _blobs(seed + 7, shape, n_pred + 1, not border))
        label = _batch(_blobs(seed + 1, shape, n_label, border), _blobs(seed + 8, shape, n_label, True))
        spacing = [[0.07, 0.21], [1.5, 0.5]]
        table = compute_case_table(pred, label, spacing=spacing)
        self.assertEqual([r["status"] for r in table_to_rows(table)], ["lesion", "lesion"])  # no NaN on either side
        stock = HausdorffDistanceMetric(include_background=True, percentile=95)
        np.testing.assert_array_equal(_column(table, "hd95_px"), stock(pred, label)[:, 0].double().numpy())
        np.testing.assert_array_equal(_column(table, "hd95_mm"), stock(pred, label, spacing=spacing)[:, 0].double().numpy())
        stock_max = HausdorffDistanceMetric(include_background=True)
        np.testing.assert_array_equal(_column(table, "hd_max_px"), stock_max(pred, label)[:, 0].double().numpy())
        dice = DiceMetric(include_background=True, reduction="none")(pred, label)[:, 0].double().numpy()
        iou = MeanIoU(include_background=True, reduction="none")(pred, label)[:, 0].double().numpy()
        np.testing.assert_allclose(_column(table, "dice"), dice, rtol=1e-6)
        np.testing.assert_allclose(_column(table, "iou"), iou, rtol=1e-6)

    def test_anisotropic_spacing_mm_versus_px(self):
        label = np.zeros((30, 40), dtype=bool)
        label[10:20, 10:20] = True
        pred = np.roll(label, 4, axis=1)  # shifted 4 columns
        row = table_to_rows(compute_case_table(_batch(pred), _batch(label), spacing=[[2.0, 0.5]]))[0]
        self.assertAlmostEqual(row["hd_max_px"], 4.0, places=5)
        self.assertAlmostEqual(row["hd_max_mm"], 2.0, places=5)  # 4 columns of 0.5 mm, not 4 rows of 2 mm
        self.assertTrue(row["spacing_known"])

    def test_bounding_box_of_union_with_margin(self):
        pred, label = torch.zeros(20, 30), torch.zeros(20, 30, dtype=torch.bool)
        pred[5, 7] = 1
        label[12, 29] = True
        self.assertEqual(union_bounding_box(pred, label), (slice(4, 14), slice(6, 30)))
        self.assertIsNone(union_bounding_box(torch.zeros(4, 4), torch.zeros(4, 4)))


def _noisy_prediction(seed: int, shape: tuple[int, int], label: np.ndarray) -> np.ndarray:
    """An untrained network's thresholded output: a third of all pixels scattered, tens of thousands of edges."""
    return np.random.default_rng(seed).standard_normal(shape) + 1.5 * label - 0.5 > 0


class TestLargeEdgeSets(unittest.TestCase):
    """Past ``_EXACT_PAIRS`` only the distances that decide the percentile are computed: same values."""

    @parameterized.expand([[0, (300, 257), None], [1, (260, 400), (0.07, 0.21)], [2, (301, 301), (1.5, 0.5)]])
    def test_pruned_matches_exhaustive_and_stock_monai(self, seed, shape, spacing):
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        label = np.hypot(rows - 0.4 * shape[0], cols - 0.6 * shape[1]) < 0.1 * min(shape)
        pred = _noisy_prediction(seed, shape, label)
        pred_t, label_t = torch.from_numpy(pred), torch.from_numpy(label)
        self.assertGreater(int(surface.mask_edges(pred).sum()) * int(surface.mask_edges(label).sum()), surface._EXACT_PAIRS)
        for percentile in (95.0, 50.0, 100.0, 99.9):
            pruned = surface.hausdorff_distances(pred_t, label_t, percentile, (None, spacing))
            with unittest.mock.patch.object(surface, "_EXACT_PAIRS", math.inf):  # one KD-tree query per direction
                exhaustive = surface.hausdorff_distances(pred_t, label_t, percentile, (None, spacing))
            self.assertEqual(pruned, exhaustive, percentile)
        stock = HausdorffDistanceMetric(include_background=True, percentile=95)
        kwargs = {} if spacing is None else {"spacing": [list(spacing)]}
        expected = stock(_batch(pred), _batch(label), **kwargs)[0, 0].item()
        self.assertEqual(surface.hausdorff_distances(pred_t, label_t, 95.0, (spacing,))[0][0], expected)


class TestEmptyMaskRule(unittest.TestCase):
    def setUp(self):
        lesion = np.zeros((21, 31), dtype=bool)
        lesion[5:10, 6:12] = True
        empty = np.zeros_like(lesion)
        # lesion, both empty, missed, false positive
        self.pred = _batch(np.roll(lesion, 1, axis=0), empty, empty, lesion)
        self.label = _batch(lesion, empty, lesion, empty)
        self.spacing = [[0.5, 0.5], None, [0.1, 0.2], [0.1, 0.2]]
        self.table = compute_case_table(self.pred, self.label, spacing=self.spacing)
        self.rows = table_to_rows(self.table)

    def test_statuses_and_values(self):
        self.assertEqual([r["status"] for r in self.rows], ["lesion", "both_empty", "missed", "false_positive"])
        both_empty, missed, false_positive = self.rows[1:]
        self.assertEqual((both_empty["tn"], both_empty["specificity"], both_empty["accuracy"]), (21 * 31, 1.0, 1.0))
        for key in ("dice", "iou", "sensitivity", "precision", "hd95_px", "hd_max_px"):
            self.assertTrue(math.isnan(both_empty[key]), key)
        diagonal = math.hypot(20, 30)
        for row in (missed, false_positive):
            self.assertEqual((row["dice"], row["iou"]), (0.0, 0.0))
            self.assertAlmostEqual(row["hd95_px"], diagonal)
            self.assertAlmostEqual(row["hd_max_px"], diagonal)
            self.assertAlmostEqual(row["hd95_mm"], image_diagonal((21, 31), (0.1, 0.2)))
        self.assertEqual(missed["sensitivity"], 0.0)
        self.assertTrue(math.isnan(missed["precision"]))
        self.assertEqual(false_positive["precision"], 0.0)
        self.assertTrue(math.isnan(false_positive["sensitivity"]))
        self.assertFalse(both_empty["spacing_known"])

    def test_means_follow_the_rule_and_count_cases(self):
        lesion_dice = self.rows[0]["dice"]
        expectations = {
            "dice": ((lesion_dice + 0 + 0) / 3, 3),  # both_empty excluded, missed and FP count as 0
            "sensitivity": ((self.rows[0]["sensitivity"] + 0) / 2, 2),  # cases with a lesion
            "precision": ((self.rows[0]["precision"] + 0) / 2, 2),  # cases with a prediction
            "hd95_mm": ((self.rows[0]["hd95_mm"] + 2 * image_diagonal((21, 31), (0.1, 0.2))) / 3, 3),
        }
        for name, (expected, count) in expectations.items():
            metric = LesionSegmentationMetric(name, get_not_nans=True)
            metric(self.pred, self.label, spacing=self.spacing)
            mean, used = metric.aggregate()
            self.assertAlmostEqual(float(mean), expected, msg=name)
            self.assertEqual(int(used), count, name)

    def test_no_eligible_case_is_nan_with_warning(self):
        metric = LesionSegmentationMetric("dice")
        metric(self.pred[1:2], self.label[1:2])
        with self.assertWarnsRegex(UserWarning, "no case is eligible"):
            self.assertTrue(math.isnan(float(metric.aggregate())))

    def test_list_input_splits_spacing_per_case(self):
        metric = LesionSegmentationMetric("hd95_mm", get_not_nans=True)
        small_pred, small_label = torch.zeros(1, 9, 11), torch.zeros(1, 9, 11)
        small_pred[0, 2:5, 2:5], small_label[0, 2:6, 2:5] = 1, 1
        metric([self.pred[0], small_pred], [self.label[0], small_label], spacing=[[0.5, 0.5], None])
        mean, used = metric.aggregate()
        self.assertEqual(int(used), 1)  # the second case has unknown spacing
        self.assertAlmostEqual(float(mean), self.rows[0]["hd95_mm"])
        self.assertEqual(metric.get_buffer().shape, (2, len(CASE_COLUMNS)))


class TestInputErrors(unittest.TestCase):
    def test_non_binary_nan_shape_and_spacing(self):
        label = torch.zeros(1, 1, 8, 8)
        label[..., 2:4, 2:4] = 1
        with self.assertRaisesRegex(ValueError, "pred must be binary"):
            compute_case_table(label * 0.7, label)
        with self.assertRaisesRegex(ValueError, "label must be binary"):
            compute_case_table(label, label.masked_fill(label == 0, float("nan")))
        with self.assertRaisesRegex(ValueError, r"\(B, 1, H, W\)"):
            compute_case_table(label, label[..., :7])
        with self.assertRaisesRegex(ValueError, "positive"):
            compute_case_table(label, label, spacing=[[0.0, 0.1]])
        with self.assertRaisesRegex(ValueError, "one entry per case"):
            compute_case_table(label, label, spacing=[[0.1, 0.1], [0.1, 0.1]])
        with self.assertRaisesRegex(ValueError, "metric_name"):
            LesionSegmentationMetric("hd99")


def _run_engine(handlers, batches):
    engine = Engine(lambda engine, batch: batch)
    for name, handler in handlers.items():
        handler.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return engine


class TestIgniteHandlers(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(5)
        self.labels = [_batch(*(_blobs(int(s), (24, 28), 2) for s in rng.integers(0, 99, 3))) for _ in range(2)]
        self.preds = [torch.roll(label, 2, dims=-1) for label in self.labels]
        self.preds[1][0] = 0  # one missed lesion

    def test_dice_and_hd95_on_bare_engine(self):
        outputs = [{"pred": p, "label": t, "spacing": [[0.1, 0.1]] * 3} for p, t in zip(self.preds, self.labels)]
        handlers = {
            "dice": LesionDice(output_transform=lambda out: (out["pred"], out["label"])),
            "hd95_mm": LesionHD95(unit="mm", output_transform=lambda out: (out["pred"], out["label"], out["spacing"])),
            "sensitivity": LesionSensitivity(output_transform=lambda out: (out["pred"], out["label"])),
        }
        engine = _run_engine(handlers, outputs)
        table = compute_case_table(torch.cat(self.preds), torch.cat(self.labels), spacing=[[0.1, 0.1]] * 6)
        self.assertAlmostEqual(engine.state.metrics["dice"], float(table[:, CASE_COLUMNS.index("dice")].mean()))
        self.assertAlmostEqual(engine.state.metrics["hd95_mm"], float(table[:, CASE_COLUMNS.index("hd95_mm")].mean()))
        self.assertEqual(tuple(engine.state.metric_details["dice"].shape), (6, len(CASE_COLUMNS)))
        self.assertEqual([r["status"] for r in table_to_rows(engine.state.metric_details["dice"])].count("missed"), 1)

    def test_spacing_from_engine_batch(self):
        engine = Engine(lambda engine, batch: (batch["pred"], batch["label"]))
        LesionHD95(unit="mm", spacing_key="spacing").attach(engine, "hd95_mm")
        batches = [{"pred": p, "label": t, "spacing": torch.tensor([[0.2, 0.1]] * 3)} for p, t in zip(self.preds, self.labels)]
        engine.run(batches, max_epochs=1)
        expected = LesionSegmentationMetric("hd95_mm")
        expected(torch.cat(self.preds), torch.cat(self.labels), spacing=[0.2, 0.1])
        self.assertAlmostEqual(engine.state.metrics["hd95_mm"], float(expected.aggregate()))

        missing = Engine(lambda engine, batch: (batch["pred"], batch["label"]))
        LesionHD95(unit="mm", spacing_key="pixel_spacing").attach(missing, "hd95_mm")
        with self.assertRaisesRegex(KeyError, "pixel_spacing"):
            missing.run(batches, max_epochs=1)


def _mann_whitney_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    positive, negative = scores[labels], scores[~labels]
    u_statistic = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u_statistic / (positive.size * negative.size))


class TestPixelAUC(unittest.TestCase):
    def test_matches_mann_whitney_on_quantised_scores(self):
        rng = np.random.default_rng(3)
        labels = rng.random((3, 1, 17, 19)) < 0.3
        scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1).round(3).astype(np.float32)
        metric = PixelROCAUC()
        metric(torch.from_numpy(scores[:2]), torch.from_numpy(labels[:2]).float())
        metric(torch.from_numpy(scores[2:]), torch.from_numpy(labels[2:]).float())
        expected = _mann_whitney_auc(scores.ravel().astype(np.float64), labels.ravel())
        self.assertAlmostEqual(float(metric.aggregate()), expected, places=6)
        curve = metric.roc_curve()
        self.assertEqual((curve["fpr"][0], curve["tpr"][0], curve["fpr"][-1], curve["tpr"][-1]), (0.0, 0.0, 1.0, 1.0))
        self.assertEqual(curve["positives"], int(labels.sum()))

    def test_handler_errors_and_undefined(self):
        engine = Engine(lambda engine, batch: batch)
        PixelAUC().attach(engine, "auc")
        probabilities, labels = torch.full((1, 1, 4, 4), 0.2), torch.zeros(1, 1, 4, 4)
        with self.assertWarnsRegex(UserWarning, "undefined"):
            engine.run([(probabilities, labels)], max_epochs=1)
        self.assertTrue(math.isnan(engine.state.metrics["auc"]))
        with self.assertRaisesRegex(ValueError, "probabilities"):
            PixelROCAUC()(probabilities + 1, labels)
        with self.assertRaisesRegex(ValueError, "num_bins"):
            PixelROCAUC(num_bins=1)


if __name__ == "__main__":
    unittest.main()
