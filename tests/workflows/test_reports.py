"""Evaluation reports: CSV and JSON written and read back, summaries by the empty-mask rule, figures drawn."""

from __future__ import annotations

import csv
import json
import math
import statistics
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from breastseg.workflows.evaluation.reports import (
    case_rows,
    mean_sd_over_folds,
    plot_confusion_matrix,
    plot_roc,
    plot_violin,
    summarise,
    violin_groups,
    write_case_csv,
    write_summary_json,
)
from breastseg.workflows.metrics import CASE_COLUMNS, METRIC_NAMES, PixelROCAUC, compute_case_table

torch.set_num_threads(1)


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Six 24x30 cases: four lesions shifted by 0-3 columns, one missed, one both empty."""
    label = torch.zeros(6, 1, 24, 30)
    label[:5, :, 6:14, 8:18] = 1
    pred = torch.stack([torch.roll(label[i], i, dims=-1) for i in range(6)])
    pred[4] = 0
    return pred, label


METADATA = [
    {"case_id": "c0", "dataset": "inbreast", "birads": "4a", "acr": 2, "spacing": [0.07, 0.07]},
    {"case_id": "c1", "dataset": "inbreast", "birads": "10", "acr": None, "spacing": [0.07, 0.07]},
    {"case_id": "c2", "dataset": "inbreast", "birads": None, "acr": 2, "spacing": None},
    {"case_id": "c3", "dataset": "inbreast", "birads": "2", "acr": 3, "spacing": [0.07, 0.07]},
    {"case_id": "c4", "dataset": "inbreast", "birads": "4b", "acr": 3, "spacing": [0.07, 0.07]},
    {"case_id": "c5", "dataset": "inbreast", "birads": "1", "acr": 1, "spacing": None},
]


class TestReports(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        pred, label = _masks()
        self.table = compute_case_table(pred, label, spacing=[m["spacing"] for m in METADATA])
        self.rows = case_rows(self.table, METADATA)

    def tearDown(self):
        self.tmp.cleanup()

    def test_case_csv_columns_and_values(self):
        path = write_case_csv(self.rows, self.root / "eval" / "cases.csv")
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, lines = reader.fieldnames, list(reader)
        self.assertEqual(header[:5], ["case_id", "dataset", "birads", "acr", "spacing"])
        self.assertEqual(header[5:], list(CASE_COLUMNS))
        self.assertEqual([line["status"] for line in lines], ["lesion"] * 4 + ["missed", "both_empty"])
        self.assertEqual(lines[2]["birads"], "")
        self.assertEqual(json.loads(lines[0]["spacing"]), [0.07, 0.07])
        self.assertAlmostEqual(float(lines[0]["dice"]), 1.0)
        self.assertTrue(math.isnan(float(lines[5]["dice"])))
        self.assertEqual(int(lines[5]["tn"]), 24 * 30)

    def test_summary_follows_the_rule(self):
        summary = summarise(self.rows)
        self.assertEqual(summary["status_counts"], {"lesion": 4, "both_empty": 1, "missed": 1, "false_positive": 0})
        dice = [r["dice"] for r in self.rows[:5]]  # both_empty excluded, missed counted as 0
        self.assertAlmostEqual(summary["metrics"]["dice"]["mean"], statistics.fmean(dice))
        self.assertAlmostEqual(summary["metrics"]["dice"]["sd"], statistics.stdev(dice))
        self.assertAlmostEqual(summary["metrics"]["dice"]["median"], statistics.median(dice))
        self.assertEqual(summary["metrics"]["dice"]["n"], 5)
        # c2 (lesion) has no spacing: left out of the mm mean and counted
        self.assertEqual((summary["metrics"]["hd95_mm"]["n"], summary["metrics"]["hd95_mm"]["n_undefined"]), (4, 1))
        self.assertEqual((summary["metrics"]["precision"]["n"], summary["metrics"]["sensitivity"]["n"]), (4, 5))
        totals = {k: sum(r[k] for r in self.rows) for k in ("tp", "fp", "fn", "tn")}
        self.assertEqual(summary["pixel_confusion"], totals)
        self.assertEqual(sum(totals.values()), 6 * 24 * 30)
        with self.assertRaisesRegex(ValueError, "'c9'"):
            summarise([{"case_id": "c9", "status": "ok"}])

    def test_summary_json_is_strict_and_complete(self):
        summary = summarise([r for r in self.rows if r["status"] == "both_empty"])
        path = write_summary_json(summary, self.root / "summary.json")
        loaded = json.loads(path.read_text())
        self.assertEqual(set(loaded), {"n_cases", "status_counts", "spacing_known", "metrics", "pixel_confusion", "empty_mask_rule"})
        self.assertEqual(set(loaded["metrics"]), set(METRIC_NAMES))
        self.assertIsNone(loaded["metrics"]["dice"]["mean"])  # no eligible case: null, not a number
        self.assertEqual(loaded["metrics"]["dice"]["n"], 0)

    def test_mean_sd_over_folds(self):
        folds = [summarise(self.rows[:3]), summarise(self.rows[3:]), summarise(self.rows[5:])]
        combined = mean_sd_over_folds(folds)
        fold_means = [folds[0]["metrics"]["dice"]["mean"], folds[1]["metrics"]["dice"]["mean"]]
        self.assertAlmostEqual(combined["metrics"]["dice"]["mean"], statistics.fmean(fold_means))
        self.assertAlmostEqual(combined["metrics"]["dice"]["sd"], statistics.stdev(fold_means))
        self.assertEqual((combined["metrics"]["dice"]["n_folds"], combined["metrics"]["dice"]["n_folds_undefined"]), (2, 1))
        self.assertEqual(combined["status_counts"]["lesion"], 4)
        with self.assertRaises(ValueError):
            mean_sd_over_folds([])

    def _assert_png(self, path: Path) -> None:
        self.assertTrue(path.is_file())
        pixels = np.asarray(Image.open(path).convert("L"))
        self.assertGreater(min(pixels.shape), 100)
        self.assertGreater(len(np.unique(pixels)), 10)  # drawn, not a blank canvas

    def test_figures(self):
        confusion = summarise(self.rows)["pixel_confusion"]
        self._assert_png(plot_confusion_matrix(**confusion, path=self.root / "fig" / "confusion.png"))
        self._assert_png(plot_confusion_matrix(**confusion, path=self.root / "counts.png", normalize=False))
        self._assert_png(plot_violin(self.rows, by="birads", metric="dice", path=self.root / "birads.png"))
        self._assert_png(plot_violin(self.rows, by="acr", metric="hd95_px", path=self.root / "acr.png"))
        roc = PixelROCAUC()
        rng = np.random.default_rng(0)
        pred, label = _masks()
        roc(torch.from_numpy(np.clip(0.6 * label.numpy() + rng.random(label.shape) * 0.5, 0, 1)), label)
        self._assert_png(plot_roc(roc.roc_curve(), self.root / "roc.png"))
        with self.assertRaisesRegex(ValueError, ">= 0"):
            plot_confusion_matrix(-1, 0, 0, 0, self.root / "bad.png")

    def test_violin_groups_with_missing_categories(self):
        groups = violin_groups(self.rows, by="birads", metric="dice")
        # c5 is both_empty (not eligible), c2 has no BI-RADS; natural order, unknown last
        self.assertEqual(list(groups), ["2", "4a", "4b", "10", "unknown"])
        self.assertEqual(groups["4b"], [0.0])  # the missed lesion
        self.assertEqual(list(violin_groups(self.rows, by="acr", metric="dice")), ["2", "3", "unknown"])
        with self.assertRaisesRegex(ValueError, "by must be"):
            violin_groups(self.rows, by="density", metric="dice")
        with self.assertRaisesRegex(ValueError, "no case is eligible"):
            plot_violin(self.rows[5:], by="acr", metric="dice", path=self.root / "none.png")

    def test_case_rows_refuses_mismatch_and_collisions(self):
        with self.assertRaisesRegex(ValueError, "metadata entries"):
            case_rows(self.table, METADATA[:2])
        with self.assertRaisesRegex(ValueError, "collide"):
            case_rows(self.table[:1], [{"case_id": "x", "dice": 1.0}])


if __name__ == "__main__":
    unittest.main()
