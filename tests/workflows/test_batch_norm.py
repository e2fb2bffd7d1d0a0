"""Batch-norm recalibration on whole training images, on a real MONAI evaluator."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset

from breastseg.workflows.engine.batch_norm import RecalibrateBatchNorm, evenly_spaced, recalibrate_batch_norm
from breastseg.workflows.engine.harness import build_evaluator
from breastseg.workflows.engine.postprocessing import binary_postprocessing
from breastseg.workflows.evaluation.evaluate import key_metric

torch.set_num_threads(1)


class _NormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1, momentum=0.3)
        self.head = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


def _images(offset: float, n: int = 4, size: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(int(offset))
    return [
        {"image": offset + torch.rand(1, size, size, generator=generator), "label": torch.zeros(1, size, size)}
        for _ in range(n)
    ]


def test_running_statistics_become_the_average_over_the_batches():
    net = _NormNet().eval()
    weights = [p.detach().clone() for p in net.parameters()]
    records = _images(5.0)
    seen = recalibrate_batch_norm(net, DataLoader(Dataset(records), batch_size=2))
    assert seen == 4
    pixels = torch.stack([r["image"] for r in records])
    assert float(net.norm.running_mean) == pytest.approx(float(pixels.mean()), abs=1e-5)
    batch_vars = [float(pixels[i : i + 2].var()) for i in (0, 2)]  # unbiased, as batch norm keeps it
    assert float(net.norm.running_var) == pytest.approx(sum(batch_vars) / 2, rel=1e-4)
    assert net.norm.momentum == 0.3 and not net.training  # restored
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights))


def test_evaluator_validates_with_statistics_of_the_training_images():
    net = _NormNet()
    training, validation = _images(5.0), _images(-3.0)
    handler = RecalibrateBatchNorm(Dataset(training), batch_size=2)
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(validation), batch_size=2), net, key_metric("val_mean_dice"),
        postprocessing=binary_postprocessing(), val_handlers=[handler],
    )
    evaluator.run()
    training_mean = float(torch.stack([r["image"] for r in training]).mean())
    assert float(net.norm.running_mean) == pytest.approx(training_mean, abs=1e-5)  # not the validation images'
    assert net.norm.num_batches_tracked == 2


def test_cached_items_with_keys_that_do_not_collate_recalibrate():
    """The crop recipes cache each image's lesion/background pixel indices (one length per image): only the
    images are batched for the recalibration."""
    net = _NormNet()
    training = _images(5.0)
    for count, item in enumerate(training, 1):
        item["label_fg_indices"] = torch.arange(count)
    handler = RecalibrateBatchNorm(Dataset(training), batch_size=2)
    evaluator = build_evaluator("cpu", DataLoader(Dataset(_images(-3.0)), batch_size=2), net, val_handlers=[handler])
    evaluator.run()
    assert float(net.norm.running_mean) == pytest.approx(float(torch.stack([r["image"] for r in training]).mean()), abs=1e-5)


def test_disabled_attaches_nothing_and_an_empty_training_split_is_refused():
    net = _NormNet()
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(_images(-3.0)), batch_size=2), net, key_metric("val_mean_dice"),
        postprocessing=binary_postprocessing(), val_handlers=[RecalibrateBatchNorm([], enabled=False)],
    )
    evaluator.run()
    assert float(net.norm.running_mean) == 0.0 and net.norm.num_batches_tracked == 0  # untouched
    with pytest.raises(ValueError, match="training split is empty"):
        RecalibrateBatchNorm([])


def test_max_images_takes_evenly_spaced_training_images():
    net = _NormNet()
    training = [{"image": torch.full((1, 4, 4), float(i)), "label": torch.zeros(1, 4, 4)} for i in range(7)]
    handler = RecalibrateBatchNorm(Dataset(training), batch_size=8, max_images=3)
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(_images(-3.0)), batch_size=2), net, key_metric("val_mean_dice"),
        postprocessing=binary_postprocessing(), val_handlers=[handler],
    )
    evaluator.run()
    assert float(net.norm.running_mean) == pytest.approx((0 + 3 + 6) / 3)  # images 0, 3 and 6 only
    assert len(RecalibrateBatchNorm(Dataset(training), max_images=20).loader.dataset) == 7
    with pytest.raises(ValueError, match="bn_recalibration_images must be at least 1"):
        RecalibrateBatchNorm(Dataset(training), max_images=0)


@pytest.mark.parametrize(
    ("length", "count", "expected"), [(7, 3, [0, 3, 6]), (5, 1, [0]), (3, 8, [0, 1, 2]), (10, 4, [0, 3, 6, 9])]
)
def test_evenly_spaced(length, count, expected):
    assert evenly_spaced(length, count) == expected
