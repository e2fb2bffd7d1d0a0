"""Served request time against the bare preprocessing and forward pass of the same image, in the same run.

Run: ``python benchmarks/serving.py [--bundle unetplusplus_mammo] [--image_size 64] [--rows 4084 --columns 3328] [--requests 7] [--threads 1]``

A synthetic full-field mammogram (16-bit DICOM, ``rows`` x ``columns``, one mass; written with pydicom) and a bundle
registered in a temporary MLflow store (its weights untrained at the demo's settings: the time does not depend on
their values) served as ``breastseg serve`` serves it, on 127.0.0.1. Timed in ``requests`` interleaved rounds (both
sides meet the same load of the machine) after one warm-up round, medians:

- ``served``: a POST of the DICOM with the mass's box (``unetplusplus_mammo``; whole-image bundles get the image
  alone) until its answer is read: HTTP, MLflow's parsing of the request, the row checks, the bundle's chain, network
  and mapping back, the mask's PNG, the answer's JSON. Twice: as JSON (the file in base64) and as Parquet (its raw
  bytes: no JSON or base64 to decode);
- ``bare``: in this process, the bundle's own chain on the same file and the network's forward pass on its output
  (the sigmoid included), nothing else: what any served request has to pay.

Each is timed in wall seconds and in CPU seconds (the server's whole process group for a request, this process for
the bare pass): with one thread (the default) CPU time is the work done, unaffected by other jobs sharing the
machine, so the overhead ``served / bare - 1`` (target: at most 15 %) is computed from it; the wall times are printed
beside it (meaningful on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
#: the trained settings of each bundle it times: the demo's image size (``breastseg.workflows.commands.demo.DEMO_OVERRIDES``;
#: ``--image_size`` for another, 224 is the paper's), network at its defaults
SETTINGS = {"unetplusplus_mammo": {"network": "unetplusplus", "network_kwargs": {"norm": "batch", "dropout": 0.0}, "in_channels": 1, "image_size": 64}}


def write_mammogram(folder: Path, rows: int, columns: int) -> tuple[Path, list[int]]:
    """A synthetic 16-bit mammogram with one mass as a DICOM file, and the mass's box ``[r0, r1, c0, c1]``."""
    from breastseg.workflows.data.synthetic._dicom import MAMMO_FOR_PRESENTATION, DicomFields, write_dicom
    from breastseg.workflows.data.synthetic.mammogram import render_mammogram

    picture = render_mammogram(np.random.default_rng(0), (rows, columns), "CC", chest_wall_left=True, masses=("round",))
    found = np.argwhere(picture.lesions[0].mask)
    (r0, c0), (r1, c1) = found.min(axis=0), found.max(axis=0) + 1
    path = folder / "mammogram.dcm"
    fields = DicomFields(MAMMO_FOR_PRESENTATION, "1.2.3", "1.2.3.4", "1.2.3.4.5", "BENCH", "BENCH", "20240101", pixel_spacing=(0.07, 0.07))
    write_dicom(path, (picture.image * 65535).astype(np.uint16), fields)
    return path, [int(r0), int(r1), int(c0), int(c1)]


def register(bundle: str, folder: Path) -> str:
    """Register ``bundle`` with untrained weights (and their training context) in a new store under ``folder``."""
    import mlflow

    from breastseg.networks import build_network
    from breastseg.workflows.engine.model_context import training_context
    from breastseg.workflows.tracking.registry import log_bundle_model
    from breastseg.workflows.tracking.runs import prepare_sqlite_store

    settings = SETTINGS[bundle]
    uri = prepare_sqlite_store("sqlite:///" + (folder / "mlruns.db").as_posix())
    network = build_network(settings["network"], spatial_dims=2, in_channels=settings["in_channels"], out_channels=1, **settings["network_kwargs"])
    split = {"training": [{"case_id": "a"}], "validation": [{"case_id": "b"}], "test": [{"case_id": "c"}]}
    weights = folder / "model.pt"
    torch.save({"model": network.state_dict(), "context": training_context(ROOT / "bundles" / bundle, settings, "cbis-ddsm", split, seed=0)}, weights)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("serving-benchmark", artifact_location=(folder / "artifacts").as_uri()))
    size = settings["image_size"]
    log_bundle_model(run.info.run_id, ROOT / "bundles" / bundle, weights, bundle, (settings["in_channels"], size, size), uri, network_settings=settings)
    return uri


