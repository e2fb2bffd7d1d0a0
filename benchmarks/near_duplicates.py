"""Near-duplicate search at BUSI sizes: indexing with the check, its cost against an exhaustive pairwise check,
and its recall and precision on the planted re-exports.

Run: ``python benchmarks/near_duplicates.py [--images 780 10000] [--workers 2] [--data DIR] [--pairs 3000]``

For each image count N the script writes a synthetic BUSI at real sizes (about 500x450; ``--data`` keeps and reuses
it; the writing is spread over ``--workers`` processes and is not timed), then, on one CPU thread:

1. indexes it with the near-duplicate check as ``breastseg datalist`` does (``build_datalist``: decode, checks,
   fingerprints, candidate search, verification, split), cold and again with the fingerprint cache (the second
   indexing);
2. times the search alone (fingerprints from the files, then candidates and checks), and the exhaustive reference:
   the same fingerprints, then every pair verified (:func:`verify_pair`, the check the search runs on its
   candidates), timed on ``--pairs`` random pairs and extrapolated to all N(N-1)/2 pairs (running them all would
   take days at 10,000);
3. counts the planted pairs found in one group (recall) and the groups that join images the layout did not plant
   together (precision), and prints the peak memory of the process and the bytes of fingerprint per image.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import multiprocessing  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from breastseg.workflows.data.datalist import build_datalist  # noqa: E402
from breastseg.workflows.data.near_duplicates import (  # noqa: E402
    fingerprint,
    read_grey,
    search_fingerprints,
    verify_pair,
)
from breastseg.workflows.data.indexers.busi import CLASSES  # noqa: E402
from breastseg.workflows.data.synthetic import busi  # noqa: E402

CHUNK = 500  # images per generated part (parts are written in parallel, then merged into one layout)


def _write_part(args: tuple[Path, int, int]) -> dict:
    folder, cases, seed = args
    return busi.generate(folder, cases=cases, seed=seed, full_size=True)


def _merge(parts: list[tuple[Path, dict]], root: Path) -> list[tuple[str, str]]:
    """Move the parts' files into one ``Dataset_BUSI_with_GT``, numbering on per class; the planted pairs renamed."""
    offsets = {name: 0 for name in CLASSES}
    planted = []
    for folder, summary in parts:
        renamed = {}
        for name in CLASSES:
            source = folder / busi.FOLDER / name
            for path in sorted(source.iterdir()):
                stem, rest = path.name.split(")", 1)
                number = int(stem.split("(")[1]) + offsets[name]
                target = root / busi.FOLDER / name / f"{name} ({number}){rest}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
                renamed[f"{name}/{path.name}"] = target.stem if "_mask" not in target.stem else None
            offsets[name] += summary[name]
        planted += [(renamed[p["source"]], renamed[p["copy"]]) for p in summary["near_duplicates"]]
        count = summary["benign"]
        planted.append((renamed["benign/benign (2).png"], renamed[f"benign/benign ({count}).png"]))
    return planted


def synthetic_busi(images: int, data: Path, workers: int) -> tuple[Path, list[tuple[str, str]]]:
    root = data / f"busi_{images}"
    truth = root / "planted.tsv"
    if truth.is_file():
        return root, [tuple(line.split("\t")) for line in truth.read_text().splitlines()]
    shutil.rmtree(root, ignore_errors=True)
    sizes = [min(CHUNK, images - start) for start in range(0, images, CHUNK)]
    jobs = [(root / "parts" / str(index), size, index) for index, size in enumerate(sizes)]
    with multiprocessing.Pool(workers) as pool:
        summaries = pool.map(_write_part, jobs)
    planted = _merge([(job[0], summary) for job, summary in zip(jobs, summaries)], root)
    shutil.rmtree(root / "parts")
    truth.write_text("\n".join("\t".join(pair) for pair in planted) + "\n")
    return root, planted


def _groups_of(datalist: dict) -> dict[str, int]:
    found = {}
    for index, group in enumerate(datalist["near_duplicates"]):
        for member in group["members"]:
            found[member["case_id"]] = index
    for entry in datalist["duplicates"]:  # exact copies dropped by the indexer join their original
        original = Path(entry["duplicate_of"]).stem
        found[entry["case_id"]] = found.setdefault(original, -len(found) - 1)
    return found


