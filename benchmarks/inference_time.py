"""BReMS-Net inference time per mammogram, against the plain ResNet-50 encoder pass measured in the same run.

Run: ``python benchmarks/inference_time.py [--size 512] [--repeats 5] [--threads 1] [--device cpu|cuda]``

One preprocessed mammogram (batch 1, ``size`` x ``size``, one channel) through ``BReMSNet`` in ``eval()``
mode (the full model and each Table 3 variant) and through MONAI's ``ResNetFeatures("resnet50")`` alone,
under ``torch.inference_mode``. Prints the median seconds per mammogram and the ratio to the encoder pass
(the cost of MHD, BFA, the decoder, the fusion and PRM on top of the backbone). On CPU the process CPU time
is measured (with one thread it is the compute time, unaffected by other jobs sharing the machine); on
CUDA the synchronised wall time, with AMP as the harness uses it. The paper reports 0.08 s on an RTX 2080 Ti (input size
not stated). The chain's preprocessing is timed separately by ``benchmarks/preprocess.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.networks.nets import ResNetFeatures

from breastseg.networks import BREMS_NET_VARIANTS, BReMSNet


def _median_seconds(module: torch.nn.Module, image: torch.Tensor, repeats: int, device: torch.device) -> float:
    amp = device.type == "cuda"
    clock = time.perf_counter if amp else time.process_time
    times = []
    with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        module(image)  # warm-up: allocation, cuDNN/oneDNN kernel selection
        for _ in range(repeats):
            if amp:
                torch.cuda.synchronize(device)
            start = clock()
            module(image)
            if amp:
                torch.cuda.synchronize(device)
            times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="network input side (the bundle default is 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    image = torch.rand(1, 1, args.size, args.size, device=device)

    encoder = ResNetFeatures("resnet50", pretrained=False, spatial_dims=2, in_channels=1).to(device).eval()
    reference = _median_seconds(encoder, image, args.repeats, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU time, {args.threads} thread(s)"
    print(f"{args.size}x{args.size} mammogram, batch 1, {where}, median of {args.repeats}")
    print(f"  {'ResNet-50 encoder (reference)':<32} {reference:8.4f} s   1.00x")
    for name, switches in BREMS_NET_VARIANTS.items():
        network = BReMSNet(**switches).to(device).eval()
        seconds = _median_seconds(network, image, args.repeats, device)
        label = "BReMS-Net (full)" if name == "brems_net" else f"variant {name}"
        print(f"  {label:<32} {seconds:8.4f} s   {seconds / reference:.2f}x")


if __name__ == "__main__":
    main()
