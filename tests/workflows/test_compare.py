"""Comparison of evaluations: Friedman + Nemenyi against Demšar's formulas, the paired test of two methods
against scipy computed here on the same numbers, case matching, split refusal, outputs."""

from __future__ import annotations

import csv
import json
import math
import tempfile
import unittest
from pathlib import Path

import mlflow
import numpy as np
from scipy.stats import bootstrap, wilcoxon

from breastseg.workflows.commands.cli import main
from breastseg.workflows.commands.compare import compare_methods, friedman_nemenyi, load_case_scores
from breastseg.workflows.commands.paired_stats import holm, paired_comparison

# 6 cases x 4 methods, no ties within a case
TABLE = np.array(
    [
        [0.90, 0.80, 0.70, 0.60],
        [0.85, 0.86, 0.70, 0.50],
        [0.92, 0.81, 0.72, 0.75],
        [0.88, 0.79, 0.60, 0.65],
        [0.91, 0.70, 0.71, 0.40],
        [0.89, 0.82, 0.69, 0.55],
    ]
)


def write_cases(path: Path, rows: list[tuple[str, float]], extra_column: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "lesion_index", "dice", "iou"] if extra_column else ["case_id", "dice"])
        for case, value in rows:
            writer.writerow([case, 0, value, value / (2 - value)] if extra_column else [case, value])
    return path


class TestFriedmanNemenyi(unittest.TestCase):
    def test_statistic_ranks_and_critical_difference_follow_demsar(self):
        result = friedman_nemenyi(TABLE)
        n, k = TABLE.shape
        ranks = np.argsort(np.argsort(-TABLE, axis=1), axis=1) + 1.0
        mean_ranks = ranks.mean(axis=0)
        np.testing.assert_allclose(result["mean_ranks"], mean_ranks)
        chi2 = 12 * n / (k * (k + 1)) * (np.sum(mean_ranks**2) - k * (k + 1) ** 2 / 4)
        self.assertAlmostEqual(result["statistic"], chi2, places=10)
        chi2_sf_3dof = math.erfc(math.sqrt(chi2 / 2)) + math.sqrt(2 * chi2 / math.pi) * math.exp(-chi2 / 2)
        self.assertAlmostEqual(result["p_value"], chi2_sf_3dof, places=10)
        self.assertAlmostEqual(result["cd"], 2.569 * math.sqrt(k * (k + 1) / (6 * n)), places=3)  # Demšar table 5
        p = np.array(result["p_values"])
        np.testing.assert_allclose(p, p.T)
        np.testing.assert_allclose(np.diag(p), 1.0)
        # methods 0 and 3 differ by more than CD, so their p-value is below alpha; 0 and 1 do not
        self.assertGreater(mean_ranks[3] - mean_ranks[0], result["cd"])
        self.assertLess(p[0, 3], 0.05)
        self.assertGreater(p[0, 1], 0.05)

    def test_identical_methods_give_no_difference(self):
        result = friedman_nemenyi(np.ones((5, 3)))
        self.assertEqual(result["p_value"], 1.0)
        np.testing.assert_allclose(result["mean_ranks"], [2.0, 2.0, 2.0])

    def test_too_few_methods_or_cases(self):
        with self.assertRaisesRegex(ValueError, "at least 3 methods"):
            friedman_nemenyi(TABLE[:, :2])
        with self.assertRaisesRegex(ValueError, "at least 2 matched cases"):
            friedman_nemenyi(TABLE[:1])


