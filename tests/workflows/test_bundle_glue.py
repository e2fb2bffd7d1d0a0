"""Bundle glue: override checks, the run's config, datalist reuse, record selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from breastseg.workflows.commands.bundle import check_cli_overrides, prepare_datalist, run_config, select_records
from breastseg.workflows.data.synthetic import cbis_ddsm

ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(ROOT / "bundles" / "unetplusplus_mammo" / "configs" / "train.json")
EVALUATE = str(ROOT / "bundles" / "unetplusplus_mammo" / "configs" / "evaluate.json")


def argv(*overrides: str) -> list[str]:
    return ["run", "training", "--config_file", TRAIN, *overrides]


def test_known_overrides_of_the_right_type_pass():
    check_cli_overrides(argv("--max_epochs", "2", "--learning_rate", "1e-4", "--resume", "--dataset", "inbreast"))
    check_cli_overrides(argv("--train#trainer#max_epochs", "3", "--network_kwargs", "{'dropout': 0.5}"))


def test_unknown_override_names_the_key():
    with pytest.raises(KeyError, match="--max_epoch"):
        check_cli_overrides(argv("--max_epoch", "2"))


@pytest.mark.parametrize(
    "key,value", [("max_epochs", "two"), ("learning_rate", "fast"), ("resume", "3"), ("network_kwargs", "[1]")]
)
def test_override_of_another_type_names_key_and_types(key, value):
    with pytest.raises(TypeError, match=f"--{key}"):
        check_cli_overrides(argv(f"--{key}", value))


def test_keys_of_merged_config_files_are_known():
    check_cli_overrides(["run", "evaluating", "--config_file", f"['{TRAIN}','{EVALUATE}']", "--eval_split", "validation"])
    with pytest.raises(KeyError, match="eval_split"):
        check_cli_overrides(argv("--eval_split", "validation"))


def test_run_config_applies_overrides():
    config = run_config(argv("--max_epochs", "7", "--network", "linknet"))
    assert config["max_epochs"] == 7 and config["network"] == "linknet"
    assert config["bundle_name"] == "unetplusplus_mammo" and "imports" not in config
    assert run_config(["pytest"]) == {}


def test_datalist_is_reused_for_the_same_split_and_redone_for_another(tmp_path):
    data = tmp_path / "cbis"
    cbis_ddsm.generate(data, cases=6, seed=0, full_size=False, rows=256)
    target = tmp_path / "datalist.json"
    first = prepare_datalist("cbis-ddsm", str(data), str(target), seed=1)
    stamp = target.stat().st_mtime_ns
    again = prepare_datalist("cbis-ddsm", str(data), str(target), seed=1)
    assert again == first and target.stat().st_mtime_ns == stamp
    folded = prepare_datalist("cbis-ddsm", str(data), str(target), seed=1, folds=2)
    assert folded["split"]["folds"] == 2
    assert all("fold" in record for record in folded["training"] + folded["validation"])
    train = select_records(folded, "training", fold=0)
    val = select_records(folded, "validation", fold=0)
    assert train and val and not {r["case_id"] for r in train} & {r["case_id"] for r in val}
    assert set(train[0]) == {"image", "label", "label_format", "case_id", "default_spacing"}


def test_an_evaluation_refuses_to_resplit_a_training_runs_datalist(tmp_path):
    data = tmp_path / "cbis"
    cbis_ddsm.generate(data, cases=6, seed=0, full_size=False, rows=256)
    target = tmp_path / "datalist.json"
    trained = prepare_datalist("cbis-ddsm", str(data), str(target), seed=1)
    assert prepare_datalist("cbis-ddsm", str(data), str(target), seed=1, replace=False) == trained
    written = target.read_bytes()
    with pytest.raises(ValueError, match=r"datalist.json holds the training run.s split, made with seed 1 \(this run: 0\)\. "):
        prepare_datalist("cbis-ddsm", str(data), str(target), seed=0, replace=False)
    with pytest.raises(ValueError, match=r"made with test_fraction 0\.1 \(this run: 0\.3\)\. "):
        prepare_datalist("cbis-ddsm", str(data), str(target), seed=1, test_fraction=0.3, replace=False)
    assert target.read_bytes() == written  # the training run's split is left as it was


def test_lesions_only_drops_images_without_a_lesion():
    datalist = {"test": [
        {"image": "a.png", "label": None, "label_format": "none", "case_id": "a", "lesion_count": 0},
        {"image": "b.png", "label": "b_mask.png", "label_format": "png", "case_id": "b", "lesion_count": 2},
    ]}
    assert [r["case_id"] for r in select_records(datalist, "test")] == ["a", "b"]
    assert [r["case_id"] for r in select_records(datalist, "test", lesions_only=True)] == ["b"]
    with pytest.raises(KeyError, match="no split 'validation'"):
        select_records(datalist, "validation")
