"""Grouped, seeded train/validation/test splits and K folds over datalist records.

Every assignment moves whole groups (``patient_id`` by default: a CBIS patient, an INbreast case token,
a BUSI/UDIAT image), so no group ever sits in two splits or two folds. Groups are ordered by a seeded,
stratified interleave (each stratum's groups shuffled and spread evenly along the order), then the test
and validation splits are filled from the front of that order until they hold their fraction of the
*images*; folds take the remaining groups, each to the fold with the fewest images so far.

Image-level datasets (BUSI, UDIAT) first drop exact duplicates: images whose decoded pixels are identical
(grey stored as RGB counts as grey) and whose labels agree keep only the first in natural sort order. The group
of a record is chosen by the datalist (``group_id``: near duplicates and patients joined, see
:mod:`~breastseg.workflows.data.grouping`).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

__all__ = [
    "SPLIT_NAMES",
    "natural_key",
    "pixel_digest",
    "remove_exact_duplicates",
    "group_records",
    "split_groups",
    "assign_folds",
    "official_split",
]

SPLIT_NAMES = ("training", "validation", "test")
#: stratum of a group = its most severe pathology (earlier wins)
_SEVERITY = ("malignant", "benign_without_callback", "benign", "normal")


def natural_key(text: str) -> tuple:
    """Sort key that orders ``benign (2)`` before ``benign (10)``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text)))


def pixel_digest(path: str | Path) -> str:
    """SHA-256 of an image's decoded pixels, independent of how a grey picture was stored (:func:`image_digest`)."""
    with Image.open(path) as image:
        return image_digest(image)