class TestCompareMethods(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(__import__("shutil").rmtree, self.tmp, True)
        cases = [f"case_{i}" for i in range(len(TABLE))]
        self.paths = {}
        for j, name in enumerate(["hybrid", "unet", "attention", "unetpp"]):
            rows = list(zip(cases, TABLE[:, j]))
            rows = rows[::-1] if j % 2 else rows  # row order differs: matching is by case id
            self.paths[name] = write_cases(self.tmp / name / "eval" / "run-1" / "cases.csv", rows)

    def test_outputs_and_mlflow_run(self):
        uri = f"sqlite:///{self.tmp / 'mlruns.db'}"
        folders = {name: path.parent.parent for name, path in self.paths.items()}  # newest run folder is found
        result = compare_methods(folders, self.tmp / "cmp", tracking_uri=uri)
        np.testing.assert_allclose(result["mean_ranks"], friedman_nemenyi(TABLE)["mean_ranks"])
        with open(self.tmp / "cmp" / "nemenyi_pvalues.csv") as handle:
            rows = list(csv.reader(handle))
        self.assertEqual(rows[0], ["method", "hybrid", "unet", "attention", "unetpp"])
        self.assertEqual(float(rows[1][1]), 1.0)
        self.assertEqual((self.tmp / "cmp" / "critical_difference.png").read_bytes()[:4], b"\x89PNG")
        summary = json.loads((self.tmp / "cmp" / "comparison.json").read_text())
        self.assertEqual(summary["n"], 6)
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(result["mlflow_run_id"])
        self.assertEqual(run.info.status, "FINISHED")
        self.assertAlmostEqual(run.data.metrics["friedman_p_value"], result["p_value"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "comparison")}
        self.assertIn("comparison/critical_difference.png", artifacts)

    def test_an_unreachable_tracking_store_keeps_the_comparison(self):
        # nothing listens on port 9 of this host: the comparison on disk is what matters
        result = compare_methods(self.paths, self.tmp / "cmp", tracking_uri="http://127.0.0.1:9")
        self.assertNotIn("mlflow_run_id", result)
        self.assertEqual(json.loads((self.tmp / "cmp" / "comparison.json").read_text())["n"], 6)

    def test_no_tracking_store_no_copy_for_it(self):
        compare_methods(self.paths, self.tmp / "cmp")
        self.assertTrue((self.tmp / "cmp" / "matched_cases.csv").is_file())
        self.assertFalse((self.tmp / "cmp" / "mlflow").exists())

    def test_cases_not_in_every_evaluation_are_listed_and_left_out(self):
        write_cases(self.paths["unet"], [(f"case_{i}", 0.5 + i / 100) for i in range(5)] + [("case_x", 0.5)])
        result = compare_methods(self.paths, self.tmp / "cmp")
        self.assertEqual((result["n"], result["n_left_out"]), (5, 2))
        with open(self.tmp / "cmp" / "left_out_cases.csv") as handle:
            left_out = {row["case_id"]: row["reason"] for row in csv.DictReader(handle)}
        self.assertEqual(set(left_out), {"case_5", "case_x"})
        self.assertIn("missing from unet", left_out["case_5"])
        self.assertIn("missing from hybrid, attention, unetpp", left_out["case_x"])
        table = TABLE[:5].copy()
        table[:, 1] = 0.5 + np.arange(5) / 100
        pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
        p = [wilcoxon(table[:, i], table[:, j]).pvalue for i, j in pairs]
        order = sorted(range(len(p)), key=p.__getitem__)
        holm_p, running = [0.0] * len(p), 0.0
        for rank, index in enumerate(order):  # Holm's step-down: (m - rank) p, kept monotone, capped at 1
            running = max(running, min(1.0, (len(p) - rank) * p[index]))
            holm_p[index] = running
        got = {(pair["a"], pair["b"]): pair for pair in result["pairwise_wilcoxon"]}
        names = list(self.paths)
        np.testing.assert_allclose([got[(names[i], names[j])]["p_value"] for i, j in pairs], p)
        np.testing.assert_allclose([got[(names[i], names[j])]["p_holm"] for i, j in pairs], holm_p)
        self.assertTrue((self.tmp / "cmp" / "wilcoxon_holm.csv").read_text().startswith("method_a,method_b,median_difference"))

    def test_bad_values_name_the_file_and_case(self):
        write_cases(self.paths["unet"], [("case_0", "n/a")] + [(f"case_{i}", 0.5) for i in range(1, 6)], extra_column=False)
        with self.assertRaisesRegex(ValueError, r"unet/eval/run-1/cases.csv line 2: dice of case case_0 is 'n/a', not a number"):
            load_case_scores(self.paths["unet"])
        with self.assertRaisesRegex(ValueError, "no 'hd95_px' column"):
            load_case_scores(self.paths["hybrid"], metric="hd95_px")
        with self.assertRaises(FileNotFoundError):
            load_case_scores(self.tmp / "nowhere")

    def test_cli_sub_command(self):
        args = ["compare", "--out", str(self.tmp / "cli"), "--tracking-uri", f"sqlite:///{self.tmp / 'cli.db'}"]
        for name, path in self.paths.items():
            args += ["--cases", f"{name}={path}"]
        self.assertEqual(main(args), 0)
        self.assertTrue((self.tmp / "cli" / "critical_difference.png").is_file())
        with self.assertRaises(SystemExit):
            main(["compare", "--out", str(self.tmp / "x"), "--cases", "no-equals-sign"])

def write_evaluation(folder: Path, rows: list[tuple[str, str, float]], seed: int = 0, test: list[str] | None = None) -> Path:
    """``folder/eval/run-1/cases.csv`` (case_id, split, status, dice) and the ``folder/datalist.json`` it came from,
    whose test split is ``test`` (default: the cases of ``rows``)."""
    cases = folder / "eval" / "run-1" / "cases.csv"
    cases.parent.mkdir(parents=True)
    split = {"method": "grouped-random", "val_fraction": 0.1, "test_fraction": 0.1, "folds": 0}
    test = [{"case_id": case} for case in test or [case for case, _, _ in rows]]
    (folder / "datalist.json").write_text(json.dumps({"dataset": "busi", "seed": seed, "split": split, "test": test}))
    with open(cases, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "lesion_index", "split", "status", "dice"])
        for case, status, value in rows:
            writer.writerow([case, 0, "test", status, value])
    return folder / "eval"


