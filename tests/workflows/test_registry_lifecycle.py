"""Registry lifecycle on a real MLflow SQLite store: every training a new tagged version, per-dataset
candidate aliases, promotion of ``champion`` by the validation metric, and the project-store loader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from breastseg.networks import build_network
from breastseg.workflows.engine.model_context import split_hash, training_context
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.tracking import runs as tracking
from ignite.engine import Engine, Events

from breastseg.workflows.engine.model_context import TrainedModelLoader
from breastseg.workflows.tracking.registry import TagEvaluatedModel, load_model, log_bundle_model, promote, serve_command
from mlflow.pyfunc.scoring_server import SERVING_MODEL_CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transforms"))
from mammo_factory import write_dicom  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "unetplusplus_mammo"
MODEL = "unetplusplus_mammo"
SETTINGS = {
    "network": "unetplusplus",
    "network_kwargs": {"features": [4, 4, 4, 4, 4], "norm": "batch", "dropout": 0.0},
    "in_channels": 1,
    "image_size": 32,
}
SPLIT_A = {"training": [{"case_id": "a"}], "validation": [{"case_id": "b"}], "test": [{"case_id": "c"}]}
SPLIT_B = {"training": [{"case_id": "x"}], "validation": [{"case_id": "y"}], "test": [{"case_id": "z"}]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with its own ``mlflow/settings.json`` store, and four registered trainings."""
    root = tmp_path_factory.mktemp("project")
    (root / "mlflow").mkdir()
    shutil.copy2(ROOT / "mlflow" / "settings.json", root / "mlflow" / "settings.json")
    uri = "sqlite:///" + (root / "mlflow" / "mlruns.db").as_posix()
    tracking.prepare_sqlite_store(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("breastseg-unetplusplus_mammo", artifact_location=(root / "artifacts").as_uri())
    versions = {}
    for name, dataset, split, dice in (
        ("v1", "cbis-ddsm", SPLIT_A, 0.50),
        ("v2", "cbis-ddsm", SPLIT_A, 0.60),
        ("v3", "inbreast", SPLIT_B, 0.90),
        ("v4", "cbis-ddsm", SPLIT_A, 0.55),
    ):
        network = build_network("unetplusplus", spatial_dims=2, in_channels=1, out_channels=1, **SETTINGS["network_kwargs"])
        context = training_context(BUNDLE, SETTINGS, dataset, split, seed=0, key_metric="val_mean_dice")
        weights = root / name / "model.pt"
        weights.parent.mkdir()
        torch.save({"model": network.state_dict(), "context": {**context, "epoch": 2, "key_metric_value": dice}}, weights)
        run = client.create_run(experiment, tags={"workflow": "train"})
        result = log_bundle_model(
            run.info.run_id, BUNDLE, weights, MODEL, (1, 32, 32), uri, network_settings=SETTINGS, tags={"paper": "001"}
        )
        client.set_terminated(run.info.run_id)
        versions[name] = result["version"]
    return {"root": root, "uri": uri, "client": client, "versions": versions}


def _evaluate(project, name: str, dataset: str, dice: float) -> TagEvaluatedModel:
    """A real engine whose run loads ``name``'s model.pt and ends with ``dice`` as its key metric."""
    network = build_network("unetplusplus", spatial_dims=2, in_channels=1, out_channels=1, **SETTINGS["network_kwargs"])
    loader = TrainedModelLoader(project["root"] / name / "model.pt", network, SETTINGS, dataset=dataset, cross_dataset=True)
    engine = Engine(lambda engine, batch: None)
    loader.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_mean_dice=dice, val_hd95=3.5))
    tagger = TagEvaluatedModel(loader, MODEL, "test", project["uri"])
    tagger.attach(engine)
    engine.run([0], max_epochs=1)
    return tagger


def test_every_training_is_a_new_version_tagged_with_how_it_was_trained(project):
    client, versions = project["client"], project["versions"]
    assert len(set(versions.values())) == 4
    tags = client.get_model_version(MODEL, versions["v3"]).tags
    assert tags["dataset"] == "inbreast" and tags["split_hash"] == split_hash(SPLIT_B) and tags["paper"] == "001"
    assert tags["network"] == "unetplusplus" and tags["image_size"] == "32" and tags["bundle_version"] == "0.1.0"
    assert tags["key_metric"] == "val_mean_dice" and float(tags["val_mean_dice"]) == pytest.approx(0.90)


def test_candidate_aliases_name_the_newest_version_overall_and_per_dataset(project):
    client, versions = project["client"], project["versions"]
    assert str(client.get_model_version_by_alias(MODEL, "candidate").version) == versions["v4"]
    assert str(client.get_model_version_by_alias(MODEL, "candidate-cbis-ddsm").version) == versions["v4"]
    assert str(client.get_model_version_by_alias(MODEL, "candidate-inbreast").version) == versions["v3"]


