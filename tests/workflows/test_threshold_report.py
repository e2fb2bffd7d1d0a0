"""Threshold report (paper 004, Table 4): cases passing each threshold, their average, empty predictions."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from ignite.engine import Engine, Events

from breastseg.workflows.evaluation.reports import write_case_csv
from breastseg.workflows.evaluation.threshold_report import (
    TABLE4_THRESHOLDS,
    ThresholdReportWriter,
    print_threshold_report,
    threshold_label,
    threshold_table,
)

torch.set_num_threads(1)

DIAGONAL = math.hypot(223, 223)

ROWS = [
    {"case_id": "P_1", "case_key": "k1", "status": "lesion", "dice": 0.80, "iou": 0.667, "hd_max_px": 2.0},
    {"case_id": "P_2", "case_key": "k2", "status": "lesion", "dice": 0.50, "iou": 0.333, "hd_max_px": 2.75},
    {"case_id": "P_3", "case_key": "k3", "status": "lesion", "dice": 0.45, "iou": 0.29, "hd_max_px": 9.0},
    {"case_id": "P_4", "case_key": "k4", "status": "missed", "dice": 0.0, "iou": 0.0, "hd_max_px": DIAGONAL},
    {"case_id": "P_5", "case_key": "k5", "status": "both_empty", "dice": math.nan, "iou": math.nan, "hd_max_px": math.nan},
]


def test_table_4_counts_and_averages():
    report = threshold_table(ROWS)
    table = {entry["label"]: (entry["n_cases"], entry["average"]) for entry in report["thresholds"]}
    assert list(table) == ["DS >= 0.45", "DS >= 0.65", "JI >= 0.35", "JI >= 0.55", "HD <= 2.75"]
    assert table["DS >= 0.45"][0] == 3 and table["DS >= 0.45"][1] == pytest.approx((0.80 + 0.50 + 0.45) / 3)
    assert table["DS >= 0.65"] == (1, pytest.approx(0.80))
    assert table["JI >= 0.35"] == (1, pytest.approx(0.667))
    assert table["JI >= 0.55"] == (1, pytest.approx(0.667))
    assert table["HD <= 2.75"] == (2, pytest.approx((2.0 + 2.75) / 2))  # the missed lesion's diagonal fails
    assert report["n_cases"] == 5


def test_empty_predictions_are_counted_and_listed():
    empty = threshold_table(ROWS)["empty_predictions"]
    assert empty["count"] == 2 and empty["missed_lesions"] == 1
    assert empty["cases"] == [{"case": "P_4", "status": "missed"}, {"case": "P_5", "status": "both_empty"}]
    assert threshold_table(ROWS, case_column="case_key")["empty_predictions"]["cases"][0]["case"] == "k4"


def test_a_threshold_nobody_reaches_has_no_average():
    (entry,) = threshold_table(ROWS, [["dice", ">", 0.9]])["thresholds"]
    assert entry["n_cases"] == 0 and math.isnan(entry["average"])


@pytest.mark.parametrize(
    "thresholds, message",
    [
        ([["dsc", ">=", 0.5]], "not a case metric"),
        ([["dice", "=>", 0.5]], "comparison"),
        ([["dice", ">=", float("nan")]], "finite"),
        ([["dice", ">="]], "metric, comparison, value"),
        ([], "no threshold"),
    ],
)
def test_malformed_thresholds_are_refused(thresholds, message):
    with pytest.raises(ValueError, match=message):
        threshold_table(ROWS, thresholds)


def test_row_without_the_metric_is_named():
    with pytest.raises(ValueError, match="'P_9'"):
        threshold_table([{"case_id": "P_9", "status": "lesion", "dice": 0.5}], [["iou", ">=", 0.3]])


def test_writer_reads_the_case_csv_and_writes_both_copies(tmp_path):
    write_case_csv(ROWS, tmp_path / "cases.csv")
    writer = ThresholdReportWriter(tmp_path, thresholds=[list(t) for t in TABLE4_THRESHOLDS])
    engine = Engine(lambda engine, batch: None)
    writer.attach(engine)
    engine.run([0], max_epochs=1)
    local = json.loads((tmp_path / "thresholds.json").read_text())
    assert local["thresholds"][0]["n_cases"] == 3
    assert [c["case"] for c in local["empty_predictions"]["cases"]] == ["P_4", "P_5"]
    assert local["thresholds"][1]["average"] == pytest.approx(0.80)
    shared = (tmp_path / "mlflow" / "thresholds.json").read_text()
    assert "P_4" not in shared and "k4" in shared  # the MLflow copy carries case keys only
    with (tmp_path / "thresholds.csv").open() as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["threshold", "n_cases", "average"] and lines[-1][:2] == ["empty prediction", "2"]
    assert print_threshold_report(tmp_path)["n_cases"] == 5


def test_writer_without_case_csv_says_which_writer_to_attach_first(tmp_path):
    writer = ThresholdReportWriter(tmp_path)
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, writer)
    with pytest.raises(FileNotFoundError, match="CaseReportWriter"):
        engine.run([0], max_epochs=1)


def test_label_uses_the_papers_abbreviations():
    assert threshold_label("hd_max_px", "<=", 2.75) == "HD <= 2.75"
    assert threshold_label("sensitivity", ">=", 0.5) == "sensitivity >= 0.5"
