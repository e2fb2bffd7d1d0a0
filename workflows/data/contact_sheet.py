"""A contact sheet of near-duplicate groups: one row per group, its images side by side with their captions.

People check duplicates by looking, not by reading file names: every image is drawn at the same tile size (aspect
kept, grey levels stretched as the search sees them), captioned with what the caller gives (partition, name,
similarity). Rows past ``max_rows`` are left out and counted in the last line. An image that cannot be read is a
dark tile that says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from breastseg.workflows.data.near_duplicates.fingerprint import read_grey

__all__ = ["SheetImage", "SheetRow", "write_contact_sheet"]

_TILE = 128
_CAPTION = 30
_PAD = 8
_TITLE = 16


@dataclass(frozen=True)
class SheetImage:
    path: str
    caption: str


@dataclass(frozen=True)
class SheetRow:
    title: str
    images: Sequence[SheetImage]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tile(path: str) -> Image.Image:
    """The image fitted into a tile (aspect kept), or a dark tile saying it cannot be read."""
    try:
        pixels = read_grey(path).astype(np.float32)
    except (OSError, ValueError):
        tile = Image.new("L", (_TILE, _TILE), 40)
        ImageDraw.Draw(tile).text((6, _TILE // 2 - 6), "unreadable", fill=220, font=_font(11))
        return tile
    low, high = np.percentile(pixels, (0.5, 99.5))
    grey = np.clip((pixels - low) * (255.0 / max(high - low, 1e-6)), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey)
    image.thumbnail((_TILE, _TILE), Image.Resampling.LANCZOS)
    return image


def write_contact_sheet(rows: Sequence[SheetRow], out: str | os.PathLike, max_rows: int = 60, title: str = "") -> Path:
    """Draw ``rows`` (at most ``max_rows``) into the PNG ``out`` and return its path."""
    out = Path(out)
    shown = list(rows)[:max_rows]
    columns = max((len(row.images) for row in shown), default=1)
    row_height = _TITLE + _TILE + _CAPTION + _PAD
    width = max(_PAD + columns * (_TILE + _PAD), 360)
    height = _TITLE + _PAD + max(1, len(shown)) * row_height + _TITLE + _PAD
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(12), _font(10)
    draw.text((_PAD, 2), title or f"{len(rows)} near-duplicate group(s)", fill=(0, 0, 0), font=font)
    top = _TITLE + _PAD
    for row in shown:
        draw.text((_PAD, top), row.title, fill=(20, 20, 120), font=font)
        for column, member in enumerate(row.images):
            left = _PAD + column * (_TILE + _PAD)
            tile = _tile(member.path)
            sheet.paste(tile.convert("RGB"), (left + (_TILE - tile.width) // 2, top + _TITLE + (_TILE - tile.height) // 2))
            for line, text in enumerate(member.caption.splitlines()[:2]):
                draw.text((left, top + _TITLE + _TILE + 2 + 12 * line), text[:24], fill=(0, 0, 0), font=small)
        top += row_height
    if not shown:
        draw.text((_PAD, top), "no near-duplicate group", fill=(0, 0, 0), font=font)
    if len(rows) > len(shown):
        draw.text((_PAD, height - _TITLE - 2), f"{len(rows) - len(shown)} more group(s) not drawn: see the audit JSON",
                  fill=(120, 0, 0), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
