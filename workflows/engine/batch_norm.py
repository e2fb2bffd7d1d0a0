"""Batch-norm statistics that match whole-image evaluation for networks trained on crops.

A network trained on crops (``train_crop``) keeps batch-norm running statistics of crops: breast tissue, half of
them on a lesion. Whole images (with their square padding) have other statistics, and a deep encoder (BReMS-Net's
ResNet-50) then gives lesion pixels near-zero probabilities in ``eval()`` while the same weights find them with
batch statistics. :class:`RecalibrateBatchNorm` recomputes the running statistics on whole *training* images
before each validation (``torch.optim.swa_utils.update_bn``; weights unchanged), so validation, ``model.pt``
and everything evaluated from it use whole-image statistics. The whole images are the training dataset's own
cache of its chain's deterministic head (``SampleCacheDataset.base``), not a second copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import update_bn
from torch.utils.data import Subset

from breastseg.workflows.engine.datasets import build_loader, plain_tensors
from breastseg.workflows.engine.precision import AutocastInferer

__all__ = ["RecalibrateBatchNorm", "evenly_spaced", "recalibrate_batch_norm"]

logger = logging.getLogger("breastseg.harness")


def evenly_spaced(length: int, count: int) -> list[int]:
    """``count`` indices spread over ``range(length)``, first and last included (all of them if fewer)."""
    return np.unique(np.linspace(0, length - 1, count).round().astype(int)).tolist()


def recalibrate_batch_norm(network: torch.nn.Module, batches: Any, inferer: Any = None, image_key: str = "image") -> int:
    """Batch-norm running statistics of ``network`` averaged over the ``image_key`` of ``batches``.

    torch's ``update_bn`` does the reset, the cumulative average and the restoring of momenta and mode; this adds
    dictionary batches, no gradients and the evaluator's bfloat16 autocast. Returns the number of images seen.
    """
    device = next(network.parameters()).device
    seen = 0

    def images() -> Iterator[torch.Tensor]:
        nonlocal seen
        for batch in batches:
            seen += int(batch[image_key].shape[0])
            yield batch[image_key]

    autocast = (
        torch.autocast(inferer.device_type, dtype=inferer.dtype) if isinstance(inferer, AutocastInferer) else nullcontext()
    )
    with torch.no_grad(), autocast:
        update_bn(images(), network, device=device)
    return seen


def _collate_images(items: Sequence[dict], image_key: str = "image") -> dict[str, torch.Tensor]:
    """A batch of the items' images alone: the cached items also hold keys that do not collate (the lesion
    and background pixel indices of the crop recipes differ in length from image to image)."""
    return {image_key: torch.stack([plain_tensors(item[image_key]) for item in items])}


class RecalibrateBatchNorm:
    """Evaluator handler: before each run, batch-norm statistics from whole training images.

    Args:
        images: the whole preprocessed training images, one dictionary per item (``@train#dataset.base``: the
            training chain's cached head, before its random crop).
        batch_size: images per forward pass.
        enabled: ``False`` attaches nothing (the config switch ``bn_recalibration``).
        max_images: at most this many images, evenly spaced through ``images`` (``None``: all). Each whole
            image gives hundreds of thousands of pixels per statistic, so a few dozen suffice; every one costs
            a forward pass at each validation.
    """

    def __init__(
        self, images: Sequence[dict], batch_size: int = 8, enabled: bool = True, max_images: int | None = None
    ) -> None:
        if enabled and not len(images):
            raise ValueError("bn_recalibration needs training records; the training split is empty")
        if max_images is not None and max_images < 1:
            raise ValueError(f"bn_recalibration_images must be at least 1 (or null for all), got {max_images}")
        if enabled and max_images is not None and max_images < len(images):
            images = Subset(images, evenly_spaced(len(images), max_images))
        self.loader = build_loader(images, int(batch_size), shuffle=False, collate_fn=_collate_images) if enabled else None
        self.enabled = enabled

    def attach(self, evaluator: Engine) -> None:
        if self.enabled and not evaluator.has_event_handler(self, Events.STARTED):
            evaluator.add_event_handler(Events.STARTED, self)

    def __call__(self, evaluator: Engine) -> None:
        start = time.perf_counter()
        seen = recalibrate_batch_norm(evaluator.network, self.loader, getattr(evaluator, "inferer", None))
        logger.info("batch norm recalibrated on %d whole training images (%.1f s)", seen, time.perf_counter() - start)
