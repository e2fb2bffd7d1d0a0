"""Bundles made of stages: one config of a bundle uses another config of the same bundle.

Paper 002's bundle trains a detector (``detector.json``) and a segmenter (``train.json``). ``train.json`` runs the
detector's training first through the real ``python -m monai.bundle`` command (:func:`run_stage`), and the
evaluation and inference configs build the trained detector from ``detector.json`` itself (:func:`stage_content`),
so the detector is defined once. Both receive the values the stages share (data, split, folders, seed, tracking)
from the calling config; only the keys the stage config has are passed on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from monai.bundle import ConfigParser

__all__ = ["stage_overrides", "stage_parser", "stage_content", "run_stage"]

logger = logging.getLogger("breastseg.stages")


def _config(config_file: str | os.PathLike) -> dict[str, Any]:
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"stage config {path} does not exist")
    return ConfigParser.load_config_file(str(path))


def stage_overrides(
    config_file: str | os.PathLike, shared: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The values to set on the stage config: the ``shared`` ones it has, then ``overrides`` (``a#b`` ids).

    Raises:
        KeyError: an override names an id the stage config does not have (a typo must not pass silently).
    """
    parser = ConfigParser(_config(config_file))
    values = {key: value for key, value in shared.items() if key in parser}
    for key, value in (overrides or {}).items():
        config_id = key.replace("::", "#")
        if config_id not in parser:
            raise KeyError(f"stage override {key!r}: {config_file} has no config id {config_id!r}")
        values[config_id] = value
    return values


def stage_parser(
    config_file: str | os.PathLike, shared: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> ConfigParser:
    """A parser of the stage config with :func:`stage_overrides` applied."""
    parser = ConfigParser(_config(config_file))
    for config_id, value in stage_overrides(config_file, shared, overrides).items():
        parser[config_id] = value
    return parser


def stage_content(
    config_file: str | os.PathLike,
    config_id: str,
    shared: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The parsed ``config_id`` of a stage config (e.g. the detector network of ``detector.json``).

    Raises:
        KeyError: the stage config has no ``config_id``.
    """
    parser = stage_parser(config_file, shared, overrides)
    if config_id not in parser:
        raise KeyError(f"{config_file} has no config id {config_id!r}")
    return parser.get_parsed_content(config_id)


def _command_line_value(value: Any) -> str:
    # monai.bundle reads each value as a Python literal when it parses as one: strings stay plain
    return value if isinstance(value, str) else repr(value)


def run_stage(
    config_file: str | os.PathLike,
    run_id: str,
    shared: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    enabled: bool = True,
) -> None:
    """Run ``run_id`` of a stage config through ``python -m monai.bundle run`` (its own process, log and MLflow
    run), with :func:`stage_overrides`; ``enabled=False`` skips it (e.g. the stage is trained already).

    Raises:
        RuntimeError: the stage failed; the message names the config and the exit code.
    """
    if not enabled:
        logger.info("stage %s skipped", config_file)
        return
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(config_file)]
    for key, value in stage_overrides(config_file, shared, overrides).items():
        command += [f"--{key}", _command_line_value(value)]
    logger.info("stage: %s", " ".join(command[1:]))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"stage {config_file} ({run_id}) failed with exit code {completed.returncode}")
