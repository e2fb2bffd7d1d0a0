"""Harness overhead: the same network, data and batches through the shared harness and a plain loop.

Run: ``python benchmarks/harness_overhead.py [--epochs 3] [--size 64] [--threads 1]``

Both train UNet++ (the default bundle's network) with Adam and the Dice loss on the same cached
samples (random flips applied per sample each epoch, as the bundles do). The harness run is
:func:`breastseg.workflows.engine.harness.build_trainer` with the handlers every bundle attaches (loss guard,
epoch loss, log lines, last-epoch checkpoint); the reference is a bare PyTorch loop over the same
``DataLoader``. The two alternate, epoch for epoch after a warm-up, and the ratio of the median epoch
times is printed, with the share of the harness's step time spent waiting for batches (measured on
ignite's ``GET_BATCH_STARTED``/``GET_BATCH_COMPLETED`` events).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from ignite.engine import Events
from monai.transforms import Compose, RandFlipd

from breastseg.networks import build_network
from breastseg.networks.losses import dice_loss
from breastseg.workflows.engine.checkpoints import EpochCheckpointer
from breastseg.workflows.engine.datasets import SampleCacheDataset, build_loader
from breastseg.workflows.engine.harness import build_trainer, progress_handlers


def make_samples(count: int, size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(count):
        label = torch.zeros(1, size, size)
        r, c = torch.randint(size // 4, size // 2, (2,), generator=generator).tolist()
        label[:, r : r + size // 4, c : c + size // 4] = 1
        image = 0.3 * label + torch.rand(1, size, size, generator=generator)
        samples.append({"image": image, "label": label, "case_id": str(index)})
    return samples


class BatchWait:
    """Seconds spent fetching batches (ignite's GET_BATCH events)."""

    def __init__(self) -> None:
        self.total, self._start = 0.0, 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self.start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self.stop)

    def start(self, engine) -> None:
        self._start = time.perf_counter()

    def stop(self, engine) -> None:
        self.total += time.perf_counter() - self._start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    chain = Compose([RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1)])
    dataset = SampleCacheDataset(make_samples(args.samples, args.size), chain)
    loader = build_loader(dataset, args.batch, shuffle=True)
    torch.manual_seed(0)
    initial = build_network("unetplusplus", norm="batch", dropout=0.0).state_dict()

    def fresh():
        net = build_network("unetplusplus", norm="batch", dropout=0.0)
        net.load_state_dict(initial)
        return net, torch.optim.Adam(net.parameters(), 1e-3), dice_loss()

    plain_net, plain_opt, plain_loss = fresh()

    def plain_epoch() -> float:
        start = time.perf_counter()
        plain_net.train()
        for batch in loader:
            plain_opt.zero_grad(set_to_none=True)
            loss = plain_loss(plain_net(batch["image"]), batch["label"])
            loss.backward()
            plain_opt.step()
        return time.perf_counter() - start

    net, opt, loss = fresh()
    wait = BatchWait()
    with tempfile.TemporaryDirectory() as ckpt_dir:
        handlers = [*progress_handlers("trainer", terminal=False), EpochCheckpointer(ckpt_dir, net, opt), wait]
        trainer = build_trainer("cpu", 1 + args.epochs, loader, net, opt, loss, train_handlers=handlers)
        harness_times: list[float] = []
        plain_times: list[float] = []
        epoch_start = {}
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epoch_start.update(t=time.perf_counter(), w=wait.total))
        waits: list[float] = []

        def after_epoch(engine) -> None:
            harness_times.append(time.perf_counter() - epoch_start["t"])
            waits.append(wait.total - epoch_start["w"])
            plain_times.append(plain_epoch())  # alternate: one plain epoch after each harness epoch

        trainer.add_event_handler(Events.EPOCH_COMPLETED, after_epoch)
        trainer.run()
    harness_med = statistics.median(harness_times[1:])
    plain_med = statistics.median(plain_times[1:])
    share = statistics.median(w / t for w, t in zip(waits[1:], harness_times[1:]))
    print(f"UNet++ {args.size}x{args.size}, batch {args.batch}, {args.samples} samples, {args.threads} thread(s), "
          f"median of {args.epochs} epochs after a warm-up")
    print(f"plain PyTorch loop : {plain_med:8.3f} s/epoch")
    print(f"breastseg harness  : {harness_med:8.3f} s/epoch")
    print(f"ratio harness/plain: {harness_med / plain_med:8.3f}  (target <= 1.05)")
    print(f"data-loading share of harness step time: {100 * share:.2f} %  (target <= 5 %)")


if __name__ == "__main__":
    main()
