"""What keeps a GPU fed, checked on CPU with real MONAI engines and real training steps: no value read back
from the device per step, plain tensors into the network, the same samples as with metadata, crop indices
found once, checkpoints written beside training (and never with NaN weights), loader workers per device,
a warm start from the disk cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
)
from PIL import Image

from breastseg.networks import AWLoss
from breastseg.transforms.chains import _lesion_balanced_crop
from breastseg.workflows.engine.checkpoint_writer import CheckpointWriter, remove_stale_temporaries
from breastseg.workflows.engine.checkpoints import BEST_MODEL_FILE, LAST_CHECKPOINT_FILE, EpochCheckpointer
from breastseg.workflows.engine.datasets import SampleCacheDataset, auto_num_workers, build_loader
from breastseg.workflows.engine.harness import build_trainer, progress_handlers
from breastseg.workflows.engine.loss_terms import LossTermsAverage

torch.set_num_threads(1)
KEYS = ("image", "label")


def _samples(n: int = 12, size: int = 24) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for index in range(n):
        label = torch.zeros(1, size, size)
        r, c = torch.randint(3, size - 9, (2,), generator=generator).tolist()
        label[:, r : r + 6, c : c + 6] = 1
        image = label * 0.7 + 0.3 * torch.rand(1, size, size, generator=generator)
        items.append({"image": MetaTensor(image), "label": MetaTensor(label), "case_id": f"case{index}"})
    return items


class _HostReadCounter(torch.Tensor):
    """A tensor that counts every read of its value by the host (``item``, ``float``, ``bool``, ``tolist``...).

    Operations on it return the same subclass, so everything computed from the network's output (loss, loss
    terms, running sums, the non-finite flags) is counted too.
    """

    reads = 0

    def _count(self) -> None:
        type(self).reads += 1

    def item(self):
        self._count()
        return super().item()

    def __float__(self):
        self._count()
        return super().__float__()

    def __int__(self):
        self._count()
        return super().__int__()

    def __bool__(self):
        self._count()
        return super().__bool__()

    def tolist(self):
        self._count()
        return super().tolist()

    def numpy(self, *args, **kwargs):
        self._count()
        return super().numpy(*args, **kwargs)


class _TwoHeadNet(torch.nn.Module):
    """Two output heads (deep supervision, as BReMS-Net's AW loss takes them), outputs counted."""

    head_names = ["coarse", "fine"]

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.heads = torch.nn.ModuleList([torch.nn.Conv2d(4, 1, 1), torch.nn.Conv2d(4, 1, 1)])
        self.seen_types: list[type] = []

    def forward(self, x: torch.Tensor):
        self.seen_types.append(type(x))
        features = torch.relu(self.body(x))
        return [head(features).as_subclass(_HostReadCounter) for head in self.heads]


def test_training_steps_read_nothing_from_the_device(tmp_path):
    """Loss, loss terms and the non-finite check are read at the end of the epoch, not at every step."""
    net = _TwoHeadNet()
    loss = AWLoss(head_names=net.head_names)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    dataset = SampleCacheDataset(_samples(), Compose([RandFlipd(KEYS, prob=0.5, spatial_axis=1)]), track_meta=False)
    loader = build_loader(dataset, batch_size=2, shuffle=True, device="cpu")  # 6 steps: no periodic log line
    handlers = [LossTermsAverage(loss), *progress_handlers("trainer", terminal=False), EpochCheckpointer(tmp_path, net, optimizer)]
    trainer = build_trainer("cpu", 1, loader, net, optimizer, loss, train_handlers=handlers)
    reads_per_step: list[int] = []
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: reads_per_step.append(_HostReadCounter.reads))

    def after_step(engine) -> None:
        reads_per_step[-1] = _HostReadCounter.reads - reads_per_step[-1]
        losses.append(engine.state.output["loss"].detach().as_subclass(torch.Tensor).item())  # not counted

    trainer.add_event_handler(Events.ITERATION_COMPLETED, after_step)  # last: after every harness handler
    _HostReadCounter.reads = 0
    trainer.run()
    assert len(reads_per_step) == 6
    assert reads_per_step == [0] * 6
    assert _HostReadCounter.reads > 0  # read once the epoch is over
    assert trainer.state.metrics["train_epoch_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert {"aw_weight_coarse", "aw_focal_fine"} <= set(trainer.state.metrics)
    assert net.seen_types and all(t is torch.Tensor for t in net.seen_types)  # plain tensors, never MetaTensor


def test_a_nan_loss_is_caught_at_the_end_of_its_epoch_before_any_checkpoint(tmp_path):
    net = _TwoHeadNet()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    calls = {"n": 0}

    def loss_nan_at_step_5(outputs, target):
        calls["n"] += 1
        value = torch.nn.functional.binary_cross_entropy_with_logits(outputs[0], target)
        return value * float("nan") if calls["n"] == 5 else value

    loader = build_loader(SampleCacheDataset(_samples(8), Compose([]), track_meta=False), batch_size=2, shuffle=False)
    trainer = build_trainer("cpu", 3, loader, net, optimizer, loss_nan_at_step_5, train_handlers=[EpochCheckpointer(tmp_path, net, optimizer)])
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, iteration 5"):
        trainer.run()
    last = torch.load(tmp_path / LAST_CHECKPOINT_FILE, weights_only=True)
    assert last["trainer"]["iteration"] == 4  # epoch 1 only


def test_nan_gradients_with_a_finite_loss_never_reach_a_checkpoint(tmp_path):
    """NaN gradients at the last step of epoch 2: its loss was finite, the update made the weights NaN. That
    state is not written (``--resume`` from it would fail forever); the run stops, epoch 1's file stays."""
    net = _TwoHeadNet()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    steps = {"n": 0}

    def poison(grad):
        return grad * float("nan") if steps["n"] == 8 else grad  # the last step of epoch 2 (4 steps an epoch)

    net.body.weight.register_hook(poison)
    loader = build_loader(SampleCacheDataset(_samples(8), Compose([]), track_meta=False), batch_size=2, shuffle=False)
    loss = AWLoss(head_names=net.head_names)
    checkpointer = EpochCheckpointer(tmp_path, net, optimizer)
    trainer = build_trainer("cpu", 4, loader, net, optimizer, loss, train_handlers=[checkpointer])
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: steps.__setitem__("n", e.state.iteration))
    with pytest.raises(FloatingPointError, match="training state is not finite"):
        trainer.run()
    last = torch.load(tmp_path / LAST_CHECKPOINT_FILE, weights_only=True)
    assert last["trainer"]["iteration"] == 4  # the state of epoch 1, the last finite one
    assert all(torch.isfinite(v).all() for v in last["network"].values())
    best = torch.load(tmp_path / BEST_MODEL_FILE, weights_only=True)
    assert all(torch.isfinite(v).all() for v in best.values())


