"""CPU mixed precision: bfloat16 autocast + channels-last weights (``amp: true``) against float32, same run.

Run: ``python benchmarks/cpu_precision.py [--threads 2] [--repeats 3] [--networks connected_unets brems_net]``

For each network, one training step (forward, loss, backward, Adam) on a batch of 8 crops and one
evaluation forward on a batch of 8 whole inputs are timed in float32 (the reference) and through the
harness's CPU mixed precision (:func:`breastseg.workflows.engine.precision.resolve_precision` with ``amp=True``),
alternating, median of ``--repeats``. Printed: seconds and the float32 / bfloat16 ratio (> 1: bfloat16 is
faster), and the largest difference of the evaluation probabilities. The speed-up needs a CPU with native
bfloat16 (AVX512-BF16 or AMX, reported on the first line); elsewhere bfloat16 is slower.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from monai.inferers import SimpleInferer

from breastseg.networks import build_network
from breastseg.workflows.engine.precision import resolve_precision

NETWORKS = {
    # name: (build_network kwargs, training crop, evaluation size)
    "unetplusplus": ({"network": "unetplusplus"}, 64, 256),
    "connected_unets": ({"network": "connected_unets", "variant": "plusplus", "aspp_dilations": [6, 8, 12]}, 64, 224),
    "brems_net": ({"network": "brems_net"}, 64, 256),
}


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _first_head(output):
    return output[0] if isinstance(output, (list, tuple)) else output


def measure(name: str, repeats: int) -> dict[str, float]:
    kwargs, crop, size = NETWORKS[name]
    kwargs = dict(kwargs)
    torch.manual_seed(0)
    reference = build_network(kwargs.pop("network"), spatial_dims=2, in_channels=1, out_channels=1, **kwargs)
    mixed = copy.deepcopy(reference)
    _, reference_inferer = resolve_precision("cpu", False, SimpleInferer(), reference)
    _, mixed_inferer = resolve_precision("cpu", True, SimpleInferer(), mixed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    crops = torch.rand(8, 1, crop, crop)
    labels = (torch.rand(8, 1, crop, crop) > 0.95).float()
    whole = torch.rand(8, 1, size, size)
    optimizers = {id(net): torch.optim.Adam(net.parameters(), 1e-4) for net in (reference, mixed)}

    def train_step(net, inferer):
        net.train()
        outputs = inferer(crops, net)
        heads = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        loss = sum(loss_fn(head, labels) for head in heads)
        optimizers[id(net)].zero_grad()
        loss.backward()
        optimizers[id(net)].step()

    def eval_step(net, inferer):
        net.eval()
        with torch.no_grad():
            return torch.sigmoid(_first_head(inferer(whole, net)))

    for net, inferer in ((reference, reference_inferer), (mixed, mixed_inferer)):
        train_step(net, inferer)  # warm-up: oneDNN picks its kernels on the first call
        eval_step(net, inferer)
    times: dict[str, list[float]] = {"train32": [], "train16": [], "eval32": [], "eval16": []}
    for _ in range(repeats):
        times["train32"].append(_timed(lambda: train_step(reference, reference_inferer)))
        times["train16"].append(_timed(lambda: train_step(mixed, mixed_inferer)))
        times["eval32"].append(_timed(lambda: eval_step(reference, reference_inferer)))
        times["eval16"].append(_timed(lambda: eval_step(mixed, mixed_inferer)))
    result = {key: statistics.median(values) for key, values in times.items()}
    mixed.load_state_dict(reference.state_dict())
    result["max_prob_diff"] = float((eval_step(reference, reference_inferer) - eval_step(mixed, mixed_inferer)).abs().max())
    result["crop"], result["size"] = crop, size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}, {args.threads} thread(s), native bfloat16 on this CPU: {native}")
    print("| network | train step fp32 (s) | bf16 (s) | ratio | eval batch fp32 (s) | bf16 (s) | ratio | max prob. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.networks:
        r = measure(name, args.repeats)
        print(
            f"| {name} (8×{r['crop']}² / 8×{r['size']}²) | {r['train32']:.3f} | {r['train16']:.3f} | "
            f"{r['train32'] / r['train16']:.2f}× | {r['eval32']:.3f} | {r['eval16']:.3f} | "
            f"{r['eval32'] / r['eval16']:.2f}× | {r['max_prob_diff']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
