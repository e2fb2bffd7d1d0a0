"""AW-loss of paper 000 (BReMS-Net, Eqs. 12-15): focal losses of the supervised outputs, adaptively weighted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import FocalLoss
from torch.nn.modules.loss import _Loss

__all__ = ["AWLoss", "AdaptiveWeightLoss"]


class AWLoss(_Loss):
    """Adaptive Weight Optimization loss: ``sum_q w_q FL_q`` with ``w_q = FL_q / sum_k FL_k`` (Eqs. 14-15).

    ``FL_q`` is the binary focal loss (Eqs. 12-13, ``gamma = 2``, no class weight alpha) of output ``q``,
    averaged over pixels, computed by MONAI :py:class:`~monai.losses.FocalLoss` on logits. The weights are
    **detached**: they rescale each head's gradient but receive none themselves (the paper is silent; without
    detaching, the loss would be ``sum FL^2 / sum FL`` and the weights would be trained to shift loss between
    heads). A head with a larger loss therefore gets a larger share of the update.

    Outputs smaller than the target are compared with the target resized by nearest-neighbour interpolation.
    One tensor instead of a list is a single head (weight 1).

    After each call, :py:attr:`terms` holds the weights and focal losses of that call as detached scalar tensors,
    ``{"aw_weight_<head>": w, "aw_focal_<head>": FL}``, for logging (see
    :py:class:`breastseg.workflows.engine.loss_terms.LossTermsAverage`).

    Args:
        gamma: focusing parameter of the focal loss (2 in the paper).
        head_names: names of the outputs in the order the network returns them (for :py:attr:`terms`);
            ``None`` numbers them ``0, 1, ...``.

    Raises:
        ValueError: when ``gamma`` is negative or ``head_names`` repeats a name.
    """

    def __init__(self, gamma: float = 2.0, head_names: Sequence[str] | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        if head_names is not None and len(set(head_names)) != len(head_names):
            raise ValueError(f"head_names must be distinct, got {list(head_names)}.")
        self.gamma = float(gamma)
        self.head_names = None if head_names is None else [str(name) for name in head_names]
        self.focal = FocalLoss(include_background=True, gamma=self.gamma, alpha=None, use_softmax=False, reduction="mean")
        self.terms: dict[str, torch.Tensor] = {}

    def head_losses(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``(N,)`` focal loss of every output against ``target``."""
        losses = []
        for output in outputs:
            matched = target if output.shape[2:] == target.shape[2:] else F.interpolate(target, output.shape[2:], mode="nearest")
            losses.append(self.focal(output, matched))
        return torch.stack(losses)

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """AW-loss of logits ``(B, C, *spatial)`` or a list of them against a binary ``target``.

        Raises:
            ValueError: for an empty list, or when ``head_names`` was given for another number of outputs.
        """
        outputs = [input] if isinstance(input, torch.Tensor) else list(input)
        if not outputs:
            raise ValueError("AWLoss received an empty list of outputs.")
        if self.head_names is not None and len(self.head_names) != len(outputs):
            raise ValueError(f"AWLoss has {len(self.head_names)} head names {self.head_names} but received {len(outputs)} outputs.")
        losses = self.head_losses(outputs, target.float())
        detached = losses.detach()
        weights = detached / detached.sum().clamp_min(torch.finfo(detached.dtype).tiny)
        names = self.head_names or [str(index) for index in range(len(outputs))]
        # detached tensors, not floats: reading them each step would make the GPU wait for the host
        self.terms = {f"aw_weight_{n}": w for n, w in zip(names, weights)}
        self.terms.update({f"aw_focal_{n}": v for n, v in zip(names, detached)})
        return (weights * losses).sum()


AdaptiveWeightLoss = AWLoss
