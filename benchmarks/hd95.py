"""HD95 on full-size mammogram masks: breastseg's bounding-box computation against stock MONAI.

Run: ``python benchmarks/hd95.py [--repeats 5] [--dtype float32|bool]``

Both compute MONAI's HD95 (``HausdorffDistanceMetric(percentile=95)``) on 4084 x 3328 masks of a few lesion
shapes, one thread. For every pair the script prints both values (they must be equal; for the pair with an
empty prediction stock MONAI gives NaN and breastseg the image diagonal of its empty-mask rule) and the ratio
of the median times. Exit status 1 when a value differs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric
from scipy import ndimage

from breastseg.workflows.metrics import CASE_COLUMNS, compute_case_table

HEIGHT, WIDTH = 4084, 3328


def _blob(rng: np.random.Generator, centre: tuple[int, int], radius: float, roughness: float) -> np.ndarray:
    """A lesion-like mask: a disc whose radius is modulated by random low-frequency harmonics."""
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    angle = np.arctan2(rows - centre[0], cols - centre[1])
    wobble = sum(rng.uniform(-roughness, roughness) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    return np.hypot(rows - centre[0], cols - centre[1]) < radius * (1 + wobble)


def make_pairs(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (prediction, label) pairs of full-size masks."""
    rng = np.random.default_rng(seed)
    label_small = _blob(rng, (2100, 1600), 60, 0.15)
    label_large = _blob(rng, (1900, 1400), 420, 0.2)
    label_edge = _blob(rng, (4000, 60), 300, 0.1)  # lesion cut by the image border
    spiculated = _blob(rng, (1500, 2200), 250, 0.35)
    return {
        "small mass": (ndimage.binary_dilation(label_small, iterations=6), label_small),
        "large mass": (_blob(rng, (1950, 1420), 400, 0.2), label_large),
        "border mass": (ndimage.binary_erosion(label_edge, iterations=15), label_edge),
        "spiculated + distant FP": (_blob(rng, (1520, 2180), 240, 0.3) | _blob(rng, (600, 600), 40, 0.1), spiculated),
        "missed (empty pred)": (np.zeros_like(label_large), label_large),
    }


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    result, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bool"), default="bool", help="bool is what the harness hands the metrics")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # stock MONAI warns on the empty prediction
    dtype = torch.float32 if args.dtype == "float32" else torch.bool
    stock = HausdorffDistanceMetric(include_background=True, percentile=95)

    print(f"HD95 on {HEIGHT}x{WIDTH} masks ({args.dtype}), 1 thread, median of {args.repeats}")
    print(f"{'pair':26s} {'stock MONAI':>12s} {'breastseg':>12s} {'stock s':>9s} {'ours s':>9s} {'ratio':>7s}")
    mismatches, stock_total, ours_total = 0, 0.0, 0.0
    for name, (pred_np, label_np) in make_pairs().items():
        pred = torch.from_numpy(pred_np)[None, None].to(dtype)
        label = torch.from_numpy(label_np)[None, None].to(dtype)
        stock_s, stock_value = _median_seconds(lambda: float(stock(pred, label)[0, 0]), args.repeats)
        stock.reset()
        ours_s, table = _median_seconds(lambda: compute_case_table(pred, label), args.repeats)
        ours_value = float(table[0, CASE_COLUMNS.index("hd95_px")])
        if math.isnan(stock_value):
            agrees = pred_np.any() != label_np.any()  # stock NaN is expected only where one mask is empty
        else:
            agrees = ours_value == stock_value
        mismatches += not agrees
        stock_total += stock_s
        ours_total += ours_s
        print(
            f"{name:26s} {stock_value:12.4f} {ours_value:12.4f} {stock_s:9.4f} {ours_s:9.4f} {stock_s / ours_s:6.1f}x"
            + ("" if agrees else "  MISMATCH")
        )
    print(f"{'all pairs':26s} {'':12s} {'':12s} {stock_total:9.4f} {ours_total:9.4f} {stock_total / ours_total:6.1f}x")
    print("note: breastseg times include every other per-case metric (Dice, IoU, confusion counts, HD max).")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
