"""The training context a ``model.pt`` carries: written by real training steps, read back weights-only, and
checked by evaluation and inference (their real configs parsed by MONAI's ConfigParser)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.handlers import ValidationHandler

from breastseg.networks import build_network
from breastseg.workflows.engine.checkpoints import BEST_MODEL_FILE, EpochCheckpointer
from breastseg.workflows.engine.harness import build_evaluator, build_trainer
from breastseg.workflows.engine.model_context import (
    TrainedModelLoader,
    load_checkpoint,
    split_hash,
    trained_setting,
    training_context,
)
from breastseg.workflows.engine.postprocessing import binary_postprocessing
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.evaluation.evaluate import key_metric

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "unetplusplus_mammo"
DATALIST = {
    "training": [{"case_id": "a"}, {"case_id": "b"}],
    "validation": [{"case_id": "c"}],
    "test": [{"case_id": "d"}],
}
SETTINGS = {"network": "unetplusplus", "network_kwargs": {"norm": "batch", "dropout": 0.0}, "in_channels": 1, "image_size": 64}


def _network() -> torch.nn.Module:
    return build_network("unetplusplus", spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 4, 4, 4))


def _train(ckpt_dir: Path, context: dict | None) -> torch.nn.Module:
    """Two real epochs of a tiny UNet++ with validation; ``model.pt`` written by the harness's checkpointer."""
    generator = torch.Generator().manual_seed(0)
    data = []
    for index in range(4):
        label = torch.zeros(1, 16, 16)
        label[:, 4:10, 5:11] = 1
        data.append({"image": label * 0.7 + 0.3 * torch.rand(1, 16, 16, generator=generator), "label": label, "case_id": str(index)})
    net = _network()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(data), batch_size=2), net, key_metric("val_mean_dice"), postprocessing=binary_postprocessing()
    )
    handlers = [
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        EpochCheckpointer(ckpt_dir, net, optimizer, evaluator=evaluator, context=context),
    ]
    trainer = build_trainer("cpu", 2, DataLoader(Dataset(data), batch_size=2), net, optimizer, torch.nn.BCEWithLogitsLoss(), train_handlers=handlers)
    trainer.run()
    return net


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("models")
    context = training_context(BUNDLE, SETTINGS, "inbreast", DATALIST, seed=3, key_metric="val_mean_dice")
    net = _train(ckpt_dir, context)
    return ckpt_dir, net


def test_model_pt_carries_the_training_context_and_loads_weights_only(trained):
    ckpt_dir, net = trained
    state = torch.load(ckpt_dir / BEST_MODEL_FILE, weights_only=True)
    weights, context = state["model"], state["context"]
    assert set(weights) == set(net.state_dict())
    assert context["bundle"] == "unetplusplus_mammo" and context["bundle_version"] == "0.1.0"
    assert context["settings"] == SETTINGS and context["dataset"] == "inbreast" and context["seed"] == 3
    assert context["split_hash"] == split_hash(DATALIST) and context["key_metric"] == "val_mean_dice"
    assert context["epoch"] in (1, 2) and 0.0 <= context["key_metric_value"] <= 1.0
    assert context["git_commit"] is None or len(context["git_commit"].split("+")[0]) == 40
    loaded, loaded_context = load_checkpoint(ckpt_dir / BEST_MODEL_FILE)
    assert loaded_context == context and set(loaded) == set(net.state_dict())


def test_split_hash_changes_with_the_cases_of_a_split_and_the_fold():
    moved = {**DATALIST, "training": [{"case_id": "a"}], "test": [{"case_id": "b"}, {"case_id": "d"}]}
    assert split_hash(DATALIST) != split_hash(moved)
    assert split_hash(DATALIST) != split_hash(DATALIST, fold=1)
    assert split_hash(DATALIST) == split_hash({name: list(reversed(v)) for name, v in DATALIST.items()})


def test_a_bare_state_dict_still_loads_with_a_warning(tmp_path, caplog):
    net = _network()
    torch.save(net.state_dict(), tmp_path / BEST_MODEL_FILE)
    with caplog.at_level(logging.WARNING, logger="breastseg.checkpoints"):
        weights, context = load_checkpoint(tmp_path / BEST_MODEL_FILE)
    assert context is None and set(weights) == set(net.state_dict())
    assert "bare state dict" in caplog.text and "unknown" in caplog.text
    target = _network()
    TrainedModelLoader(tmp_path / BEST_MODEL_FILE, target, settings={"image_size": 512}, dataset="cbis-ddsm")()
    assert all(torch.equal(target.state_dict()[k], v) for k, v in net.state_dict().items())
    assert trained_setting(tmp_path, "image_size", 224) == 224


def test_another_image_size_or_network_is_refused_in_one_line(trained):
    ckpt_dir, _ = trained
    with pytest.raises(UserValueError) as error:
        TrainedModelLoader(ckpt_dir / BEST_MODEL_FILE, _network(), settings={**SETTINGS, "image_size": 224})()
    message = str(error.value)
    assert "\n" not in message and "image_size=64" in message and "image_size=224" in message
    with pytest.raises(UserValueError, match="network_kwargs"):
        TrainedModelLoader(ckpt_dir / BEST_MODEL_FILE, _network(), settings={**SETTINGS, "network_kwargs": {"norm": "instance"}})()


def test_another_dataset_or_split_is_refused_unless_cross_dataset(trained, caplog):
    ckpt_dir, _ = trained
    path = ckpt_dir / BEST_MODEL_FILE
    with pytest.raises(UserValueError) as error:
        TrainedModelLoader(path, _network(), SETTINGS, dataset="cbis-ddsm", datalist=DATALIST)()
    assert "'inbreast'" in str(error.value) and "'cbis-ddsm'" in str(error.value) and "--cross_dataset true" in str(error.value)
    other_split = {**DATALIST, "test": [{"case_id": "e"}]}
    with pytest.raises(UserValueError, match=f"split {split_hash(DATALIST)} .* split {split_hash(other_split)}"):
        TrainedModelLoader(path, _network(), SETTINGS, dataset="inbreast", datalist=other_split)()
    target = _network()
    with caplog.at_level(logging.WARNING, logger="breastseg.checkpoints"):
        TrainedModelLoader(path, target, SETTINGS, dataset="cbis-ddsm", datalist=DATALIST, cross_dataset=True)()
    assert "trained on dataset 'inbreast'" in caplog.text
    TrainedModelLoader(path, _network(), SETTINGS, dataset="inbreast", datalist=DATALIST)()  # the trained split


def test_inference_and_evaluation_configs_default_to_the_trained_settings(trained):
    ckpt_dir, _ = trained
    configs = BUNDLE / "configs"
    inference = ConfigParser()
    inference.read_config(str(configs / "inference.json"))
    inference["ckpt_dir"] = str(ckpt_dir)
    assert inference.get_parsed_content("image_size") == 64
    assert inference.get_parsed_content("trained_settings") == SETTINGS
    evaluation = ConfigParser()
    evaluation.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    evaluation["ckpt_dir"] = str(ckpt_dir)
    assert evaluation.get_parsed_content("dataset") == "inbreast"
    assert evaluation.get_parsed_content("image_size") == 64
    # a value the user gives wins (and is then checked against the checkpoint)
    inference["image_size"] = 128
    assert inference.get_parsed_content("trained_settings")["image_size"] == 128
