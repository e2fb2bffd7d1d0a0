"""The shared harness on real MONAI engines and real torch training steps (no bundle CLI here), mixed
precision included (bfloat16 autocast on CPU through the inferer)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.handlers import ValidationHandler
from monai.inferers import SimpleInferer
from monai.transforms import Compose, Lambda, RandFlipd

from breastseg.networks import build_network
from breastseg.networks.losses import dice_loss
from breastseg.workflows.engine.checkpoints import (
    BEST_MODEL_FILE,
    LAST_CHECKPOINT_FILE,
    EpochCheckpointer,
    ResumeFromCheckpoint,
)
from breastseg.workflows.engine.datasets import SampleCacheDataset, build_loader
from breastseg.workflows.engine.harness import (
    EarlyStopping,
    build_evaluator,
    build_lr_scheduler,
    build_trainer,
    lr_schedule_handler,
    seed_everything,
)
from breastseg.workflows.engine.postprocessing import binary_postprocessing
from breastseg.workflows.engine.precision import AutocastInferer, resolve_precision
from breastseg.workflows.evaluation.evaluate import key_metric

torch.set_num_threads(1)


def _blob_batchdata(n: int = 8, size: int = 16) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        label = torch.zeros(1, size, size)
        r, c = torch.randint(3, size - 7, (2,), generator=generator).tolist()
        label[:, r : r + 5, c : c + 5] = 1
        image = label * 0.8 + 0.2 * torch.rand(1, size, size, generator=generator)
        items.append({"image": image, "label": label, "case_id": f"case{len(items)}"})
    return items


class _TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _engines(tmp_path: Path, max_epochs: int, loss_function=None, schedule: str = "exponential", extra_train=()):
    data = _blob_batchdata()
    net = _TinyNet()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    scheduler = build_lr_scheduler(schedule, optimizer, gamma=0.5, patience=1)
    loader = DataLoader(Dataset(data), batch_size=4, shuffle=False)
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(data), batch_size=4), net, key_metric("val_mean_dice"), postprocessing=binary_postprocessing()
    )
    from monai.handlers import ValidationHandler

    handlers = [
        *extra_train,
        lr_schedule_handler(scheduler, evaluator, "val_mean_dice"),
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        EpochCheckpointer(tmp_path, net, optimizer, scheduler, evaluator),
    ]
    loss = loss_function or torch.nn.BCEWithLogitsLoss()
    trainer = build_trainer("cpu", max_epochs, loader, net, optimizer, loss, train_handlers=handlers)
    return trainer, evaluator, net, optimizer, scheduler


def test_training_writes_best_and_last_checkpoints(tmp_path):
    trainer, evaluator, net, optimizer, _ = _engines(tmp_path, max_epochs=3)
    trainer.run()
    assert trainer.state.epoch == 3
    last = torch.load(tmp_path / LAST_CHECKPOINT_FILE, weights_only=True)
    assert last["trainer"]["iteration"] == 3 * 2  # ignite keeps the iteration (2 batches an epoch)
    assert set(last) >= {"network", "optimizer", "lr_scheduler", "trainer", "best_metric", "best_metric_epoch"}
    best = torch.load(tmp_path / BEST_MODEL_FILE, weights_only=True)
    assert set(best) == set(net.state_dict())
    assert last["best_metric"] == pytest.approx(evaluator.state.best_metric)
    # the exponential schedule stepped once per epoch
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)


def test_checkpoint_interval_writes_every_nth_epoch_and_the_last(tmp_path):
    net = _TinyNet()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    written: list[int] = []

    def record(engine) -> None:
        checkpointer.writer.wait()  # files are written in the background
        path = tmp_path / LAST_CHECKPOINT_FILE
        if path.exists():
            written.append(torch.load(path, weights_only=True)["trainer"]["iteration"] // 2)  # 2 batches an epoch

    checkpointer = EpochCheckpointer(tmp_path, net, optimizer, interval=2)
    trainer = build_trainer(
        "cpu", 5, DataLoader(Dataset(_blob_batchdata()), batch_size=4), net, optimizer, torch.nn.BCEWithLogitsLoss(),
        train_handlers=[checkpointer],
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, record)
    trainer.add_event_handler(Events.COMPLETED, record)
    trainer.run()
    assert written == [2, 2, 4, 4, 5]  # none after epoch 1; then epochs 2 and 4; epoch 5 when the run ends
    with pytest.raises(ValueError, match="at least 1"):
        EpochCheckpointer(tmp_path, net, optimizer, interval=0)


def test_resume_continues_after_the_saved_epoch(tmp_path):
    trainer, evaluator, *_ = _engines(tmp_path, max_epochs=2)
    trainer.run()
    saved_best = evaluator.state.best_metric
    trainer2, evaluator2, net2, optimizer2, scheduler2 = _engines(tmp_path, max_epochs=4)
    epochs_run = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs_run.append(engine.state.epoch))
    ResumeFromCheckpoint(tmp_path / LAST_CHECKPOINT_FILE, net2, optimizer2, scheduler2, evaluator2).attach(trainer2)
    trainer2.run()
    assert epochs_run == [3, 4]
    assert evaluator2.state.best_metric >= saved_best
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)


def test_resume_without_checkpoint_names_the_file(tmp_path):
    trainer, evaluator, net, optimizer, scheduler = _engines(tmp_path, max_epochs=1)
    ResumeFromCheckpoint(tmp_path / "missing.pt", net, optimizer, scheduler, evaluator).attach(trainer)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        trainer.run()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}
    bce = torch.nn.BCEWithLogitsLoss()

    def loss_turning_nan(pred, target):
        calls["n"] += 1
        value = bce(pred, target)
        return value * float("nan") if calls["n"] > 2 else value  # 2 iterations = epoch 1

    trainer, *_ = _engines(tmp_path, max_epochs=3, loss_function=loss_turning_nan)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        trainer.run()
    last = torch.load(tmp_path / LAST_CHECKPOINT_FILE, weights_only=True)
    assert last["trainer"]["iteration"] == 2  # epoch 1 only
    assert all(torch.isfinite(v).all() for v in last["network"].values())


def test_early_stopping_stops_a_run_that_does_not_improve(tmp_path):
    trainer, evaluator, *_ = _engines(tmp_path, max_epochs=30, schedule="none")
    # a learning rate of 0 cannot improve the key metric after the first validation
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0
    EarlyStopping(patience=2, evaluator=evaluator, key_metric="val_mean_dice").attach(trainer)
    trainer.run()
    assert trainer.state.epoch == 3


def test_plateau_schedule_steps_on_validation(tmp_path):
    trainer, evaluator, net, optimizer, scheduler = _engines(tmp_path, max_epochs=6, schedule="plateau")
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    trainer.run()
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler.last_epoch == 6  # stepped once per validation, on the key metric


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        build_lr_scheduler("cosine", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1))


def test_seed_does_not_turn_cudnn_benchmark_off():
    torch.backends.cudnn.benchmark = True
    seed_everything(3)
    assert torch.backends.cudnn.benchmark is True
    first = torch.rand(3)
    seed_everything(3)
    assert torch.equal(first, torch.rand(3))
    seed_everything(3, deterministic=True)
    assert torch.backends.cudnn.benchmark is False
    torch.backends.cudnn.benchmark = False


def test_sample_cache_dataset_indexes_every_lesion_sample():
    def split_into_lesions(item):
        return [dict(item, lesion_index=k) for k in range(item["lesions"])]

    chain = Compose([Lambda(split_into_lesions), RandFlipd(keys="image", prob=0.5)])
    data = [{"image": torch.zeros(1, 4, 4), "lesions": n} for n in (1, 3, 2)]
    dataset = SampleCacheDataset(data, chain, cache="memory")
    assert len(dataset) == 6
    assert [dataset[i]["lesion_index"] for i in range(6)] == [0, 0, 1, 2, 0, 1]


def test_trainer_refuses_zero_epochs():
    net = _TinyNet()
    with pytest.raises(ValueError, match="max_epochs"):
        build_trainer("cpu", 0, [], net, torch.optim.SGD(net.parameters(), lr=0.1), torch.nn.MSELoss())


def test_key_metric_is_finite_on_blobs(tmp_path):
    trainer, evaluator, *_ = _engines(tmp_path, max_epochs=1)
    trainer.run()
    assert math.isfinite(evaluator.state.metrics["val_mean_dice"])


def test_deep_supervision_heads_train_and_final_head_is_validated(tmp_path):
    from breastseg.networks import build_network
    from breastseg.networks.losses import dice_loss

    net = build_network("unetplusplus", features=(4, 4, 4, 4, 4), norm="batch", dropout=0.0, deep_supervision=True)
    net.train()
    assert isinstance(net(torch.zeros(2, 1, 16, 16)), list)  # training: the list of heads reaches the loss
    data = _blob_batchdata()
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    evaluator = build_evaluator(
        "cpu", DataLoader(Dataset(data), batch_size=4), net, key_metric("val_mean_dice"), postprocessing=binary_postprocessing()
    )
    from monai.handlers import ValidationHandler

    trainer = build_trainer(
        "cpu", 2, DataLoader(Dataset(data), batch_size=4), net, optimizer, dice_loss(),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True)],
    )
    trainer.run()
    assert math.isfinite(trainer.state.metrics["train_epoch_loss"])
    assert evaluator.state.output["pred"].shape == (4, 1, 16, 16)  # eval(): one tensor, the final head
    assert math.isfinite(evaluator.state.metrics["val_mean_dice"])


def test_iterating_a_fixed_order_loader_leaves_the_training_random_stream_alone():
    validation = build_loader(Dataset(_blob_batchdata()), batch_size=4, shuffle=False)
    state = torch.get_rng_state()
    for _ in range(2):
        list(validation)
    assert torch.equal(torch.get_rng_state(), state)  # so val_interval cannot change the training shuffles
    training = build_loader(Dataset(list(range(8))), batch_size=8, shuffle=True)
    torch.manual_seed(1)
    first = next(iter(training))
    torch.manual_seed(1)
    assert torch.equal(next(iter(training)), first)  # shuffling still follows the global seed


def test_validation_interval_does_not_change_the_trained_weights():
    from monai.handlers import ValidationHandler

    def train(val_interval: int) -> list[torch.Tensor]:
        seed_everything(0)
        net = _TinyNet()
        data = _blob_batchdata()
        augment = Compose([RandFlipd(["image", "label"], prob=0.5, spatial_axis=0)])
        evaluator = build_evaluator(
            "cpu", build_loader(Dataset(data), 4, shuffle=False), net, key_metric("val_mean_dice"),
            postprocessing=binary_postprocessing(),
        )
        trainer = build_trainer(
            "cpu", 4, build_loader(Dataset(data, transform=augment), 2, shuffle=True), net,
            torch.optim.Adam(net.parameters(), 1e-2), torch.nn.BCEWithLogitsLoss(),
            train_handlers=[ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True)],
        )
        trainer.run()
        return [p.detach().clone() for p in net.parameters()]

    for every_epoch, every_other in zip(train(1), train(2)):
        torch.testing.assert_close(every_epoch, every_other, rtol=0, atol=0)


def _mixed_precision_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("unetplusplus", features=(4, 4, 4, 4, 4), norm="batch", dropout=0.0, deep_supervision=True)


def test_cpu_default_is_full_precision_and_leaves_the_network_alone():
    net, inferer = _mixed_precision_net(), SimpleInferer()
    amp, resolved = resolve_precision("cpu", None, inferer, net)
    assert amp is False and resolved is inferer
    assert all(p.is_contiguous() for p in net.parameters())


def test_cuda_default_keeps_monai_amp():
    net, inferer = _mixed_precision_net(), SimpleInferer()
    assert resolve_precision("cuda", None, inferer, net) == (True, inferer)
    assert resolve_precision("cuda", False, inferer, net) == (False, inferer)


def test_cpu_amp_autocasts_through_the_inferer_with_channels_last_weights():
    net, inferer = _mixed_precision_net(), SimpleInferer()
    amp, resolved = resolve_precision("cpu", True, inferer, net)
    assert amp is False  # MONAI's own AMP is CUDA's; CPU autocast is the inferer's
    assert isinstance(resolved, AutocastInferer) and resolved.dtype == torch.bfloat16
    conv_weights = [p for p in net.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_autocast_outputs_are_float32_and_close_to_full_precision():
    net = _mixed_precision_net().eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        reference = net(x)
        mixed = AutocastInferer(SimpleInferer())(x, net)
    assert mixed.dtype == torch.float32 and mixed.is_contiguous()
    assert not torch.equal(mixed, reference)  # bfloat16 really ran
    torch.testing.assert_close(mixed, reference, atol=0.05, rtol=0.05)


def test_autocast_casts_every_deep_supervision_head():
    net = _mixed_precision_net().train()
    heads = AutocastInferer(SimpleInferer())(torch.rand(2, 1, 16, 16), net)
    assert isinstance(heads, list) and len(heads) > 1
    assert all(head.dtype == torch.float32 for head in heads)


def test_cpu_amp_trains_and_validates_with_real_steps():
    net = _mixed_precision_net()
    before = [p.detach().clone() for p in net.parameters()]
    data = _blob_batchdata()
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
