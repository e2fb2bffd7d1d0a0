"""The training context a ``model.pt`` carries, and the checks of the runs that load it.

``model.pt`` is ``{"model": state_dict, "context": {...}}``: the weights and, as plain Python values, how
they were trained (bundle name and version, network and its settings, ``image_size`` and the chain's
settings, dataset, a hash of the datalist split, seed, epoch, the validation key metric, the project's git
commit when known). It loads with ``torch.load(..., weights_only=True)``, MONAI's ``CheckpointLoader``
(key ``model``) and ``ckpt_export --key_in_ckpt model``; :func:`load_weights_only` reads it in either of torch's
formats (zip, and the legacy one older tools write) and refuses in one line a file a weights-only load cannot read.

Evaluation and inference take every setting the user did not give from the context
(:func:`trained_setting`) and refuse one that contradicts it (:class:`TrainedModelLoader`). A bare state dict
(written before contexts existed) still loads, with a warning that its context is unknown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from breastseg.workflows.errors import UserFileNotFoundError, UserValueError

__all__ = [
    "WEIGHTS_KEY",
    "CONTEXT_KEY",
    "SPLIT_NAMES",
    "split_hash",
    "git_commit",
    "training_context",
    "load_checkpoint",
    "load_weights",
    "read_context",
    "trained_setting",
    "check_context",
    "checkpoint_id",
    "load_weights_only",
    "NUMERIC_NUMPY_GLOBALS",
    "TrainedModelLoader",
]

logger = logging.getLogger("breastseg.checkpoints")
WEIGHTS_KEY = "model"
CONTEXT_KEY = "context"
SPLIT_NAMES = ("training", "validation", "test")


def split_hash(datalist: Mapping[str, Any], fold: int | None = None) -> str:
    """12 hex digits naming which cases are in which split (and the fold): equal hashes, equal splits.

    Only case ids enter the hash, so a dataset moved to another folder keeps its hash; they cannot be read back.
    """
    splits = {name: sorted(str(r.get("case_id", r.get("image"))) for r in datalist.get(name, [])) for name in SPLIT_NAMES}
    if fold is not None and fold >= 0:
        splits["fold"] = [str(fold)]
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:12]


def git_commit(folder: str | Path) -> str | None:
    """The commit checked out in ``folder``'s git work tree (``+dirty`` with uncommitted changes), else ``None``."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _bundle_version(bundle_root: Path) -> str | None:
    try:
        return json.loads((bundle_root / "configs" / "metadata.json").read_text()).get("version")
    except (OSError, ValueError):
        return None


def training_context(
    bundle_root: str | Path,
    settings: Mapping[str, Any],
    dataset: str,
    datalist: Mapping[str, Any],
    fold: int | None = None,
    seed: int | None = None,
    key_metric: str | None = None,
) -> dict[str, Any]:
    """The context of a training run (the epoch and metric value are added at each save).

    ``settings`` are the config values the network and the evaluation chain are built with
    (``network``, ``network_kwargs``, ``in_channels``, ``image_size``, ...); evaluation and inference
    default to them.
    """
    bundle_root = Path(bundle_root)
    return {
        "training_id": uuid.uuid4().hex[:12],  # with the epoch, names this model.pt in the registry
        "bundle": bundle_root.name,
        "bundle_version": _bundle_version(bundle_root),
        "settings": json.loads(json.dumps(dict(settings))),  # plain values only (weights-only loading)
        "dataset": dataset,
        "split_hash": split_hash(datalist, fold),
        "fold": fold if fold is not None and fold >= 0 else None,
        "seed": seed,
        "key_metric": key_metric,
        "git_commit": git_commit(bundle_root),
    }


def checkpoint_id(context: Mapping[str, Any] | None) -> str | None:
    """``<training id>-e<epoch>``: one ``model.pt`` of one training (the registry's ``checkpoint_id`` tag)."""
    if not context or not context.get("training_id") or context.get("epoch") is None:
        return None
    return f"{context['training_id']}-e{int(context['epoch'])}"


#: the first bytes of torch's zip format (``torch.save`` since 1.6); older tools write the legacy pickle format
_ZIP_MAGIC = b"PK\x03\x04"

#: numeric numpy arrays and scalars (no object arrays), which a weights-only load refuses unless allowed: readers put
#: them in MONAI's metadata, nnU-Net in its checkpoints' training logs
NUMERIC_NUMPY_GLOBALS = [
    np.ndarray,
    np.dtype,
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    *(dtype for dtype in vars(np.dtypes).values() if isinstance(dtype, type) and dtype is not np.dtypes.ObjectDType),
]


