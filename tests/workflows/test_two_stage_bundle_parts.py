"""Paper 002 bundle parts: stage configs run and parsed from another config, Tables 4/5, the inference overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from breastseg.workflows.engine.stages import run_stage, stage_content, stage_overrides
from breastseg.workflows.two_stage.evaluation import TABLE5_SETUPS, average_tables, write_tables
from breastseg.workflows.two_stage.inference import BOX_COLOUR, CONTOUR_COLOUR, overlay

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stage_config(tmp_path):
    config = {
        "output_dir": "/nowhere",
        "seed": 0,
        "detector": {"width": 2, "area": "$@detector#width * @seed"},
        "run": ["$open(os.path.join(@output_dir, 'ran.json'), 'w').write(json.dumps({'seed': @seed, 'width': @detector#width}))"],
        "imports": ["$import os", "$import json"],
        "training": "%run",
    }
    path = tmp_path / "stage.json"
    path.write_text(json.dumps(config))
    return path


def test_stage_gets_only_the_shared_values_it_has(stage_config):
    values = stage_overrides(stage_config, {"seed": 3, "patch_size": 64}, {"detector#width": 5})
    assert values == {"seed": 3, "detector#width": 5}


def test_an_unknown_stage_override_is_refused(stage_config):
    with pytest.raises(KeyError, match="no config id 'detector#widht'"):
        stage_overrides(stage_config, {}, {"detector#widht": 5})


def test_stage_content_is_parsed_with_the_shared_values(stage_config):
    assert stage_content(stage_config, "detector#area", {"seed": 3}, {"detector#width": 5}) == 15
    with pytest.raises(KeyError, match="no config id 'detector#missing'"):
        stage_content(stage_config, "detector#missing", {})


def test_a_missing_stage_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="detector.json does not exist"):
        stage_overrides(tmp_path / "detector.json", {})


def test_run_stage_runs_the_stage_through_the_bundle_cli(stage_config, tmp_path):
    run_stage(stage_config, "training", {"output_dir": str(tmp_path), "seed": 7}, {"detector#width": 4})
    assert json.loads((tmp_path / "ran.json").read_text()) == {"seed": 7, "width": 4}


def test_a_failed_or_skipped_stage(stage_config, tmp_path):
    with pytest.raises(RuntimeError, match="stage .*stage.json \\(training\\) failed"):
        run_stage(stage_config, "training", {"output_dir": str(tmp_path / "absent")})
    run_stage(stage_config, "training", {"output_dir": str(tmp_path)}, enabled=False)
    assert not (tmp_path / "ran.json").exists()


def _summary(folder, dice, n, missed=0):
    folder.mkdir(parents=True)
    summary = {"metrics": {"dice": {"mean": dice, "n": n}}, "status_counts": {"missed": missed}}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_tables_4_and_5_from_the_setups_summaries(tmp_path):
    _summary(tmp_path / "patch", 0.9086, 12)
    _summary(tmp_path / "one_stage", 0.5217, 7)
    _summary(tmp_path / "two_stage_msf", 0.8044, 7, missed=1)
    tables = write_tables(tmp_path, "v19unetplusplus")
    assert tables["table4"] == {"dice": 0.9086, "n": 12}
    assert (tmp_path / "table4.md").read_text().splitlines()[2] == "| v19unetplusplus | 90.86 | 12 |"
    rows = (tmp_path / "table5.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == list(TABLE5_SETUPS.values())
    assert rows[0] == "| v19unetplusplus | one-stage | 52.17 | 7 | 0 |"
    assert rows[1] == "| v19unetplusplus | two-stage w/o MSF | n/a | 0 | 0 |"  # not evaluated
    assert rows[2] == "| v19unetplusplus | two-stage with MSF | 80.44 | 7 | 1 |"
    assert json.loads((tmp_path / "tables.json").read_text())["table5"]["two_stage_msf"]["missed"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"]["dice"]["mean"] == 0.8044  # the pipeline's


def test_repeated_splits_give_mean_and_standard_error(tmp_path):
    for split, (patch, msf) in enumerate([(0.90, 0.70), (0.92, 0.80), (0.94, 0.90)]):
        _summary(tmp_path / f"T{split}" / "patch", patch, 4)
        _summary(tmp_path / f"T{split}" / "two_stage_msf", msf, 4)
        write_tables(tmp_path / f"T{split}", "v19unetplusplus")
    result = average_tables([tmp_path / f"T{split}" for split in range(3)], tmp_path / "protocol.json")
    assert result["splits"] == 3
    assert result["table4_patch_dice"]["mean"] == pytest.approx(0.92)
    assert result["table5_two_stage_msf_dice"]["standard_error"] == pytest.approx(0.1 / 3**0.5)  # SD 0.1, n 3
    assert result["table5_two_stage_msf_dice"]["per_split"] == [0.7, 0.8, 0.9]
    assert json.loads((tmp_path / "protocol.json").read_text())["splits"] == 3
    with pytest.raises(FileNotFoundError, match="no tables.json in"):
        average_tables([tmp_path / "absent"])


def test_overlay_draws_boxes_and_mask_contours():
    image = np.linspace(0, 4000, 40 * 30).reshape(40, 30)
    mask = np.zeros((40, 30), dtype=np.uint8)
    mask[20:30, 5:15] = 1
    picture = overlay(image, mask, np.array([[2.0, 3.0, 12.0, 9.0, 0.8]]), line_width=1)
    assert picture.shape == (40, 30, 3) and picture.dtype == np.uint8
    assert tuple(picture[3, 6]) == BOX_COLOUR and tuple(picture[8, 11]) == BOX_COLOUR  # top and bottom-right edges
    assert tuple(picture[20, 10]) == CONTOUR_COLOUR and tuple(picture[25, 5]) == CONTOUR_COLOUR
    assert picture[25, 10, 0] == picture[25, 10, 1] == picture[25, 10, 2]  # inside the mass: the grey image
    assert overlay(image, np.zeros_like(mask), np.zeros((0, 5))).std(axis=2).max() == 0  # nothing found: grey only


@pytest.mark.parametrize("base", ["train.json", "inference.json"])
def test_the_short_cpu_overlay_only_sets_ids_the_configs_have(base):
    """``short_cpu.json`` is laid over train/evaluate and inference: a renamed id would otherwise add a dead key."""
    configs = ROOT / "bundles" / "two_stage_msf" / "configs"
    overlay = json.loads((configs / "short_cpu.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(configs / base))
    not_for_inference = {"max_epochs", "pipeline#single_view_size"}  # training, and evaluation's single-view set-up
    stale = [key for key in overlay if key not in parser and not (base == "inference.json" and key in not_for_inference)]
    assert not stale, f"{base} has no {stale}"
    detector_values = stage_overrides(configs / "detector.json", {}, overlay["detector_stage#overrides"])
    assert detector_values == overlay["detector_stage#overrides"]
