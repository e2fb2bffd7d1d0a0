"""Bundles made of stages: one config of a bundle uses another config of the same bundle.

Paper 002's bundle trains a detector (``detector.json``) and a segmenter (``train.json``). ``train.json`` runs the
detector's training first through the real ``python -m monai.bundle`` command (:func:`run_stage`), and the
evaluation and inference configs build the trained detector from ``detector.json`` itself (:func:`stage_content`),
so the detector is defined once. Both receive the values the stages share (data, split, folders, seed, tracking)
from the calling config; only the keys the stage config has are passed on.

A stage runs in the caller's process group and never outlives it: a caller stopped by SIGTERM or Ctrl-C stops
the stage first, and on Linux a caller killed outright takes the stage along (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
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
    returncode = _run_child(command)
    if returncode != 0:
        raise RuntimeError(f"stage {config_file} ({run_id}) failed with exit code {returncode}")


_PR_SET_PDEATHSIG = 1
# looked up in the parent: the child between fork and exec must not import (another thread may hold the import lock)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _stop_with_parent() -> None:
    """In the child, before ``exec`` (Linux): receive SIGTERM when the parent dies, even by SIGKILL."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_child(command: list[str]) -> int:
    """Run ``command`` in this process's group and return its exit code; a parent stopped by SIGTERM,
    SIGINT or any exception stops it first (and one killed outright takes it along, on Linux)."""
    child = subprocess.Popen(command, preexec_fn=_stop_with_parent if _PRCTL is not None else None)  # noqa: PLW1509

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        return child.wait()
    except BaseException:
        logger.warning("stopping the stage (process %d)", child.pid)
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
