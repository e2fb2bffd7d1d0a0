"""Build, write, read back and summarise the datalist JSON that every bundle trains from.

The JSON keeps MONAI ``load_decathlon_datalist`` keys (``training``, ``validation``, ``test``) and adds
``dataset``, ``root``, ``seed``, ``split`` (how it was made), ``quarantine``, ``duplicates``, ``ignored``
(files in the image folders that are no image, e.g. ``.DS_Store``) and ``summary``. With ``folds`` K > 1
every non-test record also carries ``fold`` 0..K-1 (whole patients per
fold); ``training``/``validation`` still hold the fold-less split, and :func:`fold_split` gives a fold's.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from breastseg.workflows.data.indexers import index_dataset
from breastseg.workflows.data.splits import SPLIT_NAMES, assign_folds, natural_key, split_groups
from breastseg.workflows.data.splits import official_split as keep_official_split

__all__ = [
    "GROUP_KEY",
    "STRATIFY_KEY",
    "OFFICIAL_SPLIT_RULE",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "fold_split",
    "format_summary",
]

GROUP_KEY = "patient_id"
STRATIFY_KEY = "pathology"
OFFICIAL_SPLIT_RULE = (
    "official test kept whole; official-train records of patients also in official test moved to test "
    "(the official split is patient-disjoint only within an abnormality type)"
)
_GROUP_MEANING = {
    "cbis-ddsm": "patient",
    "inbreast": "case token (patient level)",
    "busi": "image (no patient ids; exact duplicates removed first)",
    "udiat": "image (no patient ids; exact duplicates removed first)",
}
_REQUIRED_KEYS = ("dataset", "split", *SPLIT_NAMES)
_RECORD_KEYS = ("image", "case_id", "patient_id")


def build_datalist(
    dataset: str,
    root: str | Path,
    folds: int = 0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    official_split: bool = False,
    **index_options: Any,
) -> dict[str, Any]:
    """Index ``root`` as ``dataset`` and split it by patient.

    Args:
        dataset: ``cbis-ddsm``, ``inbreast``, ``busi`` or ``udiat``.
        root: the dataset folder as downloaded.
        folds: K > 1 adds ``fold`` to every non-test record; 0 or 1 means no folds.
        seed: fixes the split; the same seed and data give the same datalist.
        val_fraction: share of images for validation (of official train with ``official_split``).
        test_fraction: share of images for test (ignored with ``official_split``).
        official_split: keep the dataset's official train/test split (CBIS-DDSM).
        index_options: passed to the dataset's indexer.

    Raises:
        ValueError: negative ``folds``, bad fractions, or ``official_split`` for a dataset without one.
    """
    if folds < 0:
        raise ValueError(f"folds must be 0 (none) or at least 2, got {folds}")
    if official_split and dataset != "cbis-ddsm":
        raise ValueError(f"dataset {dataset!r} has no official split; only 'cbis-ddsm' does")
    result = index_dataset(dataset, root, **index_options)
    moved: list[str] = []
    if official_split:
        splits, moved = keep_official_split(result.records, seed, val_fraction, GROUP_KEY, STRATIFY_KEY)
    else:
        splits = split_groups(result.records, seed, val_fraction, test_fraction, GROUP_KEY, STRATIFY_KEY)
    splits = {name: sorted(records, key=lambda r: natural_key(r["case_id"])) for name, records in splits.items()}
    if folds > 1:
        fold_of = assign_folds(splits["training"] + splits["validation"], folds, seed, GROUP_KEY, STRATIFY_KEY)
        for name in ("training", "validation"):
            splits[name] = [{**record, "fold": fold_of[str(record[GROUP_KEY])]} for record in splits[name]]
    datalist: dict[str, Any] = {
        "dataset": dataset,
        "root": str(Path(root).absolute()),
        "seed": seed,
        "split": {
            "method": "official" if official_split else "grouped-random",
            "group_key": GROUP_KEY,
            "group_meaning": _GROUP_MEANING.get(dataset, GROUP_KEY),
            "stratify_key": STRATIFY_KEY,
            "val_fraction": val_fraction,
            "test_fraction": None if official_split else test_fraction,
            "folds": folds if folds > 1 else 0,
        },
        **splits,
        "quarantine": list(result.quarantine),
        "duplicates": list(result.duplicates),
        "ignored": list(result.ignored),
    }
    if official_split:
        datalist["split"]["official_rule"] = OFFICIAL_SPLIT_RULE
        datalist["split"]["patients_moved_to_test"] = moved
    datalist["summary"] = _summarise(datalist)
    return datalist


def _count(records: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "images": len(records),
        "lesions": sum(int(r.get("lesion_count") or 0) for r in records),
        "patients": len({str(r[GROUP_KEY]) for r in records}),
    }


def _summarise(datalist: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {name: _count(datalist[name]) for name in SPLIT_NAMES}
    summary["total"] = _count([r for name in SPLIT_NAMES for r in datalist[name]])
    folds = datalist["split"]["folds"]
    if folds:
        non_test = datalist["training"] + datalist["validation"]
        summary["folds"] = [_count([r for r in non_test if r["fold"] == fold]) for fold in range(folds)]
    summary["pathology"] = dict(sorted(Counter(str(r.get("pathology")) for name in SPLIT_NAMES
                                               for r in datalist[name]).items()))
    summary["duplicates"] = len(datalist["duplicates"])
    summary["quarantined"] = len(datalist["quarantine"])
    summary["ignored"] = len(datalist.get("ignored", []))
    return summary


def write_datalist(datalist: dict[str, Any], out: str | Path) -> Path:
    """Write ``datalist`` as 4-space-indented JSON (atomically: a partial file never replaces a good one)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(datalist, indent=4) + "\n", encoding="utf-8")
    os.replace(partial, out)
    return out


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Read a datalist JSON and check it before training on it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable JSON, a missing key, a record without ``image``/``case_id``/``patient_id``,
            a case id listed twice, an image, case or patient in two splits, or a bad ``fold``
            (each message names the file and the case or patient).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {str(path)!r} does not exist")
    try:
        datalist = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"datalist {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(datalist, dict):
        raise ValueError(f"datalist {str(path)!r} must hold a JSON object, got {type(datalist).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in datalist]
    if missing:
        raise ValueError(f"datalist {str(path)!r} lacks key(s) {missing}")
    owner: dict[tuple[str, str], str] = {}
    for split in SPLIT_NAMES:
        if not isinstance(datalist[split], list):
            raise ValueError(f"datalist {str(path)!r}: {split!r} must be a list")
        for position, record in enumerate(datalist[split]):
            _check_record(path, split, position, record, owner)
    _check_folds(path, datalist)
    return datalist


def _check_record(path: Path, split: str, position: int, record: Any, owner: dict[tuple[str, str], Any]) -> None:
    """Check one record's keys; ``owner`` remembers the split (and position) of every image/case/patient."""
    if not isinstance(record, dict):
        raise ValueError(f"datalist {str(path)!r}: {split}[{position}] is not an object")
    absent = [key for key in _RECORD_KEYS if record.get(key) in (None, "")]
    if absent:
        raise ValueError(f"datalist {str(path)!r}: {split}[{position}] (case {record.get('case_id')!r}) "
                         f"has no {absent}")
    for kind, value in (("image", record["image"]), ("case", record["case_id"]), ("patient", record["patient_id"])):
        seen = owner.setdefault((kind, str(value)), split)
        if seen != split:
            raise ValueError(f"datalist {str(path)!r}: {kind} {str(value)!r} (case {record['case_id']!r}) "
                             f"is in both {seen!r} and {split!r}")
        if kind != "patient" and position != owner.setdefault((kind + "@", str(value)), position):
            raise ValueError(f"datalist {str(path)!r}: {kind} {str(value)!r} is listed twice in {split!r}")


def _check_folds(path: Path, datalist: dict[str, Any]) -> None:
    folds = int((datalist.get("split") or {}).get("folds") or 0)
    if folds < 2:
        return
    fold_of_patient: dict[str, int] = {}
    for record in datalist["training"] + datalist["validation"]:
        fold = record.get("fold")
        if not isinstance(fold, int) or not 0 <= fold < folds:
            raise ValueError(f"datalist {str(path)!r}: case {record['case_id']!r} has fold {fold!r}; "
                             f"expected an integer in 0..{folds - 1}")
        first = fold_of_patient.setdefault(str(record["patient_id"]), fold)
        if first != fold:
            raise ValueError(f"datalist {str(path)!r}: patient {str(record['patient_id'])!r} is in folds "
                             f"{first} and {fold} (case {record['case_id']!r})")


def fold_split(datalist: dict[str, Any], fold: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, val)`` records of cross-validation fold ``fold``: val is that fold, train the others.

    Raises:
        ValueError: the datalist has no folds, or ``fold`` is outside ``0..K-1``.
    """
    folds = int((datalist.get("split") or {}).get("folds") or 0)
    if folds < 2:
        raise ValueError("datalist has no folds; build it with folds=K (K > 1)")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    non_test = datalist["training"] + datalist["validation"]
    return [r for r in non_test if r["fold"] != fold], [r for r in non_test if r["fold"] == fold]


def format_summary(datalist: dict[str, Any]) -> str:
    """Human-readable summary: counts per split (and fold), duplicates, quarantined and ignored files with reasons."""
    split = datalist["split"]
    summary = datalist.get("summary") or _summarise(datalist)
    lines = [
        f"{datalist['dataset']} datalist from {datalist.get('root')} (seed {datalist.get('seed')})",
        f"split: {split['method']} by {split['group_key']} = {split.get('group_meaning', split['group_key'])}; "
        f"val {split['val_fraction']}, test {split['test_fraction']}, folds {split['folds'] or 'none'}",
    ]
    for name in (*SPLIT_NAMES, "total"):
        counts = summary[name]
        lines.append(f"  {name:<10} {counts['images']:>6} images {counts['lesions']:>6} lesions "
                     f"{counts['patients']:>6} patients")
    for fold, counts in enumerate(summary.get("folds", [])):
        lines.append(f"  fold {fold:<5} {counts['images']:>6} images {counts['lesions']:>6} lesions "
                     f"{counts['patients']:>6} patients")
    if split.get("official_rule"):
        moved = split.get("patients_moved_to_test", [])
        lines.append(f"official split: {split['official_rule']}")
        lines.append(f"  {len(moved)} patient(s) in both official train and test: {', '.join(moved) or '-'}")
    lines.append(f"duplicates removed: {len(datalist['duplicates'])}")
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in datalist["duplicates"]]
    lines.append(f"quarantined: {len(datalist['quarantine'])}")
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in datalist["quarantine"]]
    ignored = datalist.get("ignored", [])  # absent from datalists written before it existed
    lines.append(f"ignored (not images): {len(ignored)}")
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in ignored]
    return "\n".join(lines)