def recall_precision(datalist: dict, planted: list[tuple[str, str]]) -> tuple[int, int, int]:
    """``(planted pairs in one group, planted pairs, groups joining unplanted images)``."""
    group = _groups_of(datalist)
    together = sum(a in group and group.get(a) == group.get(b) for a, b in planted)
    parent = {}

    def root(node: str) -> str:
        while parent.get(node, node) != node:
            node = parent[node]
        return node

    for a, b in planted:
        parent[root(a)] = root(b)
    wrong = sum(len({root(m["case_id"]) for m in g["members"]}) > 1 for g in datalist["near_duplicates"])
    return together, len(planted), wrong


def exhaustive_seconds(prints: list, pairs: int, rng: np.random.Generator) -> tuple[float, int]:
    """Seconds to verify every pair of ``prints``, from ``pairs`` random pairs timed; and the number of pairs."""
    total = len(prints) * (len(prints) - 1) // 2
    chosen = rng.choice(total, size=min(pairs, total), replace=False)
    first = (np.floor((1 + np.sqrt(1 + 8 * chosen)) / 2)).astype(int)  # pair index -> (i, j), i > j
    second = chosen - first * (first - 1) // 2
    start = time.perf_counter()
    for i, j in zip(first, second):
        verify_pair(prints[i], prints[j])
    return (time.perf_counter() - start) / len(chosen) * total, total


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[780, 10000])
    parser.add_argument("--workers", type=int, default=2, help="processes writing the synthetic data (not timed)")
    parser.add_argument("--data", type=Path, default=None, help="keep the synthetic layouts here and reuse them")
    parser.add_argument("--pairs", type=int, default=3000, help="random pairs timed for the exhaustive reference")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    data = args.data or Path(tempfile.mkdtemp(prefix="near_duplicates_"))
    rng = np.random.default_rng(0)
    for images in args.images:
        root, planted = synthetic_busi(images, data, args.workers)
        cache = data / f"fingerprints_{images}.npz"
        cache.unlink(missing_ok=True)
        start = time.perf_counter()
        datalist = build_datalist("busi", root, seed=0, cache_file=cache)
        cold = time.perf_counter() - start
        memory = peak_mib()
        start = time.perf_counter()
        build_datalist("busi", root, seed=0, cache_file=cache)
        warm = time.perf_counter() - start
        paths = [r["image"] for split in ("training", "validation", "test") for r in datalist[split]]
        start = time.perf_counter()
        prints = [fingerprint(read_grey(path)) for path in paths]
        fingerprinting = time.perf_counter() - start
        start = time.perf_counter()
        search_fingerprints(prints)
        searching = time.perf_counter() - start
        exhaustive, total_pairs = exhaustive_seconds(prints, args.pairs, rng)
        together, planted_pairs, wrong = recall_precision(datalist, planted)
        sizes = [p.nbytes for p in prints]
        print(f"--- {images} synthetic BUSI images at real sizes (one CPU thread) ---")
        print(f"indexing with the near-duplicate check (breastseg datalist): {cold:.1f} s cold, {warm:.1f} s with the cache")
        print(f"near-duplicate search: fingerprints {fingerprinting:.1f} s + candidates and checks {searching:.1f} s")
        print(f"exhaustive reference, every pair checked ({total_pairs:,} pairs, {min(args.pairs, total_pairs)} timed): "
              f"fingerprints {fingerprinting:.1f} s + {exhaustive:.0f} s = "
              f"{(fingerprinting + exhaustive) / (fingerprinting + searching):.1f}x the search "
              f"({exhaustive / searching:.0f}x its pair stage)")
        print(f"recall: {together} of {planted_pairs} planted pairs in one group ({together / planted_pairs:.1%}); "
              f"groups joining images not planted together: {wrong} of {len(datalist['near_duplicates'])}")
        print(f"peak memory {memory:.0f} MiB; fingerprint {np.mean(sizes) / 1024:.1f} KiB per image "
              f"({np.sum(sizes) / 2**20:.0f} MiB in all)")


if __name__ == "__main__":
    main()