class TestPairedComparison(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(7)
        self.b = rng.uniform(0.4, 0.9, 40)
        self.a = np.clip(self.b + rng.normal(0.03, 0.05, 40), 0, 1)
        self.a[:3] = self.b[:3]  # ties

    def test_wilcoxon_bootstrap_and_wins_against_scipy(self):
        result = paired_comparison(self.a, self.b, n_resamples=10_000, seed=3)
        self.assertAlmostEqual(result["wilcoxon_p_value"], wilcoxon(self.a, self.b).pvalue, places=12)
        difference = self.a - self.b
        for name, estimator in (("median", np.median), ("mean", np.mean)):
            expected = bootstrap((difference,), estimator, n_resamples=10_000, confidence_level=0.95,
                                 method="percentile", rng=np.random.default_rng(3)).confidence_interval
            np.testing.assert_allclose(result[f"{name}_difference_ci"], [expected.low, expected.high])
            # and a percentile bootstrap written out here, with other draws: the same interval within Monte Carlo error
            draws = difference[np.random.default_rng(11).integers(0, 40, (20_000, 40))]
            low, high = np.percentile(estimator(draws, axis=1), [2.5, 97.5])
            np.testing.assert_allclose(result[f"{name}_difference_ci"], [low, high], atol=0.006)
            self.assertAlmostEqual(result[f"{name}_difference"], float(estimator(difference)))
        self.assertEqual(result["wins"], [int(np.sum(difference > 0)), int(np.sum(difference < 0))])
        self.assertEqual(result["ties"], 3)
        lower_better = paired_comparison(self.a, self.b, higher=False, n_resamples=10_000, seed=3)
        self.assertEqual(lower_better["wins"], result["wins"][::-1])
        self.assertEqual(lower_better["median_difference_ci"], result["median_difference_ci"])

    def test_identical_methods_and_holm(self):
        same = paired_comparison(self.b, self.b)
        self.assertEqual((same["wilcoxon_p_value"], same["wins"], same["ties"]), (1.0, [0, 0], 40))
        self.assertEqual(same["median_difference_ci"], [0.0, 0.0])
        np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])