def image_digest(image: Image.Image) -> str:
    """SHA-256 of the pixels of an opened image, independent of how a grey picture was stored.

    RGB(A) whose colour channels are equal and whose alpha is fully opaque hashes like the one-channel
    image, so ``benign (2).png`` stored RGB and a copy stored ``L`` are the same picture.
    """
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4) and (pixels[..., -1] == np.iinfo(pixels.dtype).max).all():
        pixels = pixels[..., :-1]
    if pixels.ndim == 3 and (pixels == pixels[..., :1]).all():
        pixels = pixels[..., 0]
    digest = hashlib.sha256(f"{pixels.dtype}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def remove_exact_duplicates(
    records: Iterable[dict[str, Any]], digest: Callable[[str], str] = pixel_digest
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Drop records whose image pixels repeat an earlier record's (natural order of the image path) with a label
    that agrees (the same ``pathology``, or either has none). Copies labelled differently are kept: the
    near-duplicate grouping finds them and quarantines the label conflict, instead of keeping whichever label
    sorts first.

    Returns:
        ``(kept, duplicates)``: kept records in natural path order, and one entry per dropped record
        ``{"case_id", "path", "duplicate_of", "reason"}``.
    """
    kept: list[dict[str, Any]] = []
    duplicates: list[dict[str, str]] = []
    kept_by_digest: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: natural_key(r["image"])):
        same_pixels = kept_by_digest.setdefault(digest(record["image"]), [])
        label = record.get("pathology")
        original = next((r for r in same_pixels if None in (label, r.get("pathology")) or r.get("pathology") == label), None)
        if original is not None:
            duplicates.append({
                "case_id": str(record["case_id"]),
                "path": str(record["image"]),
                "duplicate_of": str(original["image"]),
                "reason": f"identical pixels to {original['case_id']}",
            })
        else:
            same_pixels.append(record)
            kept.append(record)
    return kept, duplicates


def group_records(records: Iterable[dict[str, Any]], group_key: str = "patient_id") -> dict[str, list[dict[str, Any]]]:
    """Records per group, groups in natural order.

    Raises:
        ValueError: a record without a value for ``group_key`` (named by its case id).
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        value = record.get(group_key)
        if value is None or str(value) == "":
            raise ValueError(f"record {record.get('case_id')!r} has no {group_key!r}; cannot split by it")
        groups[str(value)].append(record)
    return {name: groups[name] for name in sorted(groups, key=natural_key)}


def _stratum(records: list[dict[str, Any]], stratify_key: str | None) -> str:
    if stratify_key is None:
        return ""
    values = {str(r.get(stratify_key)) for r in records}
    ranked = [value for value in _SEVERITY if value in values]
    return ranked[0] if ranked else min(values)


def _interleaved_order(
    groups: dict[str, list[dict[str, Any]]], rng: np.random.Generator, stratify_key: str | None
) -> list[str]:
    """Seeded group order in which every stratum is spread evenly (systematic sampling per stratum)."""
    strata: dict[str, list[str]] = defaultdict(list)
    for name, members in groups.items():
        strata[_stratum(members, stratify_key)].append(name)
    positions: list[tuple[float, float, str]] = []
    for stratum in sorted(strata):
        names = [strata[stratum][i] for i in rng.permutation(len(strata[stratum]))]
        offset = rng.uniform()
        positions += [((rank + offset) / len(names), rng.uniform(), name) for rank, name in enumerate(names)]
    return [name for _, _, name in sorted(positions)]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def split_groups(
    records: Iterable[dict[str, Any]],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    group_key: str = "patient_id",
    stratify_key: str | None = "pathology",
) -> dict[str, list[dict[str, Any]]]:
    """Split records into ``training``/``validation``/``test`` by whole groups.

    Each of test and validation receives groups until it holds ``round(fraction * images)`` images.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more, a record without ``group_key``,
            or no group left for training.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    groups = group_records(records, group_key)
    total = sum(len(members) for members in groups.values())
    targets = {"test": round(test_fraction * total), "validation": round(val_fraction * total)}
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLIT_NAMES}
    filling = iter(("test", "validation", "training"))
    current = next(filling)
    for name in _interleaved_order(groups, np.random.default_rng([seed, 0]), stratify_key):
        while current != "training" and len(splits[current]) >= targets[current]:
            current = next(filling)
        splits[current].extend(groups[name])
    if groups and not splits["training"]:
        raise ValueError(f"{len(groups)} group(s) leave nothing for training with val/test fractions "
                         f"{val_fraction}/{test_fraction}")
    return splits


def assign_folds(
    records: Iterable[dict[str, Any]],
    folds: int,
    seed: int,
    group_key: str = "patient_id",
    stratify_key: str | None = "pathology",
) -> dict[str, int]:
    """Fold ``0..folds-1`` of every group, each group to the fold with the fewest images so far.

    Raises:
        ValueError: ``folds < 2`` or fewer groups than folds.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    groups = group_records(records, group_key)
    if len(groups) < folds:
        raise ValueError(f"cannot make {folds} folds from {len(groups)} group(s)")
    sizes = [0] * folds
    fold_of: dict[str, int] = {}
    for name in _interleaved_order(groups, np.random.default_rng([seed, 1]), stratify_key):
        fold_of[name] = int(np.argmin(sizes))
        sizes[fold_of[name]] += len(groups[name])
    return fold_of


def official_split(
    records: Iterable[dict[str, Any]],
    seed: int,
    val_fraction: float,
    group_key: str = "patient_id",
    stratify_key: str | None = "pathology",
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Keep a dataset's official train/test split and carve validation from official train by group.

    The CBIS-DDSM official split is group-disjoint only within an abnormality type. Rule chosen: the
    official test set stays whole, and every official-train record of a group that also has official-test
    records moves to test, so published test figures stay comparable and no group is in two splits.

    Returns:
        ``(splits, moved_groups)``: the three splits, and the groups whose train records were moved.

    Raises:
        ValueError: a record whose ``official_split`` is not ``train`` or ``test`` (named by case id).
    """
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for record in records:
        official = record.get("official_split")
        if official not in ("train", "test"):
            raise ValueError(f"record {record.get('case_id')!r} has official_split {official!r}; "
                             "expected 'train' or 'test'")
        (train if official == "train" else test).append(record)
    test_groups = set(group_records(test, group_key)) if test else set()
    moved = sorted({str(r[group_key]) for r in train if str(r[group_key]) in test_groups}, key=natural_key)
    test += [r for r in train if str(r[group_key]) in test_groups]
    train = [r for r in train if str(r[group_key]) not in test_groups]
    splits = split_groups(train, seed, val_fraction, 0.0, group_key, stratify_key) if train else {
        name: [] for name in SPLIT_NAMES
    }
    splits["test"] = test
    return splits, moved
