"""The MLflow model registry: every training of a bundle is a new version of one registered model.

Each version is tagged with what it was trained on (``dataset``, ``split_hash``, ``paper``, ``network``,
``image_size``, ``key_metric`` and its validation value ``val_<key metric>``, read from ``model.pt``'s context).
Aliases: ``candidate`` is the newest version overall, ``candidate-<dataset>`` the newest trained on that dataset,
and ``champion`` moves only through :func:`promote` (``breastseg promote``): to a version that beats the current
champion's validation metric on the same dataset and split, or with ``force``.

The logged model is an MLflow ``pyfunc`` model whose artifact is the bundle itself (``configs/``,
``docs/``, ``LICENSE`` and ``models/model.pt``; the two-stage bundle adds its detector's weights and anchors), with
the project's code and requirements pinned to the versions that trained it: it runs the bundle's own
``inference.json`` on DICOM/PNG images or pixel arrays (:mod:`breastseg.workflows.tracking.serving`), so the registry
holds what a research team would download from the model zoo. Stages are deprecated in MLflow; only aliases are used.

Load a registered model and segment a DICOM file (a dict of columns or a ``pandas.DataFrame``, one row per image)::

    import base64
    from breastseg.workflows.tracking.registry import load_model
    from breastseg.workflows.tracking.serving import decode_png

    model = load_model("unetplusplus_mammo@candidate")
    with open("mammogram.dcm", "rb") as handle:
        image = base64.b64encode(handle.read()).decode("ascii")
    predictions = model.predict({"image": [image]})
    mask = decode_png(predictions["mask"][0])  # uint8 0/255 at the image's own size

:func:`serve_command` is what ``breastseg serve`` runs: ``mlflow models serve`` of a registered model against the
project's store.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from ignite.engine import Engine, Events

from breastseg.workflows.engine.model_context import checkpoint_id, read_context
from breastseg.workflows.errors import UserValueError
from breastseg.workflows.tracking.runs import quiet_mlflow
from breastseg.workflows.tracking.serving import TRAINED_WITH, ImageBundleModel, ServingPolicy

quiet_mlflow()

__all__ = [
    "pinned_requirements",
    "code_paths",
    "log_bundle_model",
    "RegisterBestModel",
    "CANDIDATE_ALIAS",
    "CHAMPION_ALIAS",
    "candidate_alias",
    "version_tags",
    "promotion_verdict",
    "TagEvaluatedModel",
    "promote",
    "list_versions",
    "model_uri",
    "load_model",
    "serve_command",
]

logger = logging.getLogger("breastseg.registry")
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
_BUNDLE_PARTS = ("configs", "docs", "LICENSE")
#: the project's packages (``breastseg.<name>`` lives in the folder ``<name>``), logged with every model
PROJECT_PACKAGES = ("networks", "transforms", "workflows")


def pinned_requirements() -> list[str]:
    """``name==version`` of every runtime dependency of breastseg, at the versions installed (those that trained
    the model). breastseg itself is not on PyPI: its code travels with the model (:func:`code_paths`)."""
    from packaging.requirements import Requirement

    pins = []
    for line in importlib.metadata.requires("breastseg") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra (tests, export)
        version = importlib.metadata.version(requirement.name).split("+")[0]  # 2.13.0+cpu: the index decides the build
        pins.append(f"{requirement.name}=={version}")
    return pins


def code_paths(staging: Path) -> list[str]:
    """A ``breastseg`` folder holding the project's packages (no caches), for ``log_model(code_paths=...)``:
    MLflow puts its parent on ``sys.path`` when it loads the model, so ``import breastseg.workflows`` works in an
    environment that never installed the project."""
    import shutil

    import breastseg.workflows

    project = Path(breastseg.workflows.__file__).resolve().parents[1]
    target = staging / "breastseg"
    for name in PROJECT_PACKAGES:
        shutil.copytree(project / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return [str(target)]


def _stage_bundle(
    bundle_root: Path, weights: Path, staging: Path, network_settings: dict[str, Any] | None, extra_files: dict[str, str] | None
) -> Path:
    target = staging / bundle_root.name
    for part in _BUNDLE_PARTS:
        source = bundle_root / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        elif source.is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)
    for name, source in {"models/model.pt": str(weights), **(extra_files or {})}.items():
        if not Path(source).is_file():
            raise FileNotFoundError(f"no {source} to register as {name} of the bundle")
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)
    if network_settings:
        (target / "configs" / TRAINED_WITH).write_text(json.dumps(network_settings, indent=4))
    return target


@contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block, then restore the caller's setting.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``, so the caller's setting is that variable:
    afterwards MLflow's own setting is cleared (``None``; pinning the URI resolved before would make MLflow ignore
    the variable from then on) and the variable is put back.
    """
    if not uri:
        yield
        return
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
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
    tags: dict[str, str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log the bundle with ``weights`` as the run's model, register it as ``model_name`` and set ``alias``.

    ``python_model`` serves it (default :class:`~breastseg.workflows.tracking.serving.ImageBundleModel`, images in; the
    two-stage detector passes its own). ``network_settings`` become the bundle's ``configs/trained_with.json``
    (overrides of its ``inference.json``) and ``extra_files`` (``{path in the bundle: file}``) are copied in beside
    the weights. Its requirements are pinned to the installed versions (:func:`pinned_requirements`) and the
    project's code travels with it (:func:`code_paths`). The version gets ``tags`` and :func:`version_tags` of
    ``weights``; when they name a dataset, the alias ``<alias>-<dataset>`` moves to it too.

    Returns ``{"model_uri", "version", "alias_uri", "aliases"}``.
    """
    bundle_root, weights = Path(bundle_root), Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"no trained weights at {weights}: nothing to register")
    python_model = python_model or ImageBundleModel()
    with _tracking_uri(tracking_uri), tempfile.TemporaryDirectory() as staging:
        staged = _stage_bundle(bundle_root, weights, Path(staging) / "bundle", network_settings, extra_files)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model,
                artifacts={"bundle": str(staged)},
                pip_requirements=pinned_requirements(),
                code_paths=code_paths(Path(staging) / "code"),
                registered_model_name=model_name,
                **python_model.log_arguments(tuple(input_shape)),
            )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version_tag_values = {**(tags or {}), **version_tags(weights)}
    for key, value in version_tag_values.items():
        client.set_model_version_tag(model_name, version, key, value)
    aliases = [alias]
    if version_tag_values.get("dataset"):
        aliases.append(candidate_alias(version_tag_values["dataset"], alias))
    for name in aliases:
        client.set_registered_model_alias(model_name, name, version)
    logger.info("registered %s version %s as %s", model_name, version, ", ".join(f"models:/{model_name}@{a}" for a in aliases))
    return {"model_uri": info.model_uri, "version": version, "alias_uri": f"models:/{model_name}@{alias}", "aliases": aliases}


def candidate_alias(dataset: str, alias: str = CANDIDATE_ALIAS) -> str:
    """``candidate-cbis-ddsm``: the newest version trained on ``dataset`` (aliases take letters, digits, - and _)."""
    return f"{alias}-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in dataset.lower())


def version_tags(weights: str | Path) -> dict[str, str]:
    """Model-version tags from the training context of ``weights`` (none for a bare state dict)."""
    context = read_context(weights)
    if context is None:
        return {}
    settings = context.get("settings", {})
    tags = {
        "bundle": context.get("bundle"),
        "bundle_version": context.get("bundle_version"),
        "dataset": context.get("dataset"),
        "split_hash": context.get("split_hash"),
        "network": settings.get("network"),
        "variant": settings.get("variant"),
        "image_size": settings.get("image_size", settings.get("patch_size")),
        "seed": context.get("seed"),
        "epoch": context.get("epoch"),
        "git_commit": context.get("git_commit"),
        "key_metric": context.get("key_metric"),
        "checkpoint_id": checkpoint_id(context),
    }
    if context.get("key_metric") and context.get("key_metric_value") is not None:
        tags[str(context["key_metric"])] = f"{float(context['key_metric_value']):.6g}"
    return {key: str(value) for key, value in tags.items() if value is not None}


class RegisterBestModel:
    """When training completes, log the best checkpoint as the bundle model and register it.

    Args:
        tracker: the run's :class:`~breastseg.workflows.tracking.runs.ResilientMLFlowHandler` (its run id).
        bundle_root: the bundle folder.
        weights: the best checkpoint (``models/model.pt``).
        model_name: registered model name (the bundle's name).
        input_shape: ``(C, H, W)`` of one network input, for the model signature.
        network_settings: the config values the network was built with (``network``,
            ``network_kwargs``, ...), stored in the logged bundle so it rebuilds the same network.
        enabled: ``False`` on non-zero DDP ranks.
        python_model: the MLflow model serving the weights (default :class:`~breastseg.workflows.tracking.serving.ImageBundleModel`).
        extra_files: more files the served bundle needs, ``{path in the bundle: file}`` (the two-stage detector's).
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
        extra_files: dict[str, str] | None = None,
    ) -> None:
        self.tracker = tracker
        self.extra_files = extra_files
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
            run_tags = self.tracker.client.get_run(run_id).data.tags  # the tracker forgets tags once sent
            self.result = log_bundle_model(
                run_id,
                self.bundle_root,
                self.weights,
                self.model_name,
                self.input_shape,
                self.tracker.client.tracking_uri,
                network_settings=self.network_settings,
                python_model=self.python_model,
                tags={key: run_tags[key] for key in ("paper", "bundle", "dataset", "network") if key in run_tags},
                extra_files=self.extra_files,
            )
        except Exception as err:  # a lost server must not turn a finished training into a failure
            logger.warning("registering %s failed (%s: %s); the checkpoint is at %s", self.model_name, type(err).__name__, err, self.weights)


class TagEvaluatedModel:
    """When an evaluation completes, tag the registered version of the evaluated ``model.pt`` with its metrics.

    The version is the one whose ``checkpoint_id`` tag names the checkpoint that ``loader`` loaded. Tags are
    ``<split>_<metric>`` (``test_mean_dice``), prefixed with the dataset when it is not the trained one
    (``inbreast_training_mean_dice``). Nothing is tagged for a bare state dict or a checkpoint never registered;
    a tracking failure is one warning (evaluation results stay on disk).

    Args:
        loader: the evaluation's :class:`~breastseg.workflows.engine.model_context.TrainedModelLoader`.
        model_name: registered model name (the bundle's name).
        split: the evaluated split (``eval_split``).
        tracking_uri: the MLflow store.
        enabled: ``False`` on non-zero DDP ranks.
    """

    def __init__(self, loader: Any, model_name: str, split: str, tracking_uri: str | None = None, enabled: bool = True) -> None:
        self.loader = loader
        self.model_name = model_name
        self.split = split
        self.tracking_uri = tracking_uri
        self.enabled = enabled
        self.tagged: dict[str, str] = {}

    def attach(self, engine: Engine) -> None:
        if self.enabled and not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        identity = checkpoint_id(self.loader.context)
        if identity is None:
            return
        prefix = self.split if self.loader.dataset in (None, self.loader.context.get("dataset")) else f"{self.loader.dataset}_{self.split}"
        tags = {}
        for name, value in engine.state.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tags[f"{prefix}_{name.removeprefix('val_')}"] = f"{float(value):.6g}"
        try:
            client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
            found = client.search_model_versions(f"name='{self.model_name}' AND tags.checkpoint_id='{identity}'")
            for version in found:
                for key, value in tags.items():
                    client.set_model_version_tag(self.model_name, version.version, key, value)
                logger.info("tagged %s version %s with %s", self.model_name, version.version, ", ".join(tags))
        except Exception as err:  # a lost server must not fail a finished evaluation
            logger.warning("tagging %s with the evaluation's metrics failed (%s: %s)", self.model_name, type(err).__name__, err)
            return
        if found:
            self.tagged = tags


def _metric(tags: dict[str, str]) -> tuple[str, float] | None:
    name = tags.get("key_metric")
    try:
        return (name, float(tags[name])) if name and name in tags else None
    except ValueError:
        return None


def promotion_verdict(candidate: dict[str, str], champion: dict[str, str] | None, champion_version: str | None) -> tuple[bool, str]:
    """``(promote?, why)`` for a version with tags ``candidate`` against the champion's tags.

    A version replaces the champion only when both were trained on the same dataset and split and its
    validation key metric (higher is better: Dice, AP50) is strictly higher.
    """
    if champion is None:
        return True, "there is no champion yet"
    ours, theirs = _metric(candidate), _metric(champion)
    for key in ("dataset", "split_hash"):
        if candidate.get(key) is None or candidate.get(key) != champion.get(key):
            return False, (
                f"it was trained on {key} {candidate.get(key)!r} but the champion (version {champion_version}) on "
                f"{champion.get(key)!r}, so their validation metrics are not comparable"
            )
    if ours is None or theirs is None or ours[0] != theirs[0]:
        return False, f"its validation key metric ({ours}) cannot be compared with the champion's ({theirs}, version {champion_version})"
    if ours[1] > theirs[1]:
        return True, f"its {ours[0]} {ours[1]:.4f} beats the champion's {theirs[1]:.4f} (version {champion_version}) on the same dataset and split"
    return False, f"its {ours[0]} {ours[1]:.4f} does not beat the champion's {theirs[1]:.4f} (version {champion_version})"


def promote(model_name: str, version: str | int, tracking_uri: str | None = None, force: bool = False) -> str:
    """Move the alias ``champion`` of ``model_name`` to ``version`` when :func:`promotion_verdict` allows it
    (or ``force``); returns the reason, printed by ``breastseg promote``.

    Raises:
        UserValueError: no such version, or the version does not beat the champion (the message says why).
    """
    from mlflow.exceptions import MlflowException

    from breastseg.workflows.tracking.runs import default_tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    version = str(version)
    try:
        candidate = client.get_model_version(model_name, version)
    except MlflowException:
        raise UserValueError(
            f"{model_name} has no version {version} in {client.tracking_uri}: list them in the MLflow UI (Models) "
            "or train the bundle first"
        ) from None
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == version:
        return f"{model_name} version {version} is already the champion"
    ok, why = promotion_verdict(candidate.tags, champion.tags if champion else None, str(champion.version) if champion else None)
    if not ok and not force:
        raise UserValueError(f"{model_name} version {version} is not promoted: {why}; pass --force to promote it anyway")
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    message = f"{model_name} version {version} is now models:/{model_name}@{CHAMPION_ALIAS}: {why}"
    return message + (" (--force)" if not ok else "")


def list_versions(model_name: str | None = None, tracking_uri: str | None = None) -> list[dict[str, str]]:
    """One row per registered version (of ``model_name``, else of every model), newest first: model, version, aliases,
    dataset, split hash, validation key metric and test metric, what ``breastseg models`` prints."""
    from mlflow.exceptions import MlflowException

    from breastseg.workflows.tracking.runs import default_tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    if model_name:
        try:
            client.get_registered_model(model_name)
        except MlflowException:
            raise UserValueError(f"no registered model {model_name!r} in {client.tracking_uri}: train that bundle first, or run breastseg models to list them") from None
    names = [model_name] if model_name else sorted(model.name for model in client.search_registered_models())
    rows = []
    for name in names:
        aliases: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
        for version in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
            tags, metric = version.tags, _metric(version.tags)
            rows.append({
                "model": name,
                "version": str(version.version),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                "dataset": tags.get("dataset", "-"),
                "split_hash": tags.get("split_hash", "-"),
                "validation": f"{metric[0]}={metric[1]:.4f}" if metric else "-",
                "test": ",".join(f"{k}={v}" for k, v in sorted(tags.items()) if k.endswith("test_mean_dice")) or "-",
            })
    return rows


def model_uri(name: str) -> str:
    """The ``models:/`` URI of ``<model>@<alias>``, ``<model>/<version>`` or ``<model>`` (its newest version)."""
    if name.startswith("models:/"):
        return name
    return f"models:/{name}" if "@" in name or "/" in name else f"models:/{name}/latest"


def load_model(name: str, tracking_uri: str | None = None, model_config: dict[str, Any] | None = None) -> Any:
    """An MLflow pyfunc model of the project's registry: ``load_model("unetplusplus_mammo@candidate")``.

    ``name`` is ``<model>@<alias>``, ``<model>/<version>``, ``<model>`` (its newest version) or a ``models:/`` URI.
    The store is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project's own (``mlflow/mlruns.db``):
    nothing to export. ``model_config`` sets what the model accepts
    (:class:`~breastseg.workflows.tracking.serving.ServingPolicy`: ``image_folder``, ``max_pixels``, ``max_bytes``).
    """
    from breastseg.workflows.tracking.runs import default_tracking_uri

    with _tracking_uri(tracking_uri or default_tracking_uri()):
        return mlflow.pyfunc.load_model(model_uri(name), model_config=model_config)


def _registered_version(name: str, tracking_uri: str) -> str:
    """The version ``name`` stands for in the store; refused in one line when there is none."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    model, _, alias = name.partition("@")
    model, _, version = model.partition("/")
    try:
        if alias:
            return str(client.get_model_version_by_alias(model, alias).version)
        if version and version != "latest":
            return str(client.get_model_version(model, version).version)
        versions = client.search_model_versions(f"name='{model}'")
    except MlflowException:
        versions = []
    if versions:
        return str(max(int(v.version) for v in versions))
    raise UserValueError(
        f"no registered model {name!r} in {tracking_uri}: breastseg models lists the models, versions and aliases there "
        "(train a bundle to register one)"
    )


def serve_command(
    name: str,
    port: int = 5001,
    host: str = "127.0.0.1",
    workers: int = 1,
    model_config: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> tuple[list[str], dict[str, str], str]:
    """``(command, environment, description)`` of ``mlflow models serve`` for the registered model ``name``
    (``<model>@<alias>``, ``<model>/<version>`` or ``<model>``): the store is ``tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else the project's own, set in the environment as MLflow needs it to find the model;
    ``model_config`` (:class:`~breastseg.workflows.tracking.serving.ServingPolicy`, checked here, its folder made
    absolute) travels in MLflow's ``SERVING_MODEL_CONFIG``; the environment's ``PATH`` starts with this Python's
    folder (MLflow starts ``uvicorn`` from ``PATH``).

    Raises:
        UserValueError: the store has no such model, version or alias, or ``model_config`` is wrong.
    """
    import sys

    from mlflow.pyfunc.scoring_server import SERVING_MODEL_CONFIG

    from breastseg.workflows.tracking.runs import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    version = _registered_version(name, uri)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if model_config:
        env[SERVING_MODEL_CONFIG] = json.dumps(ServingPolicy.from_model_config(model_config).model_config())
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri(name), "--env-manager", "local",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]
    description = f"serving {model_uri(name)} (version {version} in {uri}) on http://{host}:{port}/invocations"
    return command, env, description
