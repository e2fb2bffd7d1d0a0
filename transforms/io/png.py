"""PNG (and any other format PIL reads) for ultrasound images and lesion masks (BUSI, UDIAT, converted CBIS-DDSM).

Arrays are row-major ``(rows, cols)`` like PIL. Grey content stored as RGB/RGBA is reduced to one
channel with ITU-R 601 luma (identical to any one channel when R = G = B). The bit depth of the
returned values comes from the file (8 for 8-bit grey and colour, 16 for 16-bit grey), so a 16-bit
export of an 8-bit picture can be scaled to the same intensities.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["read_png", "read_png_and_depth", "read_png_mask", "pil_bit_depth", "mask_png"]

#: per PIL mode: how the grey array is taken, and the bits per value of that array. Integer modes keep their
#: values; colour, palette and 1-bit modes become 8-bit luma (alpha dropped); ``I`` (32-bit integer) and ``F``
#: (float) state no range, so they have no bit depth
_MODES = {
    **dict.fromkeys(("I;16", "I;16B", "I;16L", "I;16N"), ("values", 16)),
    **dict.fromkeys(("I", "F"), ("values", None)),
    **dict.fromkeys(("1", "L", "P", "RGB", "CMYK", "YCbCr"), ("luma", 8)),
    **dict.fromkeys(("LA", "RGBA", "PA"), ("luma without alpha", 8)),
}


def pil_bit_depth(mode: str) -> int | None:
    """Bits per value of the grey image read from a file opened by PIL in ``mode``; ``None`` when it has none."""
    return _MODES.get(mode, (None, None))[1]


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:  # read-only
            img.load()
            return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


def _to_grey(img, path: str) -> np.ndarray:
    if img.mode not in _MODES:
        raise ValueError(f"{path}: unsupported image mode {img.mode!r}")
    conversion = _MODES[img.mode][0]
    if conversion == "luma without alpha":
        img = img.convert("RGBA").convert("RGB")
    if conversion != "values":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32)


def read_png_and_depth(path: str | os.PathLike) -> tuple[np.ndarray, int | None]:
    """Read a PNG (or any image PIL reads) as float32 ``(rows, cols)`` and the bit depth of its values
    (:func:`pil_bit_depth`); colour channels collapse to grey, alpha is ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable/corrupt file or an unsupported mode (the message names the file).
    """
    path = os.fspath(path)
    img = _open(path)
    return _to_grey(img, path), pil_bit_depth(img.mode)


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG (or any image PIL reads) as float32 ``(rows, cols)``: :func:`read_png_and_depth` without the depth."""
    return read_png_and_depth(path)[0]


def read_png_mask(path: str | os.PathLike, threshold: float = 127) -> np.ndarray:
    """Read a PNG lesion mask as bool ``(rows, cols)``: one channel, then ``value > threshold``.

    An alpha channel is dropped when it is entirely opaque or entirely transparent (how the BUSI RGBA
    masks are stored); an alpha that varies would make "lesion" ambiguous, so it is an error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, or a partly transparent mask (the message names the file).
    """
    path = os.fspath(path)
    img = _open(path)
    if img.mode in ("LA", "RGBA", "PA"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() != alpha.max() or alpha.min() not in (0, 255):
            raise ValueError(
                f"{path}: mask alpha channel is neither all opaque nor all transparent; cannot tell lesion pixels"
            )
        img = img.convert("RGBA").convert("RGB") if img.mode != "LA" else img.convert("L")
    return _to_grey(img, path) > threshold


def mask_png(mask: np.ndarray) -> bytes:
    """The 8-bit PNG of a 0/1 ``mask`` as 0/255: what inference writes as ``<stem>_pred.png`` and the served model
    returns. zlib level 1: a mask is mostly zeros, and it encodes twice as fast as at PIL's default 6."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * np.uint8(255)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
