"""Synthetic BUSI in the layout of ``Dataset_BUSI_with_GT`` (Al-Dhabyani et al., 2020).

Written under ``out/Dataset_BUSI_with_GT/{benign,malignant,normal}/``: ``<class> (<n>).png`` plus
``<class> (<n>)_mask.png`` and ``_mask_1.png`` / ``_mask_2.png`` for extra lesions. The real files' traps
are planted at fixed case numbers, so tests can expect exact counts:

- images are grey content stored as RGB, except every 7th image of a class which is stored as ``L``;
- ``benign (4)`` has three lesions (``_mask``, ``_mask_1``, ``_mask_2``); every other benign ``n`` with
  ``n % 9 == 4`` and ``malignant (3)`` have two;
- ``malignant (2)_mask.png`` is RGBA (opaque alpha); benign masks with ``n % 5 == 0`` are RGB;
- normal images have one all-zero ``_mask.png``;
- the last benign image repeats the pixels of ``benign (2)`` (stored as ``L`` where the source is RGB),
  with the same masks: one exact duplicate pair;
- one benign image in three and one malignant in two carry burned-in calipers;
- near duplicates, as the real set has them (about a fifth of its images): the last 18 % of each class folder
  (before the exact duplicate) are re-exports of earlier frames of the folder, rescaled, cropped, padded,
  shifted, with contrast changed, calipers, crosses, dotted lines or text drawn, JPEG re-encoded, exported at
  16 bits, or several at once (:mod:`._us_reexport`, in turn); one source is exported three times (a group
  of three), and the first malignant copy is a benign frame (a label conflict). ``near_duplicates`` in the
  summary lists every planted pair (source, copy, transform): the ground truth of the near-duplicate search.

Class proportions follow the real 437/210/133 benign/malignant/normal split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from breastseg.workflows.data.synthetic._progress import Progress
from breastseg.workflows.data.synthetic._us_common import case_rng, frame_size, prepare_output_folder
from breastseg.workflows.data.synthetic._us_reexport import REEXPORT_KINDS, copy_plan, reexport
from breastseg.workflows.data.synthetic.ultrasound import render_ultrasound, sample_lesion_styles

__all__ = ["DEFAULT_CASES", "MIN_CASES", "FOLDER", "class_counts", "lesions_per_image", "generate"]

DEFAULT_CASES = 60
MIN_CASES = 6
FOLDER = "Dataset_BUSI_with_GT"
_CLASS_KEYS = {"benign": 0, "malignant": 1, "normal": 2}
_REAL_COUNTS = {"benign": 437, "malignant": 210, "normal": 133}
_DUPLICATE_SOURCE = 2  # benign (2) is repeated as the last benign image


def class_counts(cases: int) -> dict[str, int]:
    """Images per class for ``cases`` images in the real proportions (at least one normal and malignant)."""
    if cases < MIN_CASES:
        raise ValueError(f"BUSI layout needs at least {MIN_CASES} images to plant its traps, got {cases}")
    total = sum(_REAL_COUNTS.values())
    normal = max(1, round(cases * _REAL_COUNTS["normal"] / total))
    malignant = max(1, round(cases * _REAL_COUNTS["malignant"] / total))
    return {"benign": cases - normal - malignant, "malignant": malignant, "normal": normal}


def lesions_per_image(pathology: str, number: int) -> int:
    """Lesion (mask file) count of ``<pathology> (<number>)``; 0 for normal images."""
    if pathology == "normal":
        return 0
    if pathology == "benign" and number == 4:
        return 3
    if (pathology == "benign" and number % 9 == 4) or (pathology == "malignant" and number == 3):
        return 2
    return 1


def _mask_mode(pathology: str, number: int) -> str:
    if pathology == "malignant" and number == 2:
        return "RGBA"
    if pathology == "benign" and number % 5 == 0:
        return "RGB"
    return "L"


def _save_grey(pixels: np.ndarray, path: Path, mode: str) -> None:
    if pixels.dtype == np.uint16:
        Image.fromarray(pixels).save(path)  # 16-bit grey (I;16)
        return
    image = Image.fromarray(pixels, mode="L")
    (image.convert(mode) if mode != "L" else image).save(path)


def _mask_names(stem: str, count: int) -> list[str]:
    return [f"{stem}_mask.png"] + [f"{stem}_mask_{extra}.png" for extra in range(1, count)]


def _copy_sources(counts: dict[str, int]) -> dict[tuple[str, int], tuple[str, int]]:
    """``(class, number) -> (class, number)`` of every planted near duplicate and its source. The first malignant
    copy copies a benign frame: the same lesion labelled twice, as BUSI has it (a label conflict)."""
    plans: dict[tuple[str, int], tuple[str, int]] = {}
    for pathology, count in counts.items():
        regular = count - 1 if pathology == "benign" else count  # the last benign is the exact duplicate
        for number, source in copy_plan(regular).items():
            plans[(pathology, number)] = (pathology, source)
    first_malignant = min((key for key in plans if key[0] == "malignant"), default=None)
    taken = {number for pathology, number in plans.values() if pathology == "benign"} | {_DUPLICATE_SOURCE}
    spare = [n for n in range(1, counts["benign"]) if n not in taken and ("benign", n) not in plans]
    if first_malignant is not None and spare:
        plans[first_malignant] = ("benign", spare[0])
    return plans


def generate(out: Path, cases: int | None = None, seed: int = 0, full_size: bool = False) -> dict[str, Any]:
    """Write a synthetic BUSI into ``out/Dataset_BUSI_with_GT`` and return a summary of what was planted.

    Args:
        out: folder to create (must be empty or absent).
        cases: number of image files, duplicates included (default :data:`DEFAULT_CASES`).
        seed: fixes every pixel.
        full_size: real-like sizes around 500x450 instead of the halved default.
    """
    counts = class_counts(DEFAULT_CASES if cases is None else cases)
    root = prepare_output_folder(Path(out)) / FOLDER
    summary: dict[str, Any] = {"layout": "busi", "root": str(root), "images": sum(counts.values()), **counts}
    lesions = mask_files = rgb_masks = rgb_images = calipers = 0
    extra_masks: list[str] = []
    rgba_masks: list[str] = []
    copies = _copy_sources(counts)
    sources = set(copies.values()) | {("benign", _DUPLICATE_SOURCE)}
    frames: dict[tuple[str, int], tuple[np.ndarray, list[np.ndarray]]] = {}
    near_duplicates: list[dict[str, str]] = []
    progress = Progress(sum(counts.values()), "busi: images")
    for pathology, count in counts.items():
        folder = root / pathology
        folder.mkdir(parents=True)
        for number in progress.over(range(1, count + 1)):
            stem = f"{pathology} ({number})"
            rng = case_rng(seed, _CLASS_KEYS[pathology], number)
            image_mode = "L" if number % 7 == 0 else "RGB"
            if pathology == "benign" and number == count:
                # same pixels as benign (2), stored in the other colour mode: identical once decoded to grey
                pixels, masks = frames[("benign", _DUPLICATE_SOURCE)]
                image_mode = "L"
                summary["duplicate_pair"] = f"{stem}.png repeats benign ({_DUPLICATE_SOURCE}).png"
            elif (pathology, number) in copies:
                source = copies[(pathology, number)]
                kind = REEXPORT_KINDS[len(near_duplicates) % len(REEXPORT_KINDS)]
                copy = reexport(*frames[source], kind, rng)
                pixels, masks, image_mode = copy.image, copy.masks, "L"
                near_duplicates.append({"source": f"{source[0]}/{source[0]} ({source[1]}).png",
                                        "copy": f"{pathology}/{stem}.png", "transform": kind})
            else:
                height, width = frame_size(rng, (500, 450), (60, 50), (300, 250), (720, 620), full_size)
                styles = [] if pathology == "normal" else sample_lesion_styles(
                    rng, pathology, lesions_per_image(pathology, number)
                )
                with_calipers = number % {"benign": 3, "malignant": 2, "normal": 1}[pathology] == 1
                frame = render_ultrasound(rng, height, width, styles, calipers=with_calipers)
                calipers += bool(with_calipers and styles)
                pixels = frame.image
                masks = frame.lesion_masks or [np.zeros_like(frame.image, dtype=bool)]
            if (pathology, number) in sources:
                frames[(pathology, number)] = (pixels, masks)
            _save_grey(pixels, folder / f"{stem}.png", image_mode)
            rgb_images += image_mode == "RGB"
            mask_mode = _mask_mode(pathology, number)
            for index, (name, mask) in enumerate(zip(_mask_names(stem, len(masks)), masks)):
                _save_grey(mask.astype(np.uint8) * 255, folder / name, mask_mode)
                mask_files += 1
                lesions += pathology != "normal"
                extra_masks += [name] if index else []
                rgba_masks += [name] if mask_mode == "RGBA" else []
                rgb_masks += mask_mode == "RGB"
    summary.update(
        lesions=lesions,
        mask_files=mask_files,
        extra_lesion_masks=", ".join(extra_masks),
        rgba_masks=", ".join(rgba_masks),
        rgb_masks=rgb_masks,
        grey_images_stored_rgb=rgb_images,
        images_with_calipers=calipers,
        near_duplicates=near_duplicates,
        label_conflicts=[pair for pair in near_duplicates if pair["source"].split("/")[0] != pair["copy"].split("/")[0]],
    )
    return summary