class TestCompareTwoMethods(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(__import__("shutil").rmtree, self.tmp, True)
        pair = TestPairedComparison()
        pair.setUp()
        self.a, self.b = pair.a, pair.b
        cases = [f"case_{i:02d}" for i in range(40)]
        rows_a = [(case, "lesion", value) for case, value in zip(cases, self.a)]
        rows_b = [(case, "lesion", value) for case, value in zip(cases, self.b)]
        rows_a += [("normal_both", "both_empty", "nan"), ("normal_fp", "both_empty", "nan"), ("odd", "lesion", 0.8),
                   ("only_hybrid", "lesion", 0.9)]
        rows_b += [("normal_both", "both_empty", "nan"), ("normal_fp", "false_positive", 0.0), ("odd", "lesion", "nan")]
        self.hybrid = write_evaluation(self.tmp / "hybrid", rows_a)
        self.unet = write_evaluation(self.tmp / "basic_unet", rows_b, test=[case for case, _, _ in rows_a])

    def test_two_evaluations_through_the_cli(self):
        uri = f"sqlite:///{self.tmp / 'mlruns.db'}"
        out = self.tmp / "cmp"
        args = ["compare", "--cases", f"hybrid={self.hybrid}", "--cases", f"basic_unet={self.unet}", "--out", str(out),
                "--tracking-uri", uri]
        self.assertEqual(main(args), 0)
        summary = json.loads((out / "comparison.json").read_text())
        # compared: the 40 lesion cases and normal_fp, where the empty prediction scores Dice 1 against a false positive
        a, b = np.append(self.a, 1.0), np.append(self.b, 0.0)
        self.assertEqual((summary["test"], summary["n"], summary["both_empty_scored_best"]), ("wilcoxon", 41, 1))
        self.assertAlmostEqual(summary["wilcoxon_p_value"], wilcoxon(a, b).pvalue, places=12)
        expected = bootstrap((a - b,), np.median, n_resamples=10_000, confidence_level=0.95, method="percentile",
                             rng=np.random.default_rng(0)).confidence_interval
        np.testing.assert_allclose(summary["median_difference_ci"], [expected.low, expected.high])
        self.assertEqual(summary["wins"], [int(np.sum(a > b)), int(np.sum(a < b))])
        with open(out / "left_out_cases.csv") as handle:
            left_out = {row["case_id"]: row["reason"] for row in csv.DictReader(handle)}
        self.assertEqual(left_out["only_hybrid"], "not in every evaluation: missing from basic_unet")
        self.assertEqual(left_out["normal_both"], "both_empty in every method: hybrid (both_empty), basic_unet (both_empty)")
        self.assertEqual(left_out["odd"], "dice undefined: basic_unet (lesion)")
        self.assertEqual(summary["n_left_out"], 3)
        self.assertEqual((out / "paired_plot.png").read_bytes()[:4], b"\x89PNG")
        with open(out / "matched_cases.csv") as handle:
            self.assertEqual(len(list(csv.DictReader(handle))), 41)
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(summary["mlflow_run_id"])
        self.assertAlmostEqual(run.data.metrics["wilcoxon_p_value"], summary["wilcoxon_p_value"])
        self.assertEqual(run.data.metrics["wins_hybrid"], summary["wins"][0])
        self.assertEqual(run.data.params["test"], "wilcoxon")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "comparison")}
        self.assertTrue({"comparison/paired_plot.png", "comparison/matched_cases.csv"} <= artifacts)
        logged = Path(client.download_artifacts(run.info.run_id, "comparison/matched_cases.csv", str(self.tmp)))
        self.assertNotRegex(logged.read_text(), "case_0|normal_fp")  # pseudonyms only

    def test_another_split_is_refused_in_one_line(self):
        other = write_evaluation(self.tmp / "other", [(f"case_{i:02d}", "lesion", 0.5) for i in range(40)], seed=1)
        args = ["compare", "--cases", f"hybrid={self.hybrid}", "--cases", f"other={other}", "--out", str(self.tmp / "x")]
        with self.assertRaises(SystemExit) as raised:
            main(args)
        message = str(raised.exception)
        self.assertRegex(message, r"^breastseg compare: method 'other' was evaluated on another split than 'hybrid': "
                                  r"busi test split \w+ \(grouped-random, seed 1, .*, 40 cases\) of .*other/datalist.json vs "
                                  r"busi test split \w+ \(grouped-random, seed 0, .*, 44 cases\) of .*hybrid/datalist.json")
        self.assertNotIn("\n", message)
        self.assertFalse((self.tmp / "x" / "comparison.json").exists())

    def test_metric_of_unknown_direction_is_refused(self):
        args = ["compare", "--cases", f"hybrid={self.hybrid}", "--cases", f"u={self.unet}", "--out", str(self.tmp / "x"),
                "--metric", "lesion_index"]
        with self.assertRaisesRegex(SystemExit, "metric 'lesion_index' has no known direction; compare one of dice, iou"):
            main(args)


if __name__ == "__main__":
    unittest.main()
