"""Argument and input checks shared by the breastseg networks (TorchScript-compatible)."""

from __future__ import annotations

__all__ = ["check_spatial_dims", "check_divisible"]


def check_spatial_dims(network: str, spatial_dims: int) -> None:
    """Raise ``ValueError`` unless ``spatial_dims`` is 2 or 3."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"{network}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")


def check_divisible(network: str, spatial_shape: list[int], divisor: int) -> None:
    """Raise ``ValueError`` naming the shape when a spatial side is not a multiple of ``divisor``."""
    for size in spatial_shape:
        if size % divisor != 0:
            raise ValueError(f"{network}: input spatial shape {spatial_shape} must be divisible by {divisor}.")
