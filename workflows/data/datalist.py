"""Build, write, read back and summarise the datalist JSON that every bundle trains from.

The JSON keeps MONAI ``load_decathlon_datalist`` keys (``training``, ``validation``, ``test``) and adds
``dataset``, ``root``, ``seed``, ``split`` (how it was made), ``quarantine``, ``duplicates``, ``ignored``
(files in the image folders that are no image, e.g. ``.DS_Store``), ``near_duplicates`` (every group of images
found to be one acquisition: members, the partition each sits in, every verified pair with its similarity and
transform, label conflicts), ``audit`` (the split's leak counts) and ``summary``. Splits and folds move whole
groups (``group_id``: a patient and its images' near duplicates, see :mod:`.grouping`). With ``folds`` K > 1
every non-test record also carries ``fold`` 0..K-1 (whole groups per fold); ``training``/``validation`` still hold
the fold-less split, and :func:`fold_split` gives a fold's.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from breastseg.workflows.data.grouping import group_by_acquisition
from breastseg.workflows.data.indexers import index_dataset
from breastseg.workflows.data.leaks import count_leaks, format_leaks, leaked_images
from breastseg.workflows.data.near_duplicates import METHOD_VERSION, FingerprintStore
from breastseg.workflows.data.records import name_table_rows
from breastseg.workflows.data.splits import SPLIT_NAMES, assign_folds, natural_key, split_groups
from breastseg.workflows.data.splits import official_split as keep_official_split

__all__ = [
    "GROUP_KEY",
    "fingerprint_cache",
    "split_audit",
    "STRATIFY_KEY",
    "OFFICIAL_SPLIT_RULE",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "fold_split",
    "format_summary",
]

GROUP_KEY = "group_id"
STRATIFY_KEY = "pathology"
OFFICIAL_SPLIT_RULE = (
    "official test kept whole; official-train records of patients also in official test moved to test "
    "(the official split is patient-disjoint only within an abnormality type)"
)
_GROUP_MEANING = {
    "cbis-ddsm": "patient, joined with the patients of its images' near duplicates",
    "inbreast": "case token (patient level), joined with the cases of its images' near duplicates",
    "busi": "an image and its near duplicates (no patient ids; exact duplicates removed first)",
    "udiat": "an image and its near duplicates (no patient ids; exact duplicates removed first)",
}
_UNIT_MEANING = {
    "cbis-ddsm": "patient (near duplicates found and listed, not grouped)",
    "inbreast": "case token (near duplicates found and listed, not grouped)",
    "busi": "image (near duplicates found and listed, not grouped)",
    "udiat": "image (near duplicates found and listed, not grouped)",
}
_REQUIRED_KEYS = ("dataset", "split", *SPLIT_NAMES)
_RECORD_KEYS = ("image", "case_id", "patient_id")


def fingerprint_cache(datalist_file: str | Path) -> Path:
    """Where the near-duplicate fingerprints of a datalist are kept: ``<datalist>.fingerprints.npz`` beside it."""
    datalist_file = Path(datalist_file)
    return datalist_file.with_name(datalist_file.stem + ".fingerprints.npz")


def build_datalist(
    dataset: str,
    root: str | Path,
    folds: int = 0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    official_split: bool = False,
    near_duplicates: str = "group",
    label_conflicts: str = "quarantine",
    cache_file: str | Path | None = None,
    **index_options: Any,
) -> dict[str, Any]:
    """Index ``root`` as ``dataset``, find its near duplicates and split it by group (patient and near duplicates).

    Args:
        dataset: ``cbis-ddsm``, ``inbreast``, ``busi`` or ``udiat``.
        root: the dataset folder as downloaded.
        folds: K > 1 adds ``fold`` to every non-test record; 0 or 1 means no folds.
        seed: fixes the split; the same seed and data give the same datalist.
        val_fraction: share of images for validation (of official train with ``official_split``).
        test_fraction: share of images for test (ignored with ``official_split``).
        official_split: keep the dataset's official train/test split (CBIS-DDSM).
        near_duplicates: ``group`` (near duplicates share a partition) or ``list`` (found and listed, but split by
            the dataset's own unit, as published splits were: the audit then counts their leaks).
        label_conflicts: ``quarantine`` near duplicates labelled differently, or ``keep`` them.
        cache_file: where fingerprints and verified pairs are kept between indexings (none by default).
        index_options: passed to the dataset's indexer.

    Raises:
        ValueError: negative ``folds``, bad fractions, or ``official_split`` for a dataset without one.
    """
    if folds < 0:
        raise ValueError(f"folds must be 0 (none) or at least 2, got {folds}")
    if official_split and dataset != "cbis-ddsm":
        raise ValueError(f"dataset {dataset!r} has no official split; only 'cbis-ddsm' does")
    store = FingerprintStore(cache_file)
    result = index_dataset(dataset, root, fingerprints=store, **index_options)
    grouping = group_by_acquisition(result.records, store, near_duplicates, label_conflicts)
    store.save()
    name_table_rows(grouping.quarantine, {str(r["case_id"]): r.get("table_rows") or [] for r in result.records})
    moved: list[str] = []
    if official_split:
        splits, moved = keep_official_split(grouping.records, seed, val_fraction, GROUP_KEY, STRATIFY_KEY)
    else:
        splits = split_groups(grouping.records, seed, val_fraction, test_fraction, GROUP_KEY, STRATIFY_KEY)
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
            "group_meaning": (_GROUP_MEANING if near_duplicates == "group" else _UNIT_MEANING).get(dataset, GROUP_KEY),
            "near_duplicates": near_duplicates,
            "near_duplicate_method": METHOD_VERSION,
            "label_conflicts": label_conflicts,
            "stratify_key": STRATIFY_KEY,
            "val_fraction": val_fraction,
            "test_fraction": None if official_split else test_fraction,
            "folds": folds if folds > 1 else 0,
        },
        **splits,
        "quarantine": list(result.quarantine) + grouping.quarantine,
        "duplicates": list(result.duplicates),
        "ignored": list(result.ignored),
        "near_duplicates": grouping.groups,
    }
    if official_split:
        datalist["split"]["official_rule"] = OFFICIAL_SPLIT_RULE
        datalist["split"]["patients_moved_to_test"] = moved
    datalist["audit"] = split_audit(datalist)
    datalist["summary"] = _summarise(datalist)
    return datalist


def _partition_of(datalist: dict[str, Any]) -> dict[str, str]:
    return {str(record["case_id"]): name for name in SPLIT_NAMES for record in datalist[name]}


def split_audit(datalist: dict[str, Any]) -> dict[str, Any]:
    """The leak counts of a datalist's split from its ``near_duplicates`` groups (each group's members get their
    partition there too); with folds, each fold's validation against the other folds' training as well."""
    partition = _partition_of(datalist)
    groups = datalist.get("near_duplicates") or []
    for group in groups:
        for member in group["members"]:
            member["partition"] = partition.get(str(member["case_id"]))
    by_partition = [[member["partition"] for member in group["members"]] for group in groups]
    audit: dict[str, Any] = {
        "method": (datalist.get("split") or {}).get("near_duplicate_method"),
        "near_duplicate_groups": len(groups),
        "images_in_groups": sum(len(group["members"]) for group in groups),
        "label_conflicts": sum(bool(group.get("label_conflict")) for group in groups),
        "leaked_test_images": leaked_images(by_partition, "test"),
        "leaks": count_leaks(by_partition),
    }
    folds = int((datalist.get("split") or {}).get("folds") or 0)
    if folds > 1:
        fold_of = {str(r["case_id"]): r["fold"] for name in ("training", "validation") for r in datalist[name]}
        audit["fold_leaks"] = [
            count_leaks([[_fold_partition(partition, fold_of, m["case_id"], fold) for m in g["members"]] for g in groups])
            for fold in range(folds)
        ]
    return audit


def _fold_partition(partition: dict[str, str], fold_of: dict[str, int], case_id: str, fold: int) -> str | None:
    """The partition of ``case_id`` when fold ``fold`` validates: test, validation (that fold) or training."""
    case_id = str(case_id)
    if partition.get(case_id) == "test":
        return "test"
    if case_id not in fold_of:
        return None
    return "validation" if fold_of[case_id] == fold else "training"


def _count(records: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of ``records``: ``lesion_images`` have at least one lesion; ``lesions`` counts each annotated lesion (a
    mask file, a CSV row or an XML ROI), so an image with two masks counts once there and twice here."""
    return {
        "images": len(records),
        "lesion_images": sum(int(r.get("lesion_count") or 0) > 0 for r in records),
        "lesions": sum(int(r.get("lesion_count") or 0) for r in records),
        "patients": len({str(r["patient_id"]) for r in records}),
        "groups": len({str(r.get(GROUP_KEY, r["patient_id"])) for r in records}),
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
    audit = datalist.get("audit") or {}
    summary["near_duplicate_groups"] = audit.get("near_duplicate_groups", 0)
    summary["label_conflicts"] = audit.get("label_conflicts", 0)
    summary["leaked_test_images"] = audit.get("leaked_test_images", 0)
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
            a case id listed twice, an image, case, patient or group in two splits, or a bad ``fold``
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
    keys = [("image", record["image"]), ("case", record["case_id"]), ("patient", record["patient_id"])]
    keys += [("group", record[GROUP_KEY])] if record.get(GROUP_KEY) not in (None, "") else []
    for kind, value in keys:
        seen = owner.setdefault((kind, str(value)), split)
        if seen != split:
            raise ValueError(f"datalist {str(path)!r}: {kind} {str(value)!r} (case {record['case_id']!r}) "
                             f"is in both {seen!r} and {split!r}")
        if kind in ("image", "case") and position != owner.setdefault((kind + "@", str(value)), position):
            raise ValueError(f"datalist {str(path)!r}: {kind} {str(value)!r} is listed twice in {split!r}")


def _check_folds(path: Path, datalist: dict[str, Any]) -> None:
    folds = int((datalist.get("split") or {}).get("folds") or 0)
    if folds < 2:
        return
    fold_of: dict[tuple[str, str], int] = {}
    for record in datalist["training"] + datalist["validation"]:
        fold = record.get("fold")
        if not isinstance(fold, int) or not 0 <= fold < folds:
            raise ValueError(f"datalist {str(path)!r}: case {record['case_id']!r} has fold {fold!r}; "
                             f"expected an integer in 0..{folds - 1}")
        for kind in ("patient_id", GROUP_KEY):
            if record.get(kind) in (None, ""):
                continue
            first = fold_of.setdefault((kind, str(record[kind])), fold)
            if first != fold:
                raise ValueError(f"datalist {str(path)!r}: {kind.replace('_id', '')} {str(record[kind])!r} is in "
                                 f"folds {first} and {fold} (case {record['case_id']!r})")


def _format_near_duplicates(datalist: dict[str, Any]) -> list[str]:
    audit = datalist.get("audit")
    if audit is None:  # written before near duplicates were searched
        return ["near duplicates: not searched (datalist written before near-duplicate grouping)"]
    groups = datalist.get("near_duplicates") or []
    lines = [f"near-duplicate groups: {len(groups)} ({audit['images_in_groups']} images; "
             f"{audit['label_conflicts']} label conflict(s)); near duplicates: {datalist['split'].get('near_duplicates')}"]
    for group in groups:
        members = ", ".join(f"{m['case_id']} ({m.get('partition') or 'quarantined'})" for m in group["members"])
        conflict = " LABEL CONFLICT" if group.get("label_conflict") else ""
        similarity = min((pair["similarity"] for pair in group["pairs"]), default=1.0)
        lines.append(f"  {members}: similarity >= {similarity:.2f}{conflict}")
    sizes = {name: len(datalist[name]) for name in SPLIT_NAMES}
    lines.append("leaks (near duplicates in two partitions):")
    lines += [f"  {line}" for line in format_leaks(audit["leaks"], sizes)]
    return lines


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
    lines.append("  (lesion images: images with at least one lesion; lesions: annotated lesions, one mask file, CSV "
                 "row or XML ROI each)")
    for name, counts in [*((name, summary[name]) for name in (*SPLIT_NAMES, "total")),
                         *((f"fold {fold}", counts) for fold, counts in enumerate(summary.get("folds", [])))]:
        groups = f" {counts['groups']:>6} groups" if "groups" in counts else ""
        # a summary written before lesion images were counted has no such count
        lesion_images = f" {counts['lesion_images']:>6} lesion images" if "lesion_images" in counts else ""
        lines.append(f"  {name:<10} {counts['images']:>6} images{lesion_images} {counts['lesions']:>6} lesions "
                     f"{counts['patients']:>6} patients{groups}")
    if split.get("official_rule"):
        moved = split.get("patients_moved_to_test", [])
        lines.append(f"official split: {split['official_rule']}")
        lines.append(f"  {len(moved)} patient(s) in both official train and test: {', '.join(moved) or '-'}")
    lines.append(f"duplicates removed: {len(datalist['duplicates'])}")
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in datalist["duplicates"]]
    lines += _format_near_duplicates(datalist)
    lines.append(f"quarantined: {len(datalist['quarantine'])}")
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in datalist["quarantine"]]
    ignored = datalist.get("ignored", [])  # absent from datalists written before it existed
    lines.append(f"ignored (not images): {len(ignored)}")
    lines += [f"  {entry['path']}: {entry['reason']}" for entry in ignored]
    return "\n".join(lines)
