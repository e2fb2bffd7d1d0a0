"""The five papers' preprocessing chains, one function per bundle, each returning a MONAI ``Compose``.

Every chain starts from a datalist sample (``image`` path, ``label`` spec, ``label_format``) and ends
with float32 ``MetaTensor``s ``image`` (C, H, W) and ``label`` (1, H, W) in {0, 1}. Deterministic
transforms come first and random ones last, so ``CacheDataset`` caches everything before the first
random transform. ``with_label=False`` (inference) builds the same chain for the image alone.
Geometry changes are invertible: ``chain.inverse(sample)`` or MONAI ``Invertd`` maps predictions back
onto the original image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    DeleteItemsd,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    Resized,
    ScaleIntensityd,
    Transform,
)

from .intensity import CLAHEd, HistogramEqualized, ScaleByBitDepthd, WienerFilterd
from .io import LoadBreastImaged, LoadLesionMaskd
from .spatial import BorderCropd, BreastCentredSquarePadd, CanonicalSided, LesionRoiCropd, RemoveArtefactsd

__all__ = ["brems_net", "unetplusplus_mammo", "two_stage_msf", "hybrid_attention_us", "connected_unets"]

CONNECTED_UNETS_DATASETS = ("cbis-ddsm", "inbreast")


def _keys(keys: Sequence[str], with_label: bool) -> tuple[tuple[str, ...], str, str | None]:
    keys = tuple(keys)
    if not keys or (with_label and len(keys) < 2):
        raise ValueError(f"keys must be (image_key, label_key) with a label, (image_key,) without; got {keys}")
    used = keys[:2] if with_label else keys[:1]
    return used, used[0], used[1] if with_label else None


def _load(image_key: str, label_key: str | None, reader: str, format_key: str = "label_format") -> list[Transform]:
    steps: list[Transform] = [LoadBreastImaged(image_key, reader=reader)]
    if label_key is not None:
        steps.append(LoadLesionMaskd(label_key, image_key=image_key, format_key=format_key))
    return steps


def _resize(keys: tuple[str, ...], size: int | Sequence[int], image_mode: str) -> Resized:
    spatial = (size, size) if isinstance(size, int) else tuple(size)
    modes = (image_mode,) + ("nearest",) * (len(keys) - 1)
    return Resized(keys, spatial_size=spatial, mode=modes)


def _lesion_balanced_crop(
    keys: tuple[str, ...],
    image_key: str,
    label_key: str | None,
    size: int | None,
    positive_fraction: float = 0.5,
    negative_threshold: float = 0.0,
) -> list[Transform]:
    """One random ``size`` x ``size`` training crop, centred on a lesion pixel with odds ``positive_fraction``,
    on a background pixel otherwise; none when ``size`` is ``None`` or the chain has no label.

    Background centres are drawn where the image is above ``negative_threshold``: above zero (the default), a
    negative crop shows breast or film, not the square padding (zero in every whole-mammogram chain) that
    fills about 40 % of the input; higher, it shows the bright tissue that a network confuses with masses.

    The lesion and background pixel indices are found once per image (``FgBgToIndicesd``, cached with the
    deterministic head as int32: 1 MB a 512x512 image), not per sample: the crop then only draws a centre.
    They are dropped after the crop.
    """
    if size is None or label_key is None:
        return []
    if not 0.0 < positive_fraction < 1.0:
        raise ValueError(f"crop_positive_fraction must be strictly between 0 and 1, got {positive_fraction}")
    if not 0.0 <= negative_threshold < 1.0:
        raise ValueError(f"crop_negative_threshold must be in [0, 1) (image intensities), got {negative_threshold}")
    fg_key, bg_key = f"{label_key}_fg_indices", f"{label_key}_bg_indices"
    return [
        FgBgToIndicesd(label_key, image_key=image_key, image_threshold=negative_threshold),
        CastToTyped((fg_key, bg_key), dtype=torch.int32),  # half the cache of int64 (2 MB a 512x512 image)
        RandCropByPosNegLabeld(
            keys,
            label_key=label_key,
            spatial_size=(size, size),
            pos=positive_fraction,
            neg=1.0 - positive_fraction,
            num_samples=1,
            fg_indices_key=fg_key,
            bg_indices_key=bg_key,
            image_key=image_key,
            image_threshold=negative_threshold,
        ),
        DeleteItemsd((fg_key, bg_key)),
    ]


def _rotations_and_flips(keys: tuple[str, ...]) -> list[Transform]:
    """``RandRotate90d`` (k in 1..3, p=0.5) and ``RandFlipd`` on each axis (p=0.5), image and label together."""
    return [
        RandRotate90d(keys, prob=0.5, max_k=3),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
    ]


def _whole_image_training(
    keys: tuple[str, ...],
    image_key: str,
    label_key: str | None,
    train_crop: int | None,
    augment: bool,
    crop_positive_fraction: float = 0.5,
    crop_negative_threshold: float = 0.0,
) -> list[Transform]:
    """The random tail of a whole-mammogram chain: the optional crop first (augmenting fewer pixels)."""
    crop = _lesion_balanced_crop(
        keys, image_key, label_key, train_crop, crop_positive_fraction, crop_negative_threshold
    )
    return crop + (_rotations_and_flips(keys) if augment else [])


def brems_net(
    image_size: int = 512,
    train: bool = False,
    train_crop: int | None = None,
    augment: bool = False,
    crop_positive_fraction: float = 0.5,
    crop_negative_threshold: float = 0.0,
    keys: Sequence[str] = ("image", "label"),
    with_label: bool = True,
    canonical_side: str | None = None,
    reader: str = "pydicom",
) -> Compose:
    """BReMS-Net (000): histogram equalisation, breast-centred zero padding to square, resize.

    Defaults where the paper is silent:
        * ``image_size=512``: the paper gives no input size; 512 keeps masses of ~1 cm at ~6 px.
        * The padding is applied before equalisation, so padded pixels share the lowest grey level with
          the background; 256 histogram bins; area interpolation for the image, nearest for the mask.
        * ``train=True`` alone adds no random transform: the paper reports no augmentation.
        * ``train_crop`` (off): with ``train=True``, train on random crops of that size, a share
          ``crop_positive_fraction`` (half) of them centred on a lesion pixel, the rest on breast or film (a
          CPU-budget option: cheaper steps, and masses are not 0.1-1 % of every input).
        * ``crop_negative_threshold`` (0: anywhere but the padding): the other crops are centred on pixels brighter
          than this after equalisation (e.g. 0.8: the brightest fifth, dense tissue that looks like a mass).
        * ``augment`` (off, as the paper): with ``train=True``, random 90-degree rotations and flips after the
          crop (for small training sets; the synthetic default has 47 training mammograms).
        * ``canonical_side`` (``"left"``/``"right"``) optionally flips every breast to one side; off.
    """
    used, image_key, label_key = _keys(keys, with_label)
    steps = _load(image_key, label_key, reader)
    if canonical_side is not None:
        steps.append(CanonicalSided(used, reference_key=image_key, side=canonical_side))
    steps += [
        BreastCentredSquarePadd(used, reference_key=image_key),
        HistogramEqualized(image_key, num_bins=256),
        _resize(used, image_size, "area"),
    ]
    if train:
        steps += _whole_image_training(
            used, image_key, label_key, train_crop, augment, crop_positive_fraction, crop_negative_threshold
        )
    return Compose(steps)


def unetplusplus_mammo(
    image_size: int = 224,
    train: bool = False,
    wiener_window: int = 3,
    clahe_clip: float = 0.01,
    clahe_tiles: int | Sequence[int] = 8,
    roi_margin: float = 0.25,
    keys: Sequence[str] = ("image", "label"),
    with_label: bool = True,
    reader: str = "pydicom",
) -> Compose:
    """UNet++ for mammography (001): Wiener, CLAHE, one ROI per lesion, 224x224, min-max; rot90 + flips.

    Returns a list of samples per image (one per lesion, each with ``lesion_index`` and ``roi_box``).
    Inference without a label needs the lesions' bounds in the sample under ``"roi_boxes"`` (the paper
    assumes lesion positions are known before segmentation), cropped with the same margin as training.

    Defaults where the paper is silent:
        * ``wiener_window=3``: the scipy/MATLAB ``wiener2`` default; noise = mean local variance.
        * ``clahe_clip=0.01`` (scikit-image semantics = OpenCV clipLimit 2.56) and ``clahe_tiles=8``
          (8x8 tiles = skimage's default kernel of 1/8 image), 256 bins.
        * ``roi_margin=0.25``: square crop, lesion's longer side plus 25 % on each side, at least 32 px.
        * Training augmentation: ``RandRotate90d`` (k in 1..3, p=0.5) and ``RandFlipd`` on each axis
          (p=0.5), on image and label together, training only.
        * Patch resize is bilinear (crops may be smaller than 224), nearest for the mask.
    """
    used, image_key, label_key = _keys(keys, with_label)
    steps = _load(image_key, label_key, reader)
    steps += [
        WienerFilterd(image_key, window=wiener_window),
        CLAHEd(image_key, clip_limit=clahe_clip, tile_grid=clahe_tiles),
        LesionRoiCropd(used, label_key=label_key or "label", margin=roi_margin, expand_boxes=True),
        _resize(used, image_size, "bilinear"),
        ScaleIntensityd(image_key, minv=0.0, maxv=1.0),
    ]
    if train:
        steps += _rotations_and_flips(used)
    return Compose(steps)


def two_stage_msf(
    patch_size: int = 256,
    train: bool = False,
    roi_margin: float = 0.25,
    keys: Sequence[str] = ("image", "label"),
    with_label: bool = True,
    reader: str = "pydicom",
) -> Compose:
    """Two-stage MSF (002), segmentation stage: a patch per mass, resized to 256x256, then histogram
    equalisation. The detector stage takes the full image at five sizes: see
    :func:`breastseg.transforms.spatial.detector_views` (160x320 ... 480x960, width x height).

    Defaults where the paper is silent:
        * ``roi_margin=0.25`` (square patch around the mass, as for 001); inference uses the detector's
          boxes under ``"roi_boxes"``.
        * ``train=True`` alone adds no random transform: the paper reports none for this stage.
    """
    used, image_key, label_key = _keys(keys, with_label)
    steps = _load(image_key, label_key, reader)
    steps += [
        LesionRoiCropd(used, label_key=label_key or "label", margin=roi_margin),
        _resize(used, patch_size, "bilinear"),
        HistogramEqualized(image_key, num_bins=256),
    ]
    return Compose(steps)


def hybrid_attention_us(
    image_size: int = 256,
    train: bool = False,
    keys: Sequence[str] = ("image", "label"),
    with_label: bool = True,
) -> Compose:
    """Hybrid attention network for ultrasound (003): resize to 256x256, no augmentation.

    Defaults where the paper is silent: intensities scaled by the file's bit depth, ``value / (2 ** bits - 1)``
    (``value / 255`` for 8-bit files, ``/ 65535`` for 16-bit ones; absolute brightness is meaningful in B-mode;
    clipped to [0, 1]); area interpolation for the image.
    ``train=True`` adds nothing (the paper trains without augmentation).
    """
    used, image_key, label_key = _keys(keys, with_label)
    steps = _load(image_key, label_key, "pydicom")
    steps += [
        _resize(used, image_size, "area"),
        ScaleByBitDepthd(image_key),
    ]
    return Compose(steps)


def connected_unets(
    image_size: int = 224,
    dataset: str = "cbis-ddsm",
    train: bool = False,
    train_crop: int | None = None,
    augment: bool = False,
    crop_positive_fraction: float = 0.5,
    border_fraction: float = 0.01,
    clahe_clip: float = 0.01,
    clahe_tiles: int | Sequence[int] = 8,
    keys: Sequence[str] = ("image", "label"),
    with_label: bool = True,
    canonical_side: str | None = None,
    reader: str = "pydicom",
) -> Compose:
    """ConnectedUNets++ (004) on whole mammograms.

    CBIS-DDSM: border crop, min-max to [0, 1], artefact removal, CLAHE, square padding, 224x224.
    INbreast: the paper applies CLAHE only (plus [0, 1] scaling, square padding and 224x224, which the
    network input needs).

    Defaults where the paper is silent:
        * ``border_fraction=0.01`` cut from each side (film edges); the mask is cut identically.
        * Artefact removal keeps the largest bright component (see ``breastseg.transforms.spatial.breast``);
          an image with no breast raises a ``ValueError`` naming the file.
        * CLAHE ``clahe_clip=0.01`` (skimage semantics), ``clahe_tiles=8``, 256 bins.
        * Square padding is breast-centred like BReMS-Net's; area interpolation for the image.
        * ``train=True`` alone adds no random transform: the paper reports none.
        * ``train_crop`` (off), ``crop_positive_fraction`` and ``augment`` (off): as :func:`brems_net`'s.
    """
    if dataset not in CONNECTED_UNETS_DATASETS:
        raise ValueError(f"dataset must be one of {CONNECTED_UNETS_DATASETS}, got {dataset!r}")
    used, image_key, label_key = _keys(keys, with_label)
    steps = _load(image_key, label_key, reader)
    if dataset == "cbis-ddsm":
        steps.append(BorderCropd(used, fraction=border_fraction))
    steps.append(ScaleIntensityd(image_key, minv=0.0, maxv=1.0))
    if dataset == "cbis-ddsm":
        steps.append(RemoveArtefactsd(image_key, reference_key=image_key))
    if canonical_side is not None:
        steps.append(CanonicalSided(used, reference_key=image_key, side=canonical_side))
    steps += [
        CLAHEd(image_key, clip_limit=clahe_clip, tile_grid=clahe_tiles),
        BreastCentredSquarePadd(used, reference_key=image_key),
        _resize(used, image_size, "area"),
    ]
    if train:
        steps += _whole_image_training(used, image_key, label_key, train_crop, augment, crop_positive_fraction)
    return Compose(steps)
