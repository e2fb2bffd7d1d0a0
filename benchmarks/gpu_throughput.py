"""Training throughput of the harness against a plain PyTorch loop on the same network, bundle by bundle.

Run: ``python benchmarks/gpu_throughput.py [--device cpu|cuda] [--bundles a,b] [--recipe default|crop|all]``

For each bundle's training recipe (its ``train.json`` as a user runs it: real chain and augmentation,
real handlers, validation and checkpoint at the bundle's intervals, MLflow on, into a temporary store):

- **harness**: images/s of whole training epochs through ``train#trainer`` (validation and checkpoints
  included);
- **ceiling**: a plain loop (forward, the bundle's loss, backward, optimizer step; AMP on CUDA) over batches
  already on the device, on a fresh copy of the same network: what the device can do;
- **ratio** harness / ceiling;
- **null network**: the harness with the network replaced by a 1x1 convolution and the loss by the mean of
  its output, training steps only (validation and checkpoints left out): what the host side (data,
  augmentation, collation, copies, handlers) can feed, images/s;
- **MetaTensor cost**: forward + backward of the real network on the harness's own batch (cut to 64x64,
  batch 1) minus the same on a plain tensor, and a MetaTensor batch minus plain (what the harness paid
  before it handed plain tensors over), ms;
- **checkpoint block**: seconds the trainer waited per epoch for ``checkpoint_last.pt`` (median; the first
  write also allocates the snapshot buffers and is printed apart);
- **validation metrics**: host ms per image for post-processing and the validation metrics (the case table:
  Dice, HD95 and the rest) on a lesion-like prediction and on a noisy one (early training), and the pixel ROC
  that evaluation adds, at the recipe's image size;
- **start -> first step**: seconds from launching ``python -m monai.bundle run training`` to its first
  training step (the second of two launches: synthetic data generated, the disk cache of the preprocessed
  images written by the first);
- **GPU utilisation**: on CUDA, ``nvidia-smi``'s mean utilisation over the harness run.

On a CPU the real-network figures use ``--cpu_image_size`` (default 64; crop recipes crop that size out of
images twice as large) so that the whole run stays within minutes on 2 cores, and times are CPU time of the
training thread (other processes on the machine do not count; the background checkpoint writer does not
either, which is the point of it); on CUDA they are synchronised wall time. The null network and the metrics
always run at the recipe's size. Every figure is measured in this run; nothing is compared with a stored
number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import MetaTensor

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("unetplusplus_mammo", "brems_net", "two_stage_msf", "hybrid_attention_us", "connected_unets")
#: the documented short crop recipes (bundle docs), at the bundle's own image size
CROP_RECIPES = {
    "brems_net": {"train_crop": 128, "augment": True},
    "connected_unets": {"train_crop": 64, "augment": True, "batch_size": 8},
}


class NullNetwork(torch.nn.Module):
    """A 1x1 convolution to one channel returning the real network's output structure (a list of heads in
    training mode), written as a per-pixel weighted sum (torch's CPU ``conv2d`` takes ~40 ms for one 1x1
    channel of a 16 x 224 x 224 batch, the elementwise form ~1 ms).

    ``full_size=False`` applies it in training to the first pixel of each image only: the step then costs
    nothing per pixel and the figure is the harness's own feed rate (data, augmentation, collation, copies,
    handlers). Evaluation always gets full-size outputs (the metrics need them)."""

    def __init__(self, in_channels: int, heads: int | None, head_names: Any = None, full_size: bool = True) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((1, in_channels, 1, 1), 1.0 / in_channels))
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.heads = heads
        self.full_size = full_size
        if head_names is not None:
            self.head_names = head_names

    def forward(self, x: torch.Tensor) -> Any:
        if self.training and not self.full_size:
            x = x[:, :, :1, :1]
        y = x * self.weight + self.bias if x.shape[1] == 1 else (x * self.weight).sum(dim=1, keepdim=True) + self.bias
        return [y] * self.heads if self.training and self.heads else y


class NullLoss:
    """The mean of the (first) output: one pass over the pixels (``terms`` for the loss-terms handler)."""

    terms: dict[str, torch.Tensor] = {}

    def __call__(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return (output[0] if isinstance(output, (list, tuple)) else output).float().mean()


def head_count(network: torch.nn.Module, in_channels: int) -> int | None:
    network.train()
    with torch.no_grad():
        output = network(torch.rand(2, in_channels, 64, 64))
    return len(output) if isinstance(output, (list, tuple)) else None


def recipes(bundle: str, recipe: str) -> list[tuple[str, dict[str, Any]]]:
    chosen = []
    if recipe in ("default", "all"):
        chosen.append(("default", {}))
    if recipe in ("crop", "all") and bundle in CROP_RECIPES:
        chosen.append(("crop", dict(CROP_RECIPES[bundle])))
    return chosen


def parser_for(bundle: str, workdir: Path, device: str, overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update(
        {
            "output_dir": str(workdir / "out"),
            "ckpt_dir": str(workdir / "models"),
            "tracking_uri": f"sqlite:///{workdir / 'mlruns.db'}",
            "device": device,
            **overrides,
        }
    )
    if bundle == "two_stage_msf":
        parser["detector_stage#train"] = False
    return parser


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def epoch_timer(trainer: Any, device: str) -> dict[str, list[float]]:
    """Seconds of each epoch, and of its training steps alone (up to the last step, handlers excluded)."""
    times: dict[str, list[float]] = {"epoch": [], "epoch_cpu": [], "steps": [], "steps_cpu": [], "images": []}
    marks: dict[str, float] = {}

    def started(engine: Any) -> None:
        synchronize(device)
        marks["start"], marks["start_cpu"] = time.perf_counter(), time.thread_time()
        marks["images"] = 0

    def step(engine: Any) -> None:
        marks["images"] += int(engine.state.batch["image"].shape[0])
        if engine.state.iteration % engine.state.epoch_length == 0:
            synchronize(device)
            marks["steps"], marks["steps_cpu"] = time.perf_counter(), time.thread_time()

    def completed(engine: Any) -> None:
        synchronize(device)
        times["epoch"].append(time.perf_counter() - marks["start"])
        times["epoch_cpu"].append(time.thread_time() - marks["start_cpu"])
        times["steps"].append(marks["steps"] - marks["start"])
        times["steps_cpu"].append(marks["steps_cpu"] - marks["start_cpu"])
        times["images"].append(marks["images"])

    trainer.add_event_handler(Events.EPOCH_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)  # after validation and checkpoint handlers
    return times


class GpuUtilisation:
    """Mean GPU utilisation (``nvidia-smi``, sampled every 200 ms) while the ``with`` block runs; ``None`` on
    a machine without ``nvidia-smi``."""

    def __enter__(self) -> "GpuUtilisation":
        import shutil

        self.mean: float | None = None
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                stdout=subprocess.PIPE, text=True,
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is None:
            return
        self.process.terminate()
        output, _ = self.process.communicate()
        samples = [float(line) for line in output.split() if line.strip().replace(".", "", 1).isdigit()]
        self.mean = statistics.mean(samples) if samples else None


def steady(values: list[float], totals: list[int]) -> float:
    """Images/s over the epochs after the first (the first pays warm-up), or all when there is one."""
    pairs = list(zip(values, totals))[1:] or list(zip(values, totals))
    return sum(n for _, n in pairs) / sum(t for t, _ in pairs)


def harness_run(
    bundle: str, overrides: dict[str, Any], device: str, epochs: int, null: bool, full_size: bool = True
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        parser = parser_for(bundle, Path(tmp), device, {**overrides, "max_epochs": epochs})
        if null:
            real = parser.get_parsed_content("network_def")
            in_channels = parser.get_parsed_content("in_channels")
            parser["network_def"] = NullNetwork(
                in_channels, head_count(real, in_channels), getattr(real, "head_names", None), full_size=full_size
            )
            parser["loss"] = NullLoss()
            for handler in parser["train"]["handlers"]:  # the registry would log the 1x1 convolution as the model
                if isinstance(handler, dict) and str(handler.get("_target_", "")).endswith("RegisterBestModel"):
                    handler["_disabled_"] = True
        trainer = parser.get_parsed_content("train#trainer")
        times = epoch_timer(trainer, device)
        with GpuUtilisation() as utilisation:
            trainer.run()
        checkpointers = [h for h in parser.get_parsed_content("train#handlers") if type(h).__name__ == "EpochCheckpointer"]
        blocked = checkpointers[0].writer.blocked_seconds if checkpointers else []
        on_cpu = device == "cpu"  # CPU time of the training thread: other processes on the machine do not count
        return {
            "epoch_images_per_s": steady(times["epoch_cpu" if on_cpu else "epoch"], times["images"]),
            "step_images_per_s": steady(times["steps_cpu" if on_cpu else "steps"], times["images"]),
            "step_images_per_wall_s": steady(times["steps"], times["images"]),
            "step_images_per_cpu_s": steady(times["steps_cpu"], times["images"]),
            "checkpoint_blocked_s": blocked,
            "gpu_utilisation": utilisation.mean,
            "batch": next(iter(parser.get_parsed_content("train#dataloader"))),
            "trainer": trainer,
            "network": parser.get_parsed_content("model"),
        }


def ceiling_run(bundle: str, overrides: dict[str, Any], device: str, steps: int) -> float:
    """Images/s of a plain loop over batches pre-staged on the device (fresh network, same loss)."""
    from breastseg.workflows.engine.harness import plain_batch

    with tempfile.TemporaryDirectory() as tmp:
        parser = parser_for(bundle, Path(tmp), device, overrides)
        network = parser.get_parsed_content("model")
        loss_function = parser.get_parsed_content("loss")
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
        loader = parser.get_parsed_content("train#dataloader")
        batches = []
        for batch in loader:
            batches.append(plain_batch(batch, torch.device(device), non_blocking=False))
            if len(batches) == 4:
                break
        use_amp = device == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        network.train()

        def step(images: torch.Tensor, labels: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=use_amp):
                loss = loss_function(network(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        for images, labels in batches[:2]:  # warm-up
            step(images, labels)
        synchronize(device)
        clock = time.thread_time if device == "cpu" else time.perf_counter
        start, count = clock(), 0
        for index in range(steps):
            images, labels = batches[index % len(batches)]
            step(images, labels)
            count += images.shape[0]
        synchronize(device)
        return count / (clock() - start)


def forward_backward_s(network: torch.nn.Module, x: torch.Tensor, device: str = "cpu") -> float:
    """Seconds of one forward + backward: CPU time of this thread on a CPU (other processes do not count),
    synchronised wall time on CUDA."""
    clock = time.thread_time if device == "cpu" else time.perf_counter
    start = clock()
    output = network(x)
    outputs = output if isinstance(output, (list, tuple)) else [output]
    sum(o.float().mean() for o in outputs).backward()
    network.zero_grad(set_to_none=True)
    synchronize(device)
    return clock() - start


def metatensor_cost(trainer: Any, network: torch.nn.Module, batch: dict, device: str, rounds: int = 11) -> tuple[float, float, int]:
    """(harness batch - plain, MetaTensor - plain) forward + backward ms at 64x64, batch 1 (2 for networks whose
    batch norm sees one value per channel, such as pooled attention vectors), and the batch size used.

    The three inputs alternate within each round (a loaded machine slows all three alike); medians of rounds.
    """
    inputs, _ = trainer.prepare_batch(batch, torch.device(device), False)
    network.train()
    for size in (1, 2):
        harness_input = inputs[:size, :, :64, :64]
        variants = {"plain": harness_input.as_subclass(torch.Tensor).clone(), "harness": harness_input}
        variants["meta"] = MetaTensor(variants["plain"].clone())
        try:
            forward_backward_s(network, variants["plain"], device)
        except ValueError:  # "Expected more than 1 value per channel when training"
            continue
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, x in variants.items():
                times[name].append(forward_backward_s(network, x, device))
        median = {name: 1000 * statistics.median(values) for name, values in times.items()}
        return median["harness"] - median["plain"], median["meta"] - median["plain"], size
    raise ValueError("the network trains on no batch of 1 or 2 images at 64x64")


def metric_ms(size: int, repeats: int = 5) -> dict[str, float]:
    """Host ms per image of the validation metrics at ``size``: lesion-like and noisy predictions."""
    from breastseg.workflows.engine.postprocessing import binary_postprocessing
    from breastseg.workflows.metrics import LesionSegmentationMetric
    from breastseg.workflows.metrics.roc import PixelROCAUC

    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = size / 512
    label = (((rows - 200 * r) ** 2 + (cols - 300 * r) ** 2) < (40 * r) ** 2)[None, None].float().repeat(4, 1, 1, 1)
    lesion_like = (((rows - 205 * r) ** 2 + (cols - 296 * r) ** 2) < (42 * r) ** 2) | (
        ((rows - 400 * r) ** 2 + (cols - 100 * r) ** 2) < (10 * r) ** 2
    )
    logits = {
        "lesion-like": 8.0 * lesion_like[None, None].float().repeat(4, 1, 1, 1) - 4.0,
        "noisy": torch.randn(4, 1, size, size, generator=generator) + 1.5 * label - 0.5,
    }
    post = binary_postprocessing(keep_probabilities=True)
    result = {}
    for name, values in logits.items():
        table_times, roc_times = [], []
        for _ in range(repeats):
            dice, roc = LesionSegmentationMetric("dice"), PixelROCAUC()
            start = time.perf_counter()
            output = post({"pred": values})
            dice(y_pred=output["pred"] > 0.5, y=MetaTensor(label) > 0.5)
            middle = time.perf_counter()
            roc(y_pred=output["prob"], y=label)
            table_times.append((middle - start) / values.shape[0])
            roc_times.append((time.perf_counter() - middle) / values.shape[0])
        result[name] = 1000 * statistics.median(table_times)
        result[name + " roc"] = 1000 * statistics.median(roc_times)
    return result


def start_to_first_step(bundle: str, overrides: dict[str, Any], workdir: Path) -> float | None:
    """Seconds from launching the real training command to the start of its first training step (the
    harness logs the step; for the two-stage bundle, the detector stage's first step)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "training",
               "--config_file", str(ROOT / "bundles" / bundle / "configs" / "train.json"),
               "--output_dir", str(workdir / "out"), "--ckpt_dir", str(workdir / "models"),
               "--tracking_uri", f"sqlite:///{workdir / 'mlruns.db'}"]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else repr(value)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = None
    assert process.stdout is not None
    for line in process.stdout:
        if "first training step" in line:
            seconds = time.perf_counter() - start
            break
    process.kill()  # a two-stage detector stage dies with its parent
    process.wait()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bundles", default=",".join(BUNDLES))
    parser.add_argument("--recipe", choices=("default", "crop", "all"), default="all")
    parser.add_argument("--epochs", type=int, default=3, help="harness epochs per measurement (the first is warm-up)")
    parser.add_argument("--steps", type=int, default=8, help="plain-loop steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    parser.add_argument("--cpu_image_size", type=int, default=64, help="real-network image size on a CPU")
    parser.add_argument("--skip_startup", action="store_true", help="leave out start -> first step")
    parser.add_argument("--null_only", action="store_true", help="only the null-network throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    print(f"device {args.device}, torch {torch.__version__}, {args.threads} thread(s); images/s unless named")
    for bundle in args.bundles.split(","):
        for recipe, overrides in recipes(bundle, args.recipe):
            real = dict(overrides)
            if args.device == "cpu":
                real["image_size"] = args.cpu_image_size
                if "train_crop" in real:  # crops of half the image; deep encoders need 64 x 64 crops
                    real["image_size"] = 2 * args.cpu_image_size
                    real["train_crop"] = args.cpu_image_size
                if bundle == "two_stage_msf":
                    real["patch_size"] = args.cpu_image_size
            null_run = harness_run(bundle, overrides, args.device, args.epochs, null=True)
            feed_run = harness_run(bundle, overrides, args.device, args.epochs, null=True, full_size=False)
            null_line = (
                f"{null_run['step_images_per_s']:9.0f} img/s 1x1 conv on every pixel, "
                f"{feed_run['step_images_per_s']:.0f} img/s on one pixel (harness feed rate)"
            )
            if args.device == "cpu":
                null_line += (
                    f"; training-thread CPU time (wall: {null_run['step_images_per_wall_s']:.0f}, "
                    f"{feed_run['step_images_per_wall_s']:.0f})"
                )
            if args.null_only:
                print(f"{bundle} ({recipe}): null network, training steps {null_line}")
                continue
            real_run = harness_run(bundle, real, args.device, args.epochs, null=False)
            ceiling = ceiling_run(bundle, real, args.device, args.steps)
            harness_extra, meta_extra, meta_batch = metatensor_cost(real_run["trainer"], real_run["network"], real_run["batch"], args.device)
            blocked = real_run["checkpoint_blocked_s"]
            with tempfile.TemporaryDirectory() as tmp:
                size = ConfigParser.load_config_file(str(ROOT / "bundles" / bundle / "configs" / "train.json")).get(
                    "image_size", 256
                )
                size = int(overrides.get("image_size", size))
                metrics = metric_ms(size)
                startup = None if args.skip_startup else (
                    start_to_first_step(bundle, overrides, Path(tmp)), start_to_first_step(bundle, overrides, Path(tmp))
                )[1]
                startup_line = "did not reach a first step (see the command's output)" if startup is None else f"{startup:9.1f} s"
            print(f"\n{bundle} ({recipe} recipe{', ' + json.dumps(overrides) if overrides else ''})")
            print(f"  null network, training steps : {null_line}")
            print(f"  harness, whole epochs        : {real_run['epoch_images_per_s']:9.1f} img/s"
                  f"  (training steps alone {real_run['step_images_per_s']:.1f})")
            print(f"  plain loop, batches on device: {ceiling:9.1f} img/s   ratio harness/plain "
                  f"{real_run['epoch_images_per_s'] / ceiling:.2f} (steps alone {real_run['step_images_per_s'] / ceiling:.2f})")
            print(f"  harness batch - plain tensor : {harness_extra:+9.2f} ms per forward+backward (64x64, batch {meta_batch}); "
                  f"a MetaTensor batch costs {meta_extra:+.2f} ms")
            if real_run["gpu_utilisation"] is not None:
                print(f"  GPU utilisation (nvidia-smi) : {real_run['gpu_utilisation']:9.0f} % over the harness run")
            if blocked:
                later = statistics.median(blocked[1:]) if len(blocked) > 1 else blocked[0]
                print(f"  trainer blocked by checkpoint: {later:9.3f} s per write (first, allocating: {blocked[0]:.3f} s)")
            print(f"  validation metrics at {size}^2 : {metrics['lesion-like']:9.2f} ms/image lesion-like, "
                  f"{metrics['noisy']:.2f} noisy (post-processing + Dice/HD95 table); pixel ROC (evaluation) "
                  f"+{metrics['lesion-like roc']:.2f} ms/image")
            if not args.skip_startup:
                print(f"  start -> first training step : {startup_line}")


if __name__ == "__main__":
    main()
