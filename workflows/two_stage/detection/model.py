"""The trained detector as a model: rebuilt from its settings, loaded from a checkpoint, served through MLflow.

A detector checkpoint is only meaningful with the anchors and class count it was trained with. Both live in
the weights (the ``anchors`` buffer and the detection convs), and :class:`~breastseg.networks.YOLOv3` refuses a
state dict whose anchors or class count differ from its own, naming both; :func:`load_detector` is the one way
the workflows load one (``weights_only=True``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastseg.networks.yolov3 import YOLOv3
from breastseg.workflows.engine.model_context import load_weights_only
from breastseg.workflows.tracking.serving import NetworkModel

__all__ = ["detector_settings", "build_detector", "load_detector", "DetectorModel"]


def detector_settings(
    anchors: Sequence[Sequence[float]], in_channels: int = 1, num_classes: int = 1, base_channels: int = 32
) -> dict[str, Any]:
    """The values a detector is built from (what the registry stores with the weights)."""
    return {
        "anchors": [[float(v) for v in pair] for pair in anchors],
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "base_channels": int(base_channels),
    }


def build_detector(settings: dict[str, Any]) -> YOLOv3:
    """YOLOv3 from :func:`detector_settings`."""
    return YOLOv3(
        spatial_dims=2,
        in_channels=settings["in_channels"],
        num_classes=settings["num_classes"],
        anchors=settings["anchors"],
        base_channels=settings["base_channels"],
    )


def load_detector(
    checkpoint: str | Path,
    anchors: Sequence[Sequence[float]],
    in_channels: int = 1,
    num_classes: int = 1,
    base_channels: int = 32,
    map_location: str | torch.device = "cpu",
) -> YOLOv3:
    """Build the configured detector and load ``checkpoint`` into it (``eval()`` mode).

    ``checkpoint`` is a ``model.pt`` state dict or a ``checkpoint_last.pt`` (its ``network`` entry).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the checkpoint's anchors or class count differ from the configured ones (the message gives
            both), or the file holds no detector weights.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no detector checkpoint at {path}: train the detector first.")
    state = load_weights_only(path, map_location)
    if isinstance(state, dict) and "network" in state and "anchors" not in state:
        state = state["network"]
    if not isinstance(state, dict) or "anchors" not in state:
        raise ValueError(f"{path} holds no YOLOv3 weights (no 'anchors' entry).")
    network = build_detector(detector_settings(anchors, in_channels, num_classes, base_channels))
    try:
        network.load_state_dict(state)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"detector checkpoint {path} does not fit the configured detector: {err}") from err
    return network.eval()


class DetectorModel(NetworkModel):
    """The detector served through MLflow: ``predict`` returns YOLOv3's decoded predictions.

    The logged bundle carries ``models/model.pt`` and ``configs/trained_with.json`` (:func:`detector_settings`).
    Input: float32 ``(N, C, H, W)`` images in [0, 1], sides multiples of 32. Output: ``(N, A, 5 + classes)``:
    every anchor's box ``(x0, y0, x1, y1)`` in input pixels, objectness and class probabilities
    (:func:`~breastseg.networks.yolov3.decode_boxes` turns them into scored boxes).
    """

    def load_context(self, context: Any) -> None:
        bundle = Path(context.artifacts["bundle"])
        settings = json.loads((bundle / "configs" / "trained_with.json").read_text())
        self.network = load_detector(bundle / "models" / "model.pt", **settings)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.network(images).numpy()
