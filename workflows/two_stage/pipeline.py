"""The two-stage pipeline of paper 002 (Sect. 3): full mammogram -> mass boxes -> 256x256 patches ->
segmentation -> probabilities pasted back at full resolution.

The pieces are MONAI-style components that a bundle config wires together:

- box finders return ``(K, 5)`` detections ``(x0, y0, x1, y1, score)`` in the mammogram's own pixels:
  :class:`MultiScaleFusionBoxes` (the detector at the MSF views, eq. 1 with lambda; "two-stage with MSF"),
  :class:`SingleScaleBoxes` (the detector at one view; "two-stage w/o MSF") and :class:`WholeImageBox`
  (the whole image as one box: "one-stage", the segmenter on the whole down-sampled mammogram);
- :func:`patch_boxes` turns detections into the square patch boxes the segmenter was trained on;
- :class:`PatchPasteInferer` (a MONAI :class:`~monai.inferers.Inferer`) runs a finder, cuts the patches with the
  segmenter's own chain, segments them and pastes the probabilities back; an evaluator built by the harness
  then scores full-image masks like any other prediction.

A mammogram where nothing survives the detector (or lambda) gets an all-zero probability map: the case is a
miss, scored by the metrics' empty-mask rule, and :attr:`PatchPasteInferer.last_results` says that nothing
was detected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import Compose, RepeatChannel, RepeatChanneld, ScaleIntensity

from breastseg.transforms import LoadBreastImaged, LoadLesionMaskd, paste_back, square_box
from breastseg.transforms.chains import two_stage_msf
from breastseg.workflows.engine.stages import stage_parser
from breastseg.workflows.two_stage.detection.model import load_detector
from breastseg.workflows.two_stage.detection.msf import PAPER_VIEW_SIZES, MultiScaleFusion, detect_at_scales
from breastseg.workflows.two_stage.detection.training import read_anchors

__all__ = [
    "segmenter_chain",
    "full_image_chain",
    "detector_input",
    "trained_detector",
    "patch_boxes",
    "WholeImageBox",
    "SingleScaleBoxes",
    "MultiScaleFusionBoxes",
    "PipelineResult",
    "PatchPasteInferer",
]


def segmenter_chain(
    patch_size: int = 256,
    in_channels: int = 3,
    train: bool = False,
    roi_margin: float = 0.25,
    with_label: bool = True,
    load: bool = True,
    reader: str = "pydicom",
) -> Compose:
    """The segmentation stage's chain: :func:`~breastseg.transforms.chains.two_stage_msf` (a square patch per
    mass, resized to ``patch_size``, histogram equalisation), then the grey channel repeated to ``in_channels``
    (v19U-Net++ takes 3 channels, as the paper's ImageNet encoder).

    ``load=False`` drops the file loader: the chain then cuts patches from an image already in memory, at the
    boxes under ``"roi_boxes"`` (:class:`PatchPasteInferer`), so inference patches are made exactly as the
    training patches were.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    chain = two_stage_msf(patch_size=patch_size, train=train, roi_margin=roi_margin, with_label=with_label, reader=reader)
    steps = [step for step in chain.transforms if load or not isinstance(step, LoadBreastImaged)]
    if in_channels > 1:
        steps.append(RepeatChanneld("image", repeats=in_channels))
    return Compose(steps)


def full_image_chain(with_label: bool = True, reader: str = "pydicom") -> Compose:
    """The mammogram (and its lesion mask) at full resolution, as the pipeline and its metrics see it."""
    steps: list[Any] = [LoadBreastImaged("image", reader=reader)]
    if with_label:
        steps.append(LoadLesionMaskd("label", image_key="image"))
    return Compose(steps)


def detector_input(in_channels: int = 3) -> Compose:
    """The detector's view of a full-resolution image: intensities min-max scaled to [0, 1], the grey channel
    repeated to ``in_channels``."""
    steps: list[Any] = [ScaleIntensity(minv=0.0, maxv=1.0)]
    if in_channels > 1:
        steps.append(RepeatChannel(repeats=in_channels))
    return Compose(steps)


def trained_detector(
    config_file: str | os.PathLike,
    shared: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """The detector trained by the bundle's ``detector.json`` (its best ``model.pt``), built with the anchors that
    training wrote and the configured channels, classes and width; a checkpoint whose anchors or class count
    differ refuses to load (:func:`~breastseg.workflows.two_stage.detection.model.load_detector`).

    Args:
        config_file: the detector stage config.
        shared, overrides: values set on it first (:func:`~breastseg.workflows.engine.stages.stage_parser`), e.g. the
            ``ckpt_dir`` and ``output_dir`` the detector was trained with.
        device: where the detector runs.
    """
    parser = stage_parser(config_file, shared, overrides)
    value = parser.get_parsed_content
    return load_detector(
        os.path.join(value("detector#ckpt_dir"), "model.pt"),
        read_anchors(value("detector#anchors_file")),
        in_channels=value("detector#in_channels"),
        num_classes=value("detector#num_classes"),
        base_channels=value("detector#base_channels"),
        map_location=device,
    ).to(device)


def patch_boxes(
    detections: np.ndarray | Sequence[Sequence[float]],
    image_size: Sequence[int],
    margin: float = 0.25,
    min_size: int = 32,
) -> list[list[int]]:
    """Square patch boxes ``[row_start, row_end, col_start, col_end]`` around detections ``(x0, y0, x1, y1, ...)``.

    The rule is the training chain's (:func:`~breastseg.transforms.spatial.array.square_box`): the detection,
    clipped to the image, is centred in a square of side ``max(h, w) * (1 + 2 * margin)`` (at least ``min_size``),
    shifted to lie inside the image and cut where the image is smaller. Detections with no pixel inside the image
    are dropped.

    Raises:
        ValueError: for detections that are not ``(K, >= 4)`` or a negative margin.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    array = np.asarray(detections, dtype=np.float64)
    if array.size == 0:
        return []
    if array.ndim != 2 or array.shape[1] < 4:
        raise ValueError(f"detections must be (K, >= 4) rows of (x0, y0, x1, y1, ...), got shape {array.shape}")
    rows, cols = (int(v) for v in image_size[-2:])
    boxes = []
    for x0, y0, x1, y1 in array[:, :4]:
        col0, row0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        col1, row1 = min(int(np.ceil(x1)), cols), min(int(np.ceil(y1)), rows)
        if col1 > col0 and row1 > row0:
            boxes.append(list(square_box((row0, row1, col0, col1), (rows, cols), margin, min_size)))
    return boxes


def _input_channels(network: torch.nn.Module) -> int:
    """Input channels of a network whose first parameter is its first convolution's weight."""
    first = next(network.parameters(), None)
    if first is None or first.ndim < 2:
        raise ValueError(f"cannot tell the input channels of {type(network).__name__}; pass preprocess explicitly")
    return int(first.shape[1])


class WholeImageBox:
    """The whole mammogram as one box of score 1: the "one-stage" setup of Table 5 (the segmenter sees the
    whole image down-sampled to its patch size)."""

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        rows, cols = image.shape[-2:]
        return np.array([[0.0, 0.0, float(cols), float(rows), 1.0]])


class _DetectorBoxes:
    def __init__(
        self,
        detector: torch.nn.Module,
        view_sizes: Sequence[Sequence[int]],
        conf_thresholds: float | Sequence[float],
        nms_thresholds: float | Sequence[float],
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.detector = detector
        self.view_sizes = [tuple(int(v) for v in size) for size in view_sizes]
        stride = getattr(detector, "size_divisor", 1)
        wrong = [size for size in self.view_sizes if len(size) != 2 or min(size) <= 0 or any(v % stride for v in size)]
        if wrong:  # found before any image is read, not at the first detection
            raise ValueError(f"detector view sizes {wrong} must be positive (H, W) multiples of {stride}")
        self.conf_thresholds = conf_thresholds
        self.nms_thresholds = nms_thresholds
        self.preprocess = preprocess or detector_input(_input_channels(detector))

    def detect(self, image: torch.Tensor) -> list[np.ndarray]:
        view = self.preprocess(image)
        view = view.as_tensor() if hasattr(view, "as_tensor") else torch.as_tensor(view)
        return detect_at_scales(self.detector, view, self.view_sizes, self.conf_thresholds, self.nms_thresholds)


class SingleScaleBoxes(_DetectorBoxes):
    """The detector's boxes at one view (after its confidence threshold and NMS): "two-stage w/o MSF".

    Args:
        detector: a YOLOv3 (its ``in_channels`` sets the default ``preprocess``).
        view_size: the detector input ``(H, W)`` the mammogram is resized to (a multiple of 32).
        conf_threshold, nms_threshold: as :func:`~breastseg.workflows.two_stage.detection.msf.detect_at_scales`.
        preprocess: full-resolution image -> detector input (default :func:`detector_input`).
    """

    def __init__(
        self,
        detector: torch.nn.Module,
        view_size: Sequence[int] = PAPER_VIEW_SIZES[2],
        conf_threshold: float = 0.25,
        nms_threshold: float = 0.45,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(detector, [view_size], conf_threshold, nms_threshold, preprocess)

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        return self.detect(image)[0]


class MultiScaleFusionBoxes(_DetectorBoxes):
    """Boxes of the multi-scale fusion (paper 002 Sect. 3.2): the detector at every view, eq. 1, ``M_s >= lambda``,
    one box per connected component, scored by the component's highest ``M_s``.

    Args:
        detector: a YOLOv3.
        view_sizes: detector inputs ``(H, W)``; N in eq. 1 is their number (default: the paper's five).
        threshold: lambda (0.6 in the paper).
        conf_thresholds, nms_thresholds: one value or one per view.
        preprocess: full-resolution image -> detector input (default :func:`detector_input`).
    """

    def __init__(
        self,
        detector: torch.nn.Module,
        view_sizes: Sequence[Sequence[int]] = PAPER_VIEW_SIZES,
        threshold: float = 0.6,
        conf_thresholds: float | Sequence[float] = 0.25,
        nms_thresholds: float | Sequence[float] = 0.45,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(detector, view_sizes, conf_thresholds, nms_thresholds, preprocess)
        self.fusion = MultiScaleFusion(threshold)

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        return self.fusion(self.detect(image), tuple(image.shape[-2:])).detections


@dataclass(frozen=True)
class PipelineResult:
    """What the pipeline found in one mammogram.

    Attributes:
        detections: ``(K, 5)`` ``(x0, y0, x1, y1, score)`` from the box finder, full-resolution pixels.
        patch_boxes: the K' <= K square patch boxes ``[row_start, row_end, col_start, col_end]`` segmented.
    """

    detections: np.ndarray
    patch_boxes: list[list[int]]

    @property
    def detected(self) -> bool:
        """False when nothing was found (the mask is empty: a miss, not an error)."""
        return len(self.patch_boxes) > 0


class PatchPasteInferer(Inferer):
    """Full-image inference by patches: find boxes, segment a patch per box, paste the probabilities back.

    ``inferer(images, segmenter)`` takes a batch ``(B, C, H, W)`` of full-resolution mammograms (any size; the
    batch shares it, so evaluators use batch size 1) and returns ``(B, 1, H, W)`` probabilities: each patch's
    sigmoid output is resized to its box (bilinear, the inverse of the patch resize) and placed there, the
    maximum where boxes overlap, zero elsewhere. The post-processing therefore thresholds without a sigmoid.

    Args:
        box_finder: image ``(C, H, W)`` -> ``(K, 5)`` detections (:class:`MultiScaleFusionBoxes`,
            :class:`SingleScaleBoxes`, :class:`WholeImageBox`).
        patch_chain: :func:`segmenter_chain` with ``with_label=False, load=False``: cuts and prepares the
            patches at ``"roi_boxes"``.
        margin, min_size: patch boxes around detections (:func:`patch_boxes`, as in training).
        batch_size: patches per segmenter call.

    After each call, :attr:`last_results` holds one :class:`PipelineResult` per image of the batch.
    """

    def __init__(
        self,
        box_finder: Callable[[torch.Tensor], np.ndarray],
        patch_chain: Compose,
        margin: float = 0.25,
        min_size: int = 32,
        batch_size: int = 4,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.box_finder = box_finder
        self.patch_chain = patch_chain
        self.margin = margin
        self.min_size = min_size
        self.batch_size = batch_size
        self.last_results: list[PipelineResult] = []

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if inputs.ndim != 4:
            raise ValueError(f"PatchPasteInferer takes (B, C, H, W) mammograms, got shape {tuple(inputs.shape)}")
        outputs, self.last_results = [], []
        for image in inputs:
            probabilities, result = self.segment(image, network)
            outputs.append(probabilities.to(inputs.device))
            self.last_results.append(result)
        return torch.stack(outputs)

    def segment(self, image: torch.Tensor, network: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, PipelineResult]:
        """``(1, H, W)`` probabilities and the :class:`PipelineResult` of one ``(C, H, W)`` mammogram."""
        size = tuple(image.shape[-2:])
        with torch.no_grad():
            detections = np.asarray(self.box_finder(image), dtype=np.float64).reshape(-1, 5)
        boxes = patch_boxes(detections, size, self.margin, self.min_size)
        result = PipelineResult(detections=detections, patch_boxes=boxes)
        if not boxes:
            return torch.zeros((1, *size), dtype=torch.float32), result
        samples = self.patch_chain({"image": image.detach().cpu(), "roi_boxes": boxes})
        patches = torch.stack([torch.as_tensor(sample["image"]).float() for sample in samples])
        device = next(network.parameters(), image).device if isinstance(network, torch.nn.Module) else image.device
        probabilities = []
        with torch.no_grad():
            for start in range(0, len(patches), self.batch_size):
                logits = network(patches[start : start + self.batch_size].to(device))
                probabilities.append(torch.sigmoid(torch.as_tensor(logits)).float().cpu())
        pasted = paste_back(list(torch.cat(probabilities)), [sample["roi_box"] for sample in samples], size)
        return pasted, result
