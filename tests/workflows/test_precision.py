"""Mixed precision in the harness: bfloat16 autocast on CPU through the inferer, real training steps."""

from __future__ import annotations

import math

import torch
from monai.data import DataLoader, Dataset
from monai.handlers import ValidationHandler
from monai.inferers import SimpleInferer

from breastseg.networks import build_network
from breastseg.networks.losses import dice_loss
from breastseg.workflows.evaluation import binary_postprocessing, key_metric
from breastseg.workflows.harness import build_evaluator, build_trainer
from breastseg.workflows.precision import AutocastInferer, resolve_precision

torch.set_num_threads(1)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("unetplusplus", features=(4, 4, 4, 4, 4), norm="batch", dropout=0.0, deep_supervision=True)


def _blobs(n: int = 8, size: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for index in range(n):
        label = torch.zeros(1, size, size)
        r, c = torch.randint(3, size - 7, (2,), generator=generator).tolist()
        label[:, r : r + 5, c : c + 5] = 1
        items.append({"image": label * 0.8 + 0.2 * torch.rand(1, size, size, generator=generator), "label": label})
    return items


def test_cpu_default_is_full_precision_and_leaves_the_network_alone():
    net, inferer = _net(), SimpleInferer()
    amp, resolved = resolve_precision("cpu", None, inferer, net)
    assert amp is False and resolved is inferer
    assert all(p.is_contiguous() for p in net.parameters())


def test_cuda_default_keeps_monai_amp():
    net, inferer = _net(), SimpleInferer()
    assert resolve_precision("cuda", None, inferer, net) == (True, inferer)
    assert resolve_precision("cuda", False, inferer, net) == (False, inferer)


def test_cpu_amp_autocasts_through_the_inferer_with_channels_last_weights():
    net, inferer = _net(), SimpleInferer()
    amp, resolved = resolve_precision("cpu", True, inferer, net)
    assert amp is False  # MONAI's own AMP is CUDA's; CPU autocast is the inferer's
    assert isinstance(resolved, AutocastInferer) and resolved.dtype == torch.bfloat16
    conv_weights = [p for p in net.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_autocast_outputs_are_float32_and_close_to_full_precision():
    net = _net().eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        reference = net(x)
        mixed = AutocastInferer(SimpleInferer())(x, net)
    assert mixed.dtype == torch.float32 and mixed.is_contiguous()
    assert not torch.equal(mixed, reference)  # bfloat16 really ran
    torch.testing.assert_close(mixed, reference, atol=0.05, rtol=0.05)


def test_autocast_casts_every_deep_supervision_head():
    net = _net().train()
    heads = AutocastInferer(SimpleInferer())(torch.rand(2, 1, 16, 16), net)
    assert isinstance(heads, list) and len(heads) > 1
    assert all(head.dtype == torch.float32 for head in heads)


def test_cpu_amp_trains_and_validates_with_real_steps():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    data = _blobs()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(data), batch_size=4), net, key_metric("val_mean_dice"),
        postprocessing=binary_postprocessing(), amp=True,
    )
    trainer = build_trainer(
        "cpu", 2, DataLoader(Dataset(data), batch_size=4), net, optimizer, dice_loss(), amp=True,
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    trainer.run()
    assert isinstance(trainer.inferer, AutocastInferer) and isinstance(evaluator.inferer, AutocastInferer)
    assert math.isfinite(trainer.state.metrics["train_epoch_loss"])
    assert math.isfinite(evaluator.state.metrics["val_mean_dice"])
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay float32
    assert any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))