def _chain() -> Compose:
    return Compose(
        [
            *_lesion_balanced_crop(KEYS, "image", "label", 12, 0.5, 0.0),
            RandRotate90d(KEYS, prob=0.5, max_k=3),
            RandFlipd(KEYS, prob=0.5, spatial_axis=0),
        ]
    )


def _drawn(dataset: SampleCacheDataset, seed: int, epochs: int = 3) -> list[dict]:
    """Every sample of ``epochs`` passes (a crop returns a list of one sample)."""
    dataset.random.set_random_state(seed)
    samples = [dataset[i] for _ in range(epochs) for i in range(len(dataset))]
    return [sample[0] if isinstance(sample, list) else sample for sample in samples]


def test_samples_without_metadata_are_the_samples_with_metadata(tmp_path):
    """Same draws, same pixels: only the bookkeeping goes (plain tensors, uint8 masks), and the cache is
    never written by the shallow-copied samples."""
    with_meta = SampleCacheDataset(_samples(), _chain(), track_meta=True)
    plain = SampleCacheDataset(_samples(), _chain(), track_meta=False)
    cached_before = [{k: v.clone() for k, v in item.items() if isinstance(v, torch.Tensor)} for item in plain.base._cache]
    for a, b in zip(_drawn(with_meta, 7), _drawn(plain, 7)):
        assert isinstance(a["image"], MetaTensor) and type(b["image"]) is torch.Tensor and type(b["label"]) is torch.Tensor
        assert b["label"].dtype == torch.uint8
        assert torch.equal(a["image"].as_tensor(), b["image"])
        assert torch.equal(a["label"].as_tensor(), b["label"].float())
        assert "label_fg_indices" not in b  # the cached crop indices stay in the cache
    for before, item in zip(cached_before, plain.base._cache):
        assert all(torch.equal(before[k], torch.as_tensor(item[k])) for k in before)


