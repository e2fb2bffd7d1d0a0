"""The splits ``breastseg audit`` reads, as one table of entries: the project's datalist, a MONAI datalist of the
user's, a CSV of image and partition, or nnU-Net's ``splits_final.json`` with its raw dataset.

Every form becomes :class:`SplitTable`: one :class:`Entry` per image and *split* (a split is one assignment of
images to partitions: the datalist's own, each cross-validation fold, each nnU-Net fold), partitions named
``training``, ``validation`` and ``test``. Bad input stops with one line naming the file (and row or case), what
is wrong and what to do.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breastseg.workflows.errors import UserFileNotFoundError, UserValueError

__all__ = ["Entry", "SplitTable", "read_split_table", "PARTITION_ALIASES"]

#: how partitions are spelled in users' files -> the project's names
PARTITION_ALIASES = {
    "training": "training", "train": "training", "tr": "training",
    "validation": "validation", "val": "validation", "valid": "validation", "dev": "validation",
    "test": "test", "testing": "test", "ts": "test", "holdout": "test",
}
_IMAGE_COLUMNS = ("image", "path", "filename", "file", "image_path")
_PARTITION_COLUMNS = ("partition", "split", "set", "subset")
_LABEL_COLUMNS = ("pathology", "label", "class", "category", "diagnosis")
_LABEL_KEYS = ("pathology", "class", "category")


@dataclass(frozen=True)
class Entry:
    """One image in one split: ``where`` names it in the input (row or case) for messages."""

    image: str
    name: str
    partition: str
    split: str
    label: str | None
    where: str


@dataclass
class SplitTable:
    source: str
    kind: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(entry.split for entry in self.entries))

    def partitions(self, split: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries:
            if entry.split == split:
                counts[entry.partition] = counts.get(entry.partition, 0) + 1
        return counts


def _resolve(image: str, base: Path) -> str:
    path = Path(image).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _partition(value: Any, where: str) -> str:
    name = PARTITION_ALIASES.get(str(value).strip().lower())
    if name is None:
        raise UserValueError(f"{where}: partition {value!r} is not one of training, validation, test "
                             f"(or {', '.join(sorted(set(PARTITION_ALIASES) - {'training', 'validation', 'test'}))})")
    return name


def _datalist_item(item: Any, where: str) -> tuple[str, str | None, str | None, Any]:
    """``(image, name, label, fold)`` of a MONAI datalist item: a path, or a dict with ``image``."""
    if isinstance(item, str):
        return item, None, None, None
    if not isinstance(item, dict) or "image" not in item:
        raise UserValueError(f"{where}: an item must be an image path or an object with an 'image' key, got {item!r:.80}")
    image = item["image"][0] if isinstance(item["image"], list) and item["image"] else item["image"]
    if not isinstance(image, str) or not image:
        raise UserValueError(f"{where}: 'image' must be a path, got {image!r:.80}")
    label = next((item[key] for key in _LABEL_KEYS if item.get(key) not in (None, "")), None)
    return image, item.get("case_id"), None if label is None else str(label), item.get("fold")


def _from_datalist(path: Path, data: dict[str, Any], base: Path) -> SplitTable:
    present = [name for name in ("training", "validation", "test") if name in data]
    if not present:
        raise UserValueError(f"{path}: a datalist needs 'training', 'validation' or 'test' lists; it has {sorted(data)[:8]}")
    project = "split" in data and "dataset" in data
    table = SplitTable(str(path), "breastseg datalist" if project else "MONAI datalist")
    folds = int((data.get("split") or {}).get("folds") or 0) if project else 0
    items: list[tuple[str, str, str | None, Any, str, str]] = []
    for name in present:
        if not isinstance(data[name], list):
            raise UserValueError(f"{path}: {name!r} must be a list")
        for position, item in enumerate(data[name]):
            where = f"{path}: {name}[{position}]"
            image, case, label, fold = _datalist_item(item, where)
            items.append((_resolve(image, base), str(case or image), label, fold, name, where))
    table.entries += [Entry(image, case, name, "split", label, where) for image, case, label, _, name, where in items]
    fold_ids = sorted({fold for *_, fold, name, _ in items if name != "test" and isinstance(fold, int)})
    if folds > 1 or len(fold_ids) > 1:
        for fold in fold_ids:
            for image, case, label, item_fold, name, where in items:
                partition = "test" if name == "test" else ("validation" if item_fold == fold else "training")
                table.entries.append(Entry(image, case, partition, f"fold {fold}", label, where))
    return table


def _from_csv(path: Path, base: Path) -> SplitTable:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {column.strip().lower(): column for column in reader.fieldnames or []}
        image_column = next((columns[c] for c in _IMAGE_COLUMNS if c in columns), None)
        partition_column = next((columns[c] for c in _PARTITION_COLUMNS if c in columns), None)
        if image_column is None or partition_column is None:
            raise UserValueError(f"{path}: a split CSV needs an image column ({' or '.join(_IMAGE_COLUMNS)}) and a "
                                 f"partition column ({' or '.join(_PARTITION_COLUMNS)}); found {list(columns) or 'none'}")
        label_column = next((columns[c] for c in _LABEL_COLUMNS if c in columns), None)
        table = SplitTable(str(path), "CSV")
        for line, row in enumerate(reader, start=2):
            where = f"{path} row {line}"
            image = (row.get(image_column) or "").strip()
            if not image:
                raise UserValueError(f"{where}: the {image_column!r} cell is empty; give the image's path")
            label = (row.get(label_column) or "").strip() if label_column else ""
            table.entries.append(Entry(_resolve(image, base), image, _partition(row.get(partition_column), where), "split",
                                       label or None, where))
    return table


def _nnunet_images(raw: Path, folder: str, ending: str) -> dict[str, str]:
    """``case -> first channel file`` of ``raw/folder`` (``<case>_0000<ending>``)."""
    found = {}
    for image in sorted((raw / folder).glob(f"*_0000{ending}")) if (raw / folder).is_dir() else []:
        found[image.name[: -len(f"_0000{ending}")]] = str(image)
    return found


def _from_nnunet(path: Path, folds: list[Any], raw: Path | None) -> SplitTable:
    if raw is None:
        raise UserValueError(f"{path} is nnU-Net's splits_final.json: give its raw dataset folder with --nnunet-raw "
                             "(the Dataset<ID>_<name> folder holding imagesTr/)")
    if not (raw / "imagesTr").is_dir():
        raise UserFileNotFoundError(f"--nnunet-raw {raw}: no imagesTr/ folder; give the Dataset<ID>_<name> folder of "
                                    "nnU-Net's raw data")
    ending = ".nii.gz"
    if (raw / "dataset.json").is_file():
        ending = json.loads((raw / "dataset.json").read_text()).get("file_ending", ending)
    training = _nnunet_images(raw, "imagesTr", ending)
    test = _nnunet_images(raw, "imagesTs", ending)
    table = SplitTable(str(path), "nnU-Net splits_final.json")
    for fold, split in enumerate(folds):
        if not isinstance(split, dict) or not {"train", "val"} <= set(split):
            raise UserValueError(f"{path}: fold {fold} must be an object with 'train' and 'val' lists")
        for key, partition in (("train", "training"), ("val", "validation")):
            for case in split[key]:
                where = f"{path}: fold {fold} {key} case {case!r}"
                if case not in training:
                    raise UserFileNotFoundError(f"{where} has no image {case}_0000{ending} in {raw / 'imagesTr'}; "
                                                "give the raw dataset these splits were made for")
                table.entries.append(Entry(training[case], str(case), partition, f"fold {fold}", None, where))
        table.entries += [Entry(image, case, "test", f"fold {fold}", None, f"{raw / 'imagesTs'} case {case!r}")
                          for case, image in test.items()]
    return table


def read_split_table(path: str | Path, images_root: str | Path | None = None, nnunet_raw: str | Path | None = None) -> SplitTable:
    """Read the split in ``path`` (see the module docstring); relative image paths are resolved against
    ``images_root``, by default the file's own folder (as MONAI's ``load_decathlon_datalist`` does).

    Raises:
        UserFileNotFoundError: no such file.
        UserValueError: a form that is none of the four, or bad content (one line naming file and row).
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"audit: {path} does not exist; give a datalist JSON, a split CSV or nnU-Net's "
                                    "splits_final.json")
    base = Path(images_root).resolve() if images_root else path.resolve().parent
    if path.suffix.lower() == ".csv":
        return _from_csv(path, base)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserValueError(f"{path} is neither valid JSON nor a .csv file: {error}") from error
    if isinstance(data, list):
        return _from_nnunet(path, data, Path(nnunet_raw) if nnunet_raw else None)
    if isinstance(data, dict):
        return _from_datalist(path, data, base)
    raise UserValueError(f"{path}: expected a datalist object or nnU-Net's list of folds, got {type(data).__name__}")
