"""Post-processing of the batched prediction (``decollate=False``) every bundle's validation and evaluation use."""

from __future__ import annotations

from typing import Any

from monai.transforms import Activationsd, AsDiscreted, Compose, CopyItemsd

__all__ = ["binary_postprocessing"]


def binary_postprocessing(threshold: float = 0.5, keep_probabilities: bool = False) -> Compose:
    """Logits -> probabilities -> binary mask in ``pred`` (``prob`` keeps the probabilities if asked)."""
    transforms: list[Any] = [Activationsd(keys="pred", sigmoid=True)]
    if keep_probabilities:
        transforms.append(CopyItemsd(keys="pred", names="prob"))
    transforms.append(AsDiscreted(keys="pred", threshold=threshold))
    return Compose(transforms)