def test_crop_indices_found_once_give_monais_crops(tmp_path):
    """The cached lesion/background indices give the crops MONAI draws when it searches every sample."""
    searching = Compose([RandCropByPosNegLabeld(KEYS, "label", (12, 12), pos=0.5, neg=0.5, num_samples=1, image_key="image")])
    ours = SampleCacheDataset(_samples(), _chain().transforms[:3], track_meta=False)
    reference = SampleCacheDataset(_samples(), searching, track_meta=False)
    assert ours.deterministic.transforms  # the index search is in the cached head
    for a, b in zip(_drawn(ours, 3), _drawn(reference, 3)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_loader_workers_follow_the_device():
    dataset = SampleCacheDataset(_samples(4), Compose([]), track_meta=False)
    assert auto_num_workers("cpu") == 0
    assert build_loader(dataset, 2, True, num_workers=None, device="cpu").num_workers == 0
    cpus = len(os.sched_getaffinity(0))
    assert auto_num_workers("cuda") == max(0, min(8, cpus - 1))
    loader = build_loader(dataset, 2, True, num_workers=None, device="cuda")  # built, not iterated: no GPU here
    assert loader.num_workers == auto_num_workers("cuda") and loader.pin_memory
    assert loader.persistent_workers == (loader.num_workers > 0)
    assert build_loader(dataset, 2, True, num_workers=3, device="cpu").num_workers == 3  # an explicit value wins


def test_checkpoint_writer_snapshots_at_save_time(tmp_path):
    """The file holds the values of the moment ``save`` returned, whatever the trainer does after."""
    weights = torch.zeros(1000)
    writer = CheckpointWriter()
    writer.save({"w": weights}, tmp_path / "a.pt")
    weights += 1  # the next optimizer step, while the file is written
    writer.save({"w": weights}, tmp_path / "b.pt")
    weights += 1
    writer.wait()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.zeros(1000))
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["w"], torch.ones(1000))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    dead = tmp_path / f".{LAST_CHECKPOINT_FILE}.99999999.abc"  # no such process
    legacy = tmp_path / f".{LAST_CHECKPOINT_FILE}.k2j3h"  # from a version without the pid in the name
    alive = tmp_path / f".{LAST_CHECKPOINT_FILE}.{os.getppid()}.xyz"  # a running writer: kept
    other = tmp_path / ".something_else.99999999.abc"
    for path in (dead, legacy, alive, other):
        path.write_bytes(b"partial")
    removed = remove_stale_temporaries(tmp_path, (LAST_CHECKPOINT_FILE, BEST_MODEL_FILE))
    assert sorted(removed) == sorted([dead, legacy])
    assert alive.exists() and other.exists()


def test_a_run_removes_the_temporaries_of_a_killed_run(tmp_path):
    stale = tmp_path / f".{LAST_CHECKPOINT_FILE}.99999999.abc"
    stale.write_bytes(b"partial")
    net = _TwoHeadNet()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    loader = DataLoader(Dataset(_samples(4)), batch_size=2)
    trainer = build_trainer(
        "cpu", 1, loader, net, optimizer, AWLoss(head_names=net.head_names), train_handlers=[EpochCheckpointer(tmp_path, net, optimizer)]
    )
    trainer.run()
    assert not stale.exists()
    assert (tmp_path / LAST_CHECKPOINT_FILE).is_file()


class _CountedScale(MapTransform):
    """A deterministic step that counts its calls (and has a setting that changes its output)."""

    calls = 0

    def __init__(self, factor: float) -> None:
        super().__init__(("image",))
        self.factor = factor

    def __call__(self, data):
        type(self).calls += 1
        return {**data, "image": torch.as_tensor(np.load(data["image"])) * self.factor, "label": torch.zeros(1, 4, 4)}


