"""Friedman + Nemenyi comparison of evaluations: statistics against Demšar's formulas, case matching, outputs."""

from __future__ import annotations

import csv
import json
import math
import tempfile
import unittest
from pathlib import Path

import mlflow
import numpy as np

from breastseg.workflows.cli import main
from breastseg.workflows.compare import compare_methods, friedman_nemenyi, load_case_scores

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

    def test_cases_that_differ_between_methods_are_refused(self):
        write_cases(self.paths["unet"], [(f"case_{i}", 0.5) for i in range(5)] + [("case_x", 0.5)])
        with self.assertRaisesRegex(ValueError, "'hybrid' and 'unet' were not evaluated on the same cases"):
            compare_methods(self.paths, self.tmp / "cmp")

    def test_bad_values_name_the_file_and_case(self):
        write_cases(self.paths["unet"], [("case_0", float("nan"))] + [(f"case_{i}", 0.5) for i in range(1, 6)])
        with self.assertRaisesRegex(ValueError, r"unet/eval/run-1/cases.csv line 2: dice of case case_0"):
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


if __name__ == "__main__":
    unittest.main()