def test_promotion_moves_champion_only_to_a_better_version_of_the_same_dataset_and_split(project):
    client, versions, uri = project["client"], project["versions"], project["uri"]
    assert "no champion yet" in promote(MODEL, versions["v1"], uri)
    assert "beats the champion's 0.5000" in promote(MODEL, versions["v2"], uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == versions["v2"]
    with pytest.raises(UserValueError, match="0.5500 does not beat the champion's 0.6000"):
        promote(MODEL, versions["v4"], uri)
    with pytest.raises(UserValueError, match="trained on dataset 'inbreast' but the champion .* 'cbis-ddsm'"):
        promote(MODEL, versions["v3"], uri)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == versions["v2"]
    assert "(--force)" in promote(MODEL, versions["v3"], uri, force=True)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == versions["v3"]


def test_promote_command_refuses_in_one_line(project):
    command = [str(Path(sys.executable).with_name("breastseg")), "promote", MODEL, project["versions"]["v1"], "--tracking-uri", project["uri"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and "is not promoted" in line and "--force" in line


def test_models_command_lists_versions_with_aliases_and_metrics(project):
    command = [str(Path(sys.executable).with_name("breastseg")), "models", MODEL, "--tracking-uri", project["uri"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["model", "version", "aliases", "dataset", "split_hash", "validation", "test"]
    by_version = {row.split()[1]: row.split() for row in rows}
    assert set(by_version) == set(project["versions"].values())
    v3 = by_version[project["versions"]["v3"]]
    assert "candidate-inbreast" in v3[2] and v3[3] == "inbreast" and v3[4] == split_hash(SPLIT_B) and v3[5] == "val_mean_dice=0.9000"
    missing = subprocess.run([*command[:2], "nonexistent", *command[3:]], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and missing.stderr.strip().startswith("error: no registered model 'nonexistent'")


def test_load_model_finds_the_project_store_without_an_exported_uri(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "PROJECT_ROOT", project["root"])
    before = mlflow.get_tracking_uri()
    model = load_model("unetplusplus_mammo@candidate-inbreast")
    assert mlflow.get_tracking_uri() == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert mlflow.get_tracking_uri() == "sqlite:///elsewhere.db"  # nothing pinned: the environment still decides
    assert model.metadata.get_input_schema().input_names() == ["image", "array", "roi"]
    pixels = np.random.default_rng(0).integers(0, 4096, (50, 40))
    predictions = model.predict(pd.DataFrame({"array": [pixels]}))
    assert (predictions["rows"][0], predictions["columns"][0]) == (50, 40)  # the image's own size, not the trained 32
    json.dumps(model.metadata.to_dict())  # the metadata is plain


def test_the_readme_snippet_runs_as_written(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "PROJECT_ROOT", project["root"])
    readme = (ROOT / "README.md").read_text()
    (snippet,) = [block for block in readme.split("```python\n")[1:] if "load_model(" in block.split("```")[0]]
    namespace: dict = {}
    exec(snippet.split("```")[0], namespace)
    assert namespace["mask"].shape == namespace["pixels"].shape and set(np.unique(namespace["mask"])) <= {0, 255}


def _literal_block(text: str) -> str:
    """The indented lines that open ``text`` (a reStructuredText literal block, after its ``::``), dedented."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.startswith(" "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_registry_docstring_example_runs_as_written(project, monkeypatch, tmp_path):
    """The module docstring's example, with a DICOM written by pydicom where it reads one: a dict of columns works."""
    from breastseg.workflows.tracking import registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "PROJECT_ROOT", project["root"])
    monkeypatch.chdir(tmp_path)
    write_dicom(tmp_path / "mammogram.dcm", np.random.default_rng(0).integers(0, 4096, (60, 44)).astype(np.uint16))
    (example,) = [_literal_block(block) for block in registry.__doc__.split("::\n")[1:] if "load_model(" in block]
    namespace: dict = {}
    exec(example, namespace)
    assert namespace["mask"].shape == (60, 44) and set(np.unique(namespace["mask"])) <= {0, 255}


def test_serve_command_uses_the_project_store_and_refuses_what_it_does_not_hold(project, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "PROJECT_ROOT", project["root"])
    command, env, description = serve_command("unetplusplus_mammo@candidate-inbreast", 5099, model_config={"image_folder": str(tmp_path)})
    assert command[1:5] == ["-m", "mlflow", "models", "serve"] and command[command.index("-m", 2) + 1] == "models:/unetplusplus_mammo@candidate-inbreast"
    assert env["MLFLOW_TRACKING_URI"] == project["uri"] and f"version {project['versions']['v3']} in {project['uri']}" in description
    assert json.loads(env[SERVING_MODEL_CONFIG])["image_folder"] == str(tmp_path.resolve())
    assert serve_command("unetplusplus_mammo")[2].startswith(f"serving models:/unetplusplus_mammo/latest (version {max(map(int, project['versions'].values()))} ")
    for name in ("nonexistent@champion", "unetplusplus_mammo@no-such-alias", "unetplusplus_mammo/99"):
        with pytest.raises(UserValueError, match=f"no registered model '{name}' in "):
            serve_command(name)
    with pytest.raises(UserValueError, match="image_folder .* is no folder on the server"):
        serve_command("unetplusplus_mammo", model_config={"image_folder": str(tmp_path / "missing")})
    result = subprocess.run(
        [str(Path(sys.executable).with_name("breastseg")), "serve", "nonexistent@champion", "--tracking-uri", project["uri"]],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 1 and result.stderr.strip().startswith("error: no registered model 'nonexistent@champion'")


def test_evaluation_tags_the_evaluated_version_with_its_test_metrics(project):
    client, versions = project["client"], project["versions"]
    tagger = _evaluate(project, "v2", "cbis-ddsm", 0.58)
    tags = client.get_model_version(MODEL, versions["v2"]).tags
    assert tags["test_mean_dice"] == "0.58" and tags["test_hd95"] == "3.5" and tagger.tagged
    assert "test_mean_dice" not in client.get_model_version(MODEL, versions["v1"]).tags
    _evaluate(project, "v2", "inbreast", 0.31)  # another dataset: its own tag, the test metric kept
    tags = client.get_model_version(MODEL, versions["v2"]).tags
    assert tags["inbreast_test_mean_dice"] == "0.31" and tags["test_mean_dice"] == "0.58"
