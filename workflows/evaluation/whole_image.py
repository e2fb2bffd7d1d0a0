"""Inference output of whole-image bundles: predictions mapped back through the chain's geometry.

Whole-image chains (papers 000 and 004) pad the mammogram to a square and resize it; their predictions
are at network resolution. :class:`WholeImageMaskWriter` undoes the chain's invertible steps on the
probabilities (``Compose.inverse`` with the image's recorded operations), so the written mask lies on
the original image, then writes it as :class:`~breastseg.workflows.evaluation.inference.MaskWriter` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Compose

from breastseg.workflows.evaluation.inference import ImagePrediction, MaskWriter

__all__ = ["WholeImageMaskWriter"]


class WholeImageMaskWriter(MaskWriter):
    """Write ``<stem>_pred.png`` and ``<stem>_pred.nii.gz`` of each image on its original grid.

    Args:
        output_dir: folder of the masks.
        chain: the preprocessing chain the images went through (its invertible steps are undone).
        writer_options: ``threshold``, ``input_dir``, ``overwrite`` of :class:`~breastseg.workflows.evaluation.inference.MaskWriter`.

    Expects an evaluator with ``decollate=False`` whose ``pred`` holds probabilities (after the sigmoid).
    """

    def __init__(self, output_dir: str | Path, chain: Compose, **writer_options: Any) -> None:
        super().__init__(output_dir, **writer_options)
        self.chain = chain

    def restore(self, batch: dict[str, Any], pred: torch.Tensor) -> list[ImagePrediction]:
        """Each image's probabilities with the chain's invertible steps undone."""
        predictions = []
        for sample, probabilities in zip(decollate_batch({"image": batch["image"]}), pred):
            image = sample["image"]
            prediction = MetaTensor(probabilities.detach().cpu().float(), meta=image.meta, applied_operations=image.applied_operations)
            restored = self.chain.inverse({"image": prediction})["image"]
            affine = torch.as_tensor(restored.affine, dtype=torch.float64).numpy()
            pasted = restored[0].numpy()
            predictions.append(ImagePrediction(Path(str(image.meta["filename_or_obj"])), pasted.shape, affine, self.threshold, pasted=pasted))
        return predictions