def load_weights_only(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False, allowed: Sequence[Any] = ()
) -> Any:
    """``torch.load(path, weights_only=True)``, for any checkpoint format torch writes; ``allowed``: further types the
    file may hold (:data:`NUMERIC_NUMPY_GLOBALS`).

    ``mmap`` (read only what is used) applies to the zip format; a legacy file (``_use_new_zipfile_serialization=False``,
    as older tools write) is read whole instead, still weights-only.

    Raises:
        UserValueError: one line naming the file: it holds objects a weights-only load refuses (reading them could
            run code, so they are never unpickled), or it is no torch checkpoint at all (truncated, another format).
    """
    path = Path(path)
    with path.open("rb") as stream:
        zip_format = stream.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zip_format)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        refused = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise UserValueError(
            f"{path} is refused: it holds more than weights and plain values ({refused}), and reading it could run "
            "code from the file; load it only if you trust its source, and save its state dict again with torch.save"
        ) from None
    except (EOFError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserValueError(f"{path} cannot be read as a torch checkpoint ({first}): copy it again or train again") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(state_dict, context)`` of ``model.pt``; the context is ``None`` for a bare state dict (warned)."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"no trained model at {path}: train the bundle first or point --ckpt_dir at its models folder")
    state = load_weights_only(path, map_location)
    if isinstance(state, dict) and WEIGHTS_KEY in state and CONTEXT_KEY in state:
        return state[WEIGHTS_KEY], state[CONTEXT_KEY]
    logger.warning(
        "%s is a bare state dict: how it was trained (dataset, split, image size) is unknown and not checked", path
    )
    return state, None


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict of a ``model.pt`` with or without context."""
    return load_checkpoint(path, map_location)[0]


_CONTEXTS: dict[tuple[str, int], dict[str, Any] | None] = {}


def read_context(path: str | Path) -> dict[str, Any] | None:
    """The context of ``path`` (read once per file version), ``None`` when absent or bare (no warning)."""
    path = Path(path)
    if not path.is_file():
        return None
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _CONTEXTS:
        # mmap: only the small context is read, not the weights (the model loader reads those once)
        state = load_weights_only(path, mmap=True)
        _CONTEXTS[key] = state.get(CONTEXT_KEY) if isinstance(state, dict) and WEIGHTS_KEY in state else None
    return _CONTEXTS[key]


def trained_setting(ckpt_dir: str | Path, key: str, default: Any) -> Any:
    """The value of ``key`` the model in ``ckpt_dir`` was trained with (``dataset`` or one of its settings),
    or ``default`` when there is no model or it has no context: what a config uses for a value the user
    did not give."""
    context = read_context(Path(ckpt_dir) / "model.pt")
    if context is None:
        return default
    if key == "dataset":
        return context.get("dataset", default)
    return context.get("settings", {}).get(key, default)


def check_context(
    context: Mapping[str, Any] | None,
    source: str | Path,
    settings: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    cross_dataset: bool = False,
) -> None:
    """Refuse a run whose settings, dataset or split contradict how the model at ``source`` was trained.

    Network settings and image size must match (a different network cannot load the weights, a different size
    is another model). Another dataset, or another split of the same dataset (its test cases may have been
    trained on), is refused unless ``cross_dataset`` is set, and then done with a warning.

    Raises:
        UserValueError: one line naming the key, the trained value and the asked value.
    """
    if context is None:
        return
    trained = context.get("settings", {})
    for key, asked in (settings or {}).items():
        if key in trained and _plain(trained[key]) != _plain(asked):
            raise UserValueError(
                f"{source} was trained with {key}={trained[key]!r} but this run asks for {key}={asked!r}: "
                f"drop --{key} to use the trained value, or train a model with it"
            )
    if dataset is None or context.get("dataset") is None:
        return
    if dataset != context["dataset"]:
        problem = f"{source} was trained on dataset {context['dataset']!r} but this run evaluates {dataset!r}"
    elif split is not None and context.get("split_hash") not in (None, split):
        problem = (
            f"{source} was trained on split {context['split_hash']} of {dataset!r} but this run evaluates split {split} "
            "(its test cases may have been trained on)"
        )
    else:
        return
    if not cross_dataset:
        raise UserValueError(f"{problem}: pass --cross_dataset true to evaluate anyway")
    logger.warning("%s (--cross_dataset true)", problem)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


class TrainedModelLoader:
    """Load ``model.pt`` into ``network`` when the engine starts, after :func:`check_context`.

    Args:
        load_path: the ``model.pt``.
        network: the network to load.
        settings: the run's values of the trained settings (``image_size``, ``network``, ...).
        dataset: the evaluated dataset (``None`` for inference on a folder).
        datalist: the evaluated datalist (its split hash is compared); with ``fold``.
        cross_dataset: evaluate another dataset's or split's cases (warned instead of refused).
        map_location: device of the loaded weights.
    """

    def __init__(
        self,
        load_path: str | Path,
        network: torch.nn.Module,
        settings: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        datalist: Mapping[str, Any] | None = None,
        fold: int | None = None,
        cross_dataset: bool = False,
        map_location: str | torch.device = "cpu",
    ) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.settings = dict(settings or {})
        self.dataset = dataset
        self.split = split_hash(datalist, fold) if datalist is not None else None
        self.cross_dataset = bool(cross_dataset)
        self.map_location = map_location
        self.context: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        state, self.context = load_checkpoint(self.load_path, self.map_location)
        check_context(self.context, self.load_path, self.settings, self.dataset, self.split, self.cross_dataset)
        network = self.network.module if hasattr(self.network, "module") else self.network
        network.load_state_dict(state)