def test_a_second_run_fills_its_memory_cache_from_the_disk_cache(tmp_path):
    """No preprocessing on a warm start; a file replaced on disk or another chain setting is preprocessed again."""
    records = []
    for index in range(3):
        path = tmp_path / f"image{index}.npy"
        np.save(path, np.full((1, 4, 4), index, dtype=np.float32))
        records.append({"image": str(path), "case_id": str(index)})
    cache_dir = tmp_path / "cache"

    def build(factor: float) -> SampleCacheDataset:
        return SampleCacheDataset(records, Compose([_CountedScale(factor)]), cache_dir=cache_dir, track_meta=False)

    _CountedScale.calls = 0
    first = build(2.0)
    assert _CountedScale.calls == 3
    second = build(2.0)
    assert _CountedScale.calls == 3  # warm: read from disk
    assert all(torch.equal(first[i]["image"], second[i]["image"]) for i in range(3))
    np.save(records[1]["image"], np.full((1, 4, 4), 9, dtype=np.float32))
    os.utime(records[1]["image"], ns=(1, 1))  # another content and time under the same name
    third = build(2.0)
    assert _CountedScale.calls == 4 and float(third[1]["image"].max()) == 18.0
    build(3.0)
    assert _CountedScale.calls == 7  # another setting: every record again


def test_training_steps_never_wait_for_the_tracking_store(tmp_path):
    """The loss every 10 steps waits in memory and reaches MLflow with the epoch's values (or after
    ``iteration_send_interval`` seconds), each with its own step."""
    from mlflow import MlflowClient

    from breastseg.workflows.tracking.runs import tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_tracker = tracker("trainer", uri, "feed", "feed-run", unsent_dir=tmp_path / "unsent")
    net = _TwoHeadNet()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    loader = build_loader(SampleCacheDataset(_samples(24), Compose([]), track_meta=False), batch_size=1, shuffle=False)
    trainer = build_trainer("cpu", 1, loader, net, optimizer, AWLoss(head_names=net.head_names), train_handlers=[run_tracker])
    client = MlflowClient(uri)
    seen_during_epoch = []

    def look(engine) -> None:
        run = client.search_runs([client.get_experiment_by_name("feed").experiment_id])[0]
        seen_during_epoch.append(len(client.get_metric_history(run.info.run_id, "train_loss")))

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=22), look)
    trainer.run()
    assert seen_during_epoch == [0]  # steps 10 and 20 were logged, not yet sent
    run = client.search_runs([client.get_experiment_by_name("feed").experiment_id])[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [10, 20]
    assert client.get_metric_history(run.info.run_id, "train_epoch_loss")[0].step == 1


_LAUNCH_WITH_METADATA = """
import sys, warnings
import numpy as np, torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Lambdad
from breastseg.workflows.engine.datasets import SampleCacheDataset

calls = []
def counted(image):
    calls.append(1)
    return image

records = [{"image": path, "case_id": str(index)} for index, path in enumerate(sys.argv[2:])]
chain = Compose([LoadImaged("image", reader="PILReader", image_only=False), EnsureChannelFirstd("image"), Lambdad("image", counted)])
with warnings.catch_warnings():
    warnings.simplefilter("error")  # "Corrupt cache file detected" must not appear
    dataset = SampleCacheDataset(records, chain, cache_dir=sys.argv[1], track_meta=True)
image = dataset[1]["image"]
assert isinstance(image, MetaTensor) and image.meta["filename_or_obj"] == records[1]["image"], image.meta
print(len(calls), float(image.sum()))
"""


def test_items_with_metadata_are_read_back_from_the_disk_cache(tmp_path):
    """Validation, evaluation and detector items keep MONAI metadata; their disk cache must load weights-only
    (stock PersistentDataset took such files for corrupt, deleted them and preprocessed again at every launch).
    Each launch is a new process, as each training command is."""
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"image{index}.png")
        Image.fromarray(np.full((6, 5), 40 * index, dtype=np.uint8)).save(paths[-1])
    launch = [sys.executable, "-c", _LAUNCH_WITH_METADATA, str(tmp_path / "cache"), *map(str, paths)]
    first = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split() == ["2", str(float(40 * 30))]  # both images preprocessed
    second = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split() == ["0", str(float(40 * 30))]  # read back: nothing preprocessed


