"""Preprocessing speed on one full-size 4084x3328 16-bit mammogram, one CPU thread.

Times each paper's chain (DICOM read included) and CLAHE / Wiener / histogram equalisation alone,
against the references measured in the same run (scikit-image ``equalize_adapthist``,
``scipy.signal.wiener``, MONAI ``HistogramNormalize``), and prints seconds and speed-up ratios.
Targets: every chain <= 1 s per image; CLAHE >= 5x faster than scikit-image.

Run: ``python benchmarks/preprocess.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import cv2
import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

ROWS, COLS = 4084, 3328


def synthetic_mammogram(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 16-bit breast against the left edge with texture, one lesion, a film label; and its mask."""
    rng = np.random.default_rng(seed)
    rr, cc = np.ogrid[0:ROWS, 0:COLS]
    breast = ((rr - ROWS / 2) / (ROWS * 0.45)) ** 2 + (cc / (COLS * 0.7)) ** 2 <= 1
    texture = cv2.GaussianBlur(rng.normal(0, 1, (ROWS, COLS)).astype(np.float32), (0, 0), 12)
    image = np.where(breast, 20000 + 60000 * texture, 800).astype(np.float32)
    image += rng.normal(0, 200, (ROWS, COLS)).astype(np.float32)
    lesion = (rr - 1800) ** 2 + (cc - 1100) ** 2 <= 150**2
    image[lesion] += 9000
    image[3800:3950, 2800:3200] = 60000
    return np.clip(image, 0, 65535).astype(np.uint16), lesion


def write_dicom(path: str, array: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = ["0.07", "0.07"]
    ds.PixelData = np.ascontiguousarray(array, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    from monai.transforms import HistogramNormalize
    from scipy.signal import wiener
    from skimage.exposure import equalize_adapthist

    from breastseg.transforms import (
        CLAHE,
        HistogramEqualize,
        WienerFilter,
        brems_net,
        connected_unets,
        two_stage_msf,
        unetplusplus_mammo,
    )

    image, lesion = synthetic_mammogram()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image_path, mask_path = os.path.join(tmp, "full.dcm"), os.path.join(tmp, "roi.dcm")
        write_dicom(image_path, image)
        write_dicom(mask_path, lesion.astype(np.uint16) * 255)
        sample = {"image": image_path, "label": [mask_path], "label_format": "dicom"}
        chains = {
            "000 brems_net (512)": brems_net(),
            "001 unetplusplus_mammo (224)": unetplusplus_mammo(),
            "002 two_stage_msf (256 patch)": two_stage_msf(),
            "004 connected_unets cbis-ddsm": connected_unets(dataset="cbis-ddsm"),
            "004 connected_unets inbreast": connected_unets(dataset="inbreast"),
        }
        for name, chain in chains.items():
            rows.append((f"chain {name}", timed(lambda c=chain: c(dict(sample)), args.repeats), None, None))

    tensor = torch.as_tensor(image.astype(np.float32))[None]
    scaled = (image.astype(np.float64) - image.min()) / (image.max() - image.min())
    ours = timed(lambda: CLAHE(clip_limit=0.01, tile_grid=8)(tensor), args.repeats)
    ref = timed(lambda: equalize_adapthist(scaled, clip_limit=0.01, kernel_size=(ROWS // 8, COLS // 8)), 1)
    rows.append(("CLAHE (OpenCV, 256 bins)", ours, "skimage equalize_adapthist", ref))
    ours = timed(lambda: CLAHE(clip_limit=0.01, tile_grid=8, num_bins=65536)(tensor), args.repeats)
    rows.append(("CLAHE (OpenCV, 65536 bins)", ours, "skimage equalize_adapthist", ref))
    as_float = image.astype(np.float64)
    ours = timed(lambda: WienerFilter(window=3)(tensor), args.repeats)
    ref = timed(lambda: wiener(as_float, (3, 3)), 1)
    rows.append(("Wiener 3x3 (box filters)", ours, "scipy.signal.wiener", ref))
    ours = timed(lambda: HistogramEqualize(num_bins=256)(tensor), args.repeats)
    ref = timed(lambda: HistogramNormalize(num_bins=256, min=0, max=1)(tensor), 1)
    rows.append(("histogram equalisation", ours, "MONAI HistogramNormalize", ref))

    print(f"full-size {ROWS}x{COLS} uint16 mammogram, 1 thread, median of {args.repeats}")
    print(f"{'operation':40s} {'seconds':>8s}  {'reference':28s} {'ref s':>8s} {'speed-up':>9s}")
    for name, seconds, ref_name, ref_seconds in rows:
        if ref_name is None:
            verdict = "ok" if seconds <= 1.0 else "over 1 s"
            print(f"{name:40s} {seconds:8.3f}  {'target <= 1 s':28s} {'':>8s} {verdict:>9s}")
        else:
            print(f"{name:40s} {seconds:8.3f}  {ref_name:28s} {ref_seconds:8.3f} {ref_seconds / seconds:8.1f}x")


if __name__ == "__main__":
    main()
