"""What the near-duplicate search keeps of an image: keypoints, their descriptors and a small thumbnail.

An image is brought to one working size (longest side :data:`WORKING_SIDE` pixels) with its grey levels
stretched between two percentiles, so a rescaled copy, an 8- or 16-bit export and a brightness or contrast
change give nearly the same working image. SIFT keypoints on it (scale-invariant: a crop or a rescale moves
and scales them; a contrast change leaves their descriptors unchanged) find candidate pairs and the transform
between them; the thumbnail (longest side :data:`THUMBNAIL_SIDE`) checks the pixels under that transform.
A fingerprint is a few tens of kilobytes whatever the image size: the search holds these, never the images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["WORKING_SIDE", "THUMBNAIL_SIDE", "KEYPOINTS", "Fingerprint", "fingerprint", "read_grey"]

#: longest side of the working image, pixels: fine enough to keep tissue texture, small enough to be cheap
WORKING_SIDE = 192
#: longest side of the thumbnail kept for the pixel check
THUMBNAIL_SIDE = 128
#: keypoints kept per image (the strongest)
KEYPOINTS = 150
#: grey levels between these percentiles are stretched to 0..255 (calipers and text saturate, tissue does not)
_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Fingerprint:
    """``points``: keypoint (x, y) in working-image pixels, float32 ``(n, 2)``; ``descriptors``: their SIFT
    descriptors, uint8 ``(n, 128)``; ``thumbnail``: uint8 grey; ``shape``: the image's (rows, columns)."""

    points: np.ndarray
    descriptors: np.ndarray
    thumbnail: np.ndarray
    shape: tuple[int, int]

    @property
    def working_scale(self) -> float:
        """Working-image pixels per image pixel."""
        return WORKING_SIDE / max(self.shape)

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + self.descriptors.nbytes + self.thumbnail.nbytes


def _stretch(values: np.ndarray) -> np.ndarray:
    """uint8 grey levels of float ``values`` stretched between the percentiles."""
    low, high = np.percentile(values, _PERCENTILES)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)


def _resize_longest(image: np.ndarray, side: int) -> np.ndarray:
    rows, columns = image.shape
    scale = side / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def fingerprint(pixels: np.ndarray) -> Fingerprint:
    """The fingerprint of a grey image ``(rows, columns)`` of any dtype (a colour image: average it first).

    Raises:
        ValueError: not a 2-D array.
    """
    if pixels.ndim != 2:
        raise ValueError(f"fingerprint needs a grey (rows, columns) image, got shape {pixels.shape}")
    # resized first (area averages of the original values), then stretched: the percentiles of the small image
    working = _stretch(_resize_longest(np.asarray(pixels, dtype=np.float32), WORKING_SIDE))
    keypoints, descriptors = cv2.SIFT_create(nfeatures=KEYPOINTS).detectAndCompute(working, None)
    if descriptors is None or not keypoints:
        points, descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    else:
        points = np.array([keypoint.pt for keypoint in keypoints], dtype=np.float32)
        descriptors = np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)  # SIFT values are 0..255 already
    thumbnail = _resize_longest(working, THUMBNAIL_SIDE)
    return Fingerprint(points, descriptors, thumbnail, (int(pixels.shape[0]), int(pixels.shape[1])))


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """The grey pixels of an image file as the bundles read it: DICOM, NIfTI (2-D, nnU-Net's ``.nii.gz``) or any
    format PIL reads (colour averaged to grey, alpha dropped, 16-bit kept).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        try:
            volume = np.asanyarray(nibabel.load(path).dataobj)
        except Exception as error:  # nibabel raises ImageFileError, OSError, EOFError... for broken files
            raise ValueError(f"{path}: not a readable NIfTI image ({type(error).__name__}: {error})") from error
        volume = np.squeeze(volume)
        if volume.ndim != 2:
            raise ValueError(f"{path}: a 2-D image was expected, the NIfTI holds shape {volume.shape}")
        return volume.T  # NIfTI stores (x, y): columns first, as nnU-Net's export writes it
    from breastseg.transforms.io import LoadBreastImage

    return LoadBreastImage()(path)[0].numpy()