def _clock_ticks(pgid: int) -> int:
    """User + system CPU clock ticks so far of every process in process group ``pgid`` (from ``/proc``)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def bare_pass(bundle: str, image: Path, box: list[int] | None):
    """A function running the bundle's chain on ``image`` and the network's forward pass (with the sigmoid) once."""
    from monai.bundle import ConfigParser
    from monai.data import list_data_collate

    from breastseg.workflows.evaluation.inference import image_record

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(ROOT / "bundles" / bundle), "dataset_dir": None, **SETTINGS[bundle]})
    chain, network = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("network_def").eval()
    record = image_record(image, [box] if box else None)

    def run() -> None:
        samples = chain(dict(record))
        batch = list_data_collate(samples if isinstance(samples, list) else [samples])
        with torch.no_grad():
            torch.sigmoid(network(batch["image"].as_tensor()))

    return run


def bare_seconds(run) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of one bare pass (this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def request_bodies(image: Path, roi: list[int] | None) -> dict[str, tuple[bytes, str]]:
    """``{format: (body, content type)}`` of one request for ``image`` (and its box): JSON with base64, Parquet raw."""
    import pandas as pd

    data = image.read_bytes()
    extra = {"roi": [roi]} if roi else {}
    parquet = io.BytesIO()
    pd.DataFrame([{"image": data, **extra}]).to_parquet(parquet)
    json_body = json.dumps({"dataframe_records": [{"image": base64.b64encode(data).decode("ascii"), **extra}]}).encode()
    return {"JSON": (json_body, "application/json"), "Parquet": (parquet.getvalue(), "application/vnd.apache.parquet")}


def served_seconds(url: str, server_group: int, body: bytes, content_type: str) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of a POST of ``body`` until its answer is read; CPU: the server's process group."""
    request = urllib.request.Request(url + "/invocations", body, {"Content-Type": content_type})
    wall, cpu = time.perf_counter(), _clock_ticks(server_group)
    with urllib.request.urlopen(request, timeout=600) as answer:
        json.loads(answer.read())
    return time.perf_counter() - wall, (_clock_ticks(server_group) - cpu) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="unetplusplus_mammo", choices=sorted(SETTINGS))
    parser.add_argument("--rows", type=int, default=4084)
    parser.add_argument("--columns", type=int, default=3328)
    parser.add_argument("--requests", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=None, help="the network's input size (default: the demo's)")
    args = parser.parse_args()
    if args.image_size:
        SETTINGS[args.bundle]["image_size"] = args.image_size
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from mlflow_server import free_port, model_server  # the tests' server start: run, then wait for /ping

    from breastseg.workflows.tracking.registry import serve_command

    folder = Path(tempfile.mkdtemp(prefix="breastseg-serving-benchmark-"))
    try:
        image, box = write_mammogram(folder, args.rows, args.columns)
        roi = box if args.bundle == "unetplusplus_mammo" else None
        uri = register(args.bundle, folder)
        bodies = request_bodies(image, roi)
        bare = bare_pass(args.bundle, image, roi)
        port = free_port()
        command, env, _ = serve_command(f"{args.bundle}@candidate", port, tracking_uri=uri)  # what breastseg serve runs
        env["OMP_NUM_THREADS"] = str(args.threads)  # the server's torch threads, as this process has them
        times: dict[str, list[tuple[float, float]]] = {"bare": [], **{name: [] for name in bodies}}
        with model_server(command, env, folder / "serve", port) as (url, server):  # the server leads its own process group
            for _ in range(args.requests + 1):  # interleaved, so that both sides meet the same load; the first round warms up
                times["bare"].append(bare_seconds(bare))
                for name, (body, kind) in bodies.items():
                    times[name].append(served_seconds(url, server.pid, body, kind))
        median = {name: tuple(statistics.median(column) for column in zip(*values[1:])) for name, values in times.items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    size = SETTINGS[args.bundle]["image_size"]
    print(f"{args.bundle} at {size} x {size}, one {args.rows} x {args.columns} 16-bit DICOM, {args.threads} thread(s), median of {args.requests}:")
    bare_wall, bare_cpu = median.pop("bare")
    print(f"  bare chain + forward pass          CPU {bare_cpu:.3f} s   wall {bare_wall:.3f} s")
    for name, (wall, cpu) in median.items():
        size = len(bodies[name][0]) / 2**20
        print(f"  served, {name:<7} ({size:4.1f} MiB)    CPU {cpu:.3f} s   wall {wall:.3f} s   overhead: CPU {cpu / bare_cpu - 1:+.1%}, wall {wall / bare_wall - 1:+.1%}")
    print("  (target: overhead <= +15 %)")


if __name__ == "__main__":
    main()
