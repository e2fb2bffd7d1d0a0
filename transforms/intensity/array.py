"""Intensity transforms on channel-first images ``(C, rows, cols)``; each channel is processed alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import ScaleIntensityRange, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from .functional import CLAHE_BINS, clahe, histogram_equalize, wiener_filter

__all__ = ["HistogramEqualize", "CLAHE", "WienerFilter", "ScaleByBitDepth"]


def _per_channel(img: NdarrayOrTensor, op: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    img_t = convert_to_tensor(img, track_meta=get_track_meta())
    if img_t.ndim != 3:
        raise ValueError(f"expected a channel-first 2D image (C, rows, cols), got shape {tuple(img_t.shape)}")
    channels = np.asarray(img_t.detach().cpu().numpy(), dtype=np.float32)
    out = np.stack([op(channel) for channel in channels])
    return convert_to_dst_type(out, img_t, dtype=torch.float32)[0]


class HistogramEqualize(Transform):
    """Global histogram equalisation to ``[out_min, out_max]``.

    Same mapping as MONAI ``HistogramNormalize(num_bins, min=out_min, max=out_max)`` (tested equal), which
    spends most of its time in ``np.interp`` on a full mammogram; this one replaces it with table look-ups
    (speed-up printed by ``benchmarks/preprocess.py``). Use MONAI's when a mask is needed.

    Args:
        num_bins: histogram bins over the image's ``[min, max]``.
        out_min, out_max: output range.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_bins: int = 256, out_min: float = 0.0, out_max: float = 1.0) -> None:
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        if not out_max > out_min:
            raise ValueError(f"out_max must be > out_min, got {out_min}, {out_max}")
        self.num_bins = int(num_bins)
        self.out_min = float(out_min)
        self.out_max = float(out_max)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        return _per_channel(img, lambda c: histogram_equalize(c, self.num_bins, self.out_min, self.out_max))


class CLAHE(Transform):
    """Contrast-limited adaptive histogram equalisation (OpenCV), output in ``[0, 1]``.

    Args:
        clip_limit: scikit-image semantics, in ``(0, 1]``: the largest share of a tile's pixels one
            histogram bin may keep (skimage default 0.01; OpenCV ``clipLimit = clip_limit * num_bins``).
        tile_grid: number of tiles ``(rows, cols)``; an int means the same for both (8 = skimage default
            kernel of 1/8 of the image).
        num_bins: 256 (8-bit quantisation, default) or 65536 (16-bit, keeps more grey levels).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, clip_limit: float = 0.01, tile_grid: Sequence[int] | int = 8, num_bins: int = 256) -> None:
        if not 0.0 < float(clip_limit) <= 1.0:
            raise ValueError(f"clip_limit must be in (0, 1] (scikit-image semantics), got {clip_limit}")
        tiles = ensure_tuple_rep(tile_grid, 2)
        if any(int(t) < 1 for t in tiles):
            raise ValueError(f"tile_grid must be >= 1 tile per axis, got {tile_grid}")
        if num_bins not in CLAHE_BINS:
            raise ValueError(f"num_bins must be one of {CLAHE_BINS} (OpenCV CLAHE), got {num_bins}")
        self.clip_limit = float(clip_limit)
        self.tile_grid = tuple(int(t) for t in tiles)
        self.num_bins = num_bins

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        return _per_channel(img, lambda c: clahe(c, self.clip_limit, self.tile_grid, self.num_bins))


class WienerFilter(Transform):
    """Adaptive Wiener denoising, equal to ``scipy.signal.wiener`` (box-filter implementation).

    Args:
        window: odd neighbourhood size ``(rows, cols)`` or one int for both (3 = scipy/MATLAB default).
        noise: noise power; ``None`` estimates it as the mean local variance (scipy's rule).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, window: Sequence[int] | int = 3, noise: float | None = None) -> None:
        size = tuple(int(w) for w in ensure_tuple_rep(window, 2))
        if any(w < 1 or w % 2 == 0 for w in size):
            raise ValueError(f"window must be odd and >= 1 on both axes, got {window}")
        if noise is not None and noise < 0:
            raise ValueError(f"noise power must be >= 0, got {noise}")
        self.window = size
        self.noise = noise

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        return _per_channel(img, lambda c: wiener_filter(c, self.window, self.noise))


class ScaleByBitDepth(Transform):
    """Scale to ``[0, 1]`` by the largest value the image's file can hold, ``2 ** bit_depth - 1``.

    ``bit_depth`` comes from ``img.meta["bit_depth"]`` (set by
    :class:`~breastseg.transforms.io.LoadBreastImage`: 8 or 16 for PNG, ``BitsStored`` for DICOM). Absolute
    brightness is kept (unlike min-max scaling), and a 16-bit export of an 8-bit picture (values x 257)
    gives the same intensities as the 8-bit file, where a fixed 0-255 range would saturate it. Values
    above the range (a Modality LUT can produce them) are clipped.

    Raises:
        ValueError: the image carries no bit depth (a plain tensor, or a 32-bit/float file); the message
            names the file.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        meta = img.meta if isinstance(img, MetaTensor) else {}
        bit_depth = meta.get("bit_depth")
        if not isinstance(bit_depth, int) or not 1 <= bit_depth <= 32:
            name = meta.get("filename_or_obj") or "the image"
            raise ValueError(
                f"{name}: its file states no bit depth to scale by (got {bit_depth!r}); "
                "convert it to an 8- or 16-bit image"
            )
        scale = ScaleIntensityRange(a_min=0.0, a_max=float(2**bit_depth - 1), b_min=0.0, b_max=1.0, clip=True, dtype=torch.float32)
        return convert_to_tensor(scale(img), track_meta=get_track_meta())
