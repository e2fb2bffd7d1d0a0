"""The MLflow model registry: a trained bundle as one registered model with the alias ``candidate``.

The logged model is an MLflow ``pyfunc`` model whose artifact is the bundle itself (``configs/``,
``docs/``, ``LICENSE`` and ``models/model.pt``): loading it back rebuilds the network from the bundle's
own ``inference.json`` (``network_def``) and runs it, so the registry holds what a research team would
download from the model zoo. Stages are deprecated in MLflow; only aliases are used.

Load a registered model::

    model = mlflow.pyfunc.load_model("models:/unetplusplus_mammo@candidate")
    probabilities = model.predict(images)  # float32 (N, C, H, W) preprocessed as the bundle's chain
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import torch
from ignite.engine import Engine, Events

from breastseg.workflows.model_context import load_weights
from breastseg.workflows.tracking import quiet_mlflow

quiet_mlflow()

__all__ = ["NetworkModel", "BundleModel", "log_bundle_model", "RegisterBestModel", "CANDIDATE_ALIAS"]

logger = logging.getLogger("breastseg.registry")
CANDIDATE_ALIAS = "candidate"
#: overrides of ``inference.json`` recording how the registered weights were trained
TRAINED_WITH = "trained_with.json"
_BUNDLE_PARTS = ("configs", "docs", "LICENSE")


class NetworkModel(mlflow.pyfunc.PythonModel):
    """An MLflow model whose ``load_context`` builds ``self.network`` from the logged bundle's weights.

    The network is never pickled: ``log_model`` loads the model once to check the input example and
    pickles the instance afterwards, which would store a second copy of the weights beside ``model.pt``.
    ``predict`` has no type hints on purpose (MLflow would read them as a schema), so MLflow's type-hint
    validation, and its advice to add hints on every run, are turned off.
    """

    _skip_type_hint_validation = True  # read by mlflow.pyfunc.PythonModel.__init_subclass__

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "network"}


class BundleModel(NetworkModel):
    """A MONAI bundle served through MLflow: ``predict`` returns sigmoid probabilities."""

    def load_context(self, context: Any) -> None:
        from monai.bundle import ConfigParser

        bundle = Path(context.artifacts["bundle"])
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(bundle)
        trained_with = bundle / "configs" / TRAINED_WITH
        if trained_with.is_file():  # the network settings the weights were trained with
            parser.update(json.loads(trained_with.read_text()))
        self.network = parser.get_parsed_content("network_def")
        self.network.load_state_dict(load_weights(bundle / "models" / "model.pt"))
        self.network.eval()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            logits = self.network(images)
        return torch.sigmoid(logits).numpy()


def _stage_bundle(bundle_root: Path, weights: Path, staging: Path, network_settings: dict[str, Any] | None) -> Path:
    target = staging / bundle_root.name
    for part in _BUNDLE_PARTS:
        source = bundle_root / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        elif source.is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)
    (target / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, target / "models" / "model.pt")
    if network_settings:
        (target / "configs" / TRAINED_WITH).write_text(json.dumps(network_settings, indent=4))
    return target


@contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block, then restore the caller's setting (and the
    ``MLFLOW_TRACKING_URI`` variable, which ``mlflow.set_tracking_uri`` also writes)."""
    if not uri:
        yield
        return
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def log_bundle_model(
    run_id: str,
    bundle_root: str | Path,
    weights: str | Path,
    model_name: str,
    input_shape: tuple[int, ...],
    tracking_uri: str | None = None,
    alias: str = CANDIDATE_ALIAS,
    network_settings: dict[str, Any] | None = None,
    python_model: mlflow.pyfunc.PythonModel | None = None,
) -> dict[str, Any]:
    """Log the bundle with ``weights`` as the run's model, register it as ``model_name`` and set ``alias``.

    ``python_model`` serves it (default :class:`BundleModel`; a bundle with several networks, such as the
    two-stage detector, passes its own).

    Returns ``{"model_uri", "version", "alias_uri"}``.
    """
    bundle_root, weights = Path(bundle_root), Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"no trained weights at {weights}: nothing to register")
    example = np.zeros((1, *input_shape), dtype=np.float32)
    with _tracking_uri(tracking_uri), tempfile.TemporaryDirectory() as staging:
        staged = _stage_bundle(bundle_root, weights, Path(staging), network_settings)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model or BundleModel(),
                artifacts={"bundle": str(staged)},
                input_example=example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "monai", "mlflow", "breastseg"],
                registered_model_name=model_name,
            )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_alias(model_name, alias, version)
    logger.info("registered %s version %s as models:/%s@%s", model_name, version, model_name, alias)
    return {"model_uri": info.model_uri, "version": version, "alias_uri": f"models:/{model_name}@{alias}"}


class RegisterBestModel:
    """When training completes, log the best checkpoint as the bundle model and register it.

    Args:
        tracker: the run's :class:`~breastseg.workflows.tracking.ResilientMLFlowHandler` (its run id).
        bundle_root: the bundle folder.
        weights: the best checkpoint (``models/model.pt``).
        model_name: registered model name (the bundle's name).
        input_shape: ``(C, H, W)`` of one network input, for the model signature.
        network_settings: the config values the network was built with (``network``,
            ``network_kwargs``, ...), stored in the logged bundle so it rebuilds the same network.
        enabled: ``False`` on non-zero DDP ranks.
        python_model: the MLflow model serving the weights (default :class:`BundleModel`).
    """

    def __init__(
        self,
        tracker: Any,
        bundle_root: str | Path,
        weights: str | Path,
        model_name: str,
        input_shape: tuple[int, ...],
        network_settings: dict[str, Any] | None = None,
        enabled: bool = True,
        python_model: mlflow.pyfunc.PythonModel | None = None,
    ) -> None:
        self.tracker = tracker
        self.python_model = python_model
        self.network_settings = network_settings
        self.bundle_root = bundle_root
        self.weights = weights
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.enabled = enabled
        self.result: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled and not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        run_id = self.tracker.run_id
        if run_id is None:
            logger.warning("no MLflow run is open: the model is not registered")
            return
        try:
            self.result = log_bundle_model(
                run_id,
                self.bundle_root,
                self.weights,
                self.model_name,
                self.input_shape,
                self.tracker.client.tracking_uri,
                network_settings=self.network_settings,
                python_model=self.python_model,
            )
        except Exception as err:  # a lost server must not turn a finished training into a failure
            logger.warning("registering %s failed (%s: %s); the checkpoint is at %s", self.model_name, type(err).__name__, err, self.weights)
