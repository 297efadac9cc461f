"""Benchmark exemplar extraction's pass 1 against a bare forward pass, and its memory.

Throughput: the same model on the same preprocessed batches, in the same run: (a) a bare
forward pass with no hooks, (b) pass 1 (hooks on every requested layer, streaming top-k and
quantile histograms). Median of several runs; the ratio (b)/(a) in images/s is the target
(>= 0.85 on CPU).

Memory: pass 1 over two probe-set sizes, each in a fresh process, reporting peak resident
memory; it should be flat in the number of images.

    python scripts/bench_exemplars.py                      # resnet18, layer1-4, 224 px, CPU
    python scripts/bench_exemplars.py --device cuda --batch-size 128 --num-images 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import timm
import torch

from milan_hf.exemplars import LayerTaps, pass_one
from milan_hf.vision_models import load_vision_model


def make_batches(num_images: int, batch_size: int, size: int, device: str):
    """Preprocessed batches (decoding excluded: it is the same cost for both)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        pixels = torch.randn(count, 3, size, size, generator=generator).to(device)
        ids = torch.arange(start, start + count)
        batches.append((pixels, ids, torch.ones(count, dtype=torch.bool), [""] * count))
    return batches


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_bare(model, batches, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for pixels, *_ in batches:
            model(pixels)
    synchronize(device)
    return time.perf_counter() - start


def time_pass_one(vision_model, layers, batches, device, k) -> float:
    synchronize(device)
    start = time.perf_counter()
    with LayerTaps(vision_model, layers) as taps, torch.inference_mode():
        top, histograms, _ = pass_one(taps, batches, k, torch.device(device))
        for histogram in histograms.values():
            histogram.quantile(0.99)
    synchronize(device)
    return time.perf_counter() - start


def memory_child(args: argparse.Namespace, num_images: int) -> None:
    """Pass 1 over ``num_images`` generated one batch at a time; print peak RSS in MiB."""
    vision_model = load_vision_model(timm.create_model(args.model).eval(), input_size=args.size)
    vision_model.module.to(args.device)

    def batches():
        for pixels, ids, ok, errors in make_batches(
            args.batch_size, args.batch_size, args.size, args.device
        ):
            for start in range(0, num_images, args.batch_size):
                yield pixels, ids + start, ok, errors

    with LayerTaps(vision_model, args.layers) as taps, torch.inference_mode():
        pass_one(taps, batches(), args.k, torch.device(args.device))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else 0
    print(json.dumps({"peak_rss_mib": peak_mib, "peak_gpu_mib": gpu_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--layers", default="layer1,layer2,layer3,layer4")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--memory-sizes", default="256,1024", help="probe-set sizes for the memory measurement"
    )
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.layers = [layer for layer in args.layers.split(",") if layer]
    if args.memory_child:
        memory_child(args, args.memory_child)
        return

    torch.manual_seed(0)
    model = timm.create_model(args.model).eval().to(args.device)
    vision_model = load_vision_model(model, input_size=args.size)
    batches = make_batches(args.num_images, args.batch_size, args.size, args.device)
    time_bare(model, batches[:1], args.device)  # warm-up
    time_pass_one(vision_model, args.layers, batches[:1], args.device, args.k)
    bare, hooked = [], []
    for _ in range(args.runs):  # interleaved, so drifting machine load hits both alike
        bare.append(time_bare(model, batches, args.device))
        hooked.append(time_pass_one(vision_model, args.layers, batches, args.device, args.k))
    bare_rate = args.num_images / statistics.median(bare)
    pass_rate = args.num_images / statistics.median(hooked)

    print(
        f"\nmodel {args.model}, layers {','.join(args.layers)}, {args.size} px, "
        f"batch {args.batch_size}, {args.num_images} images, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, median of {args.runs} runs"
    )
    print("| what | images/s | ratio to bare forward |")
    print("|---|---|---|")
    print(f"| bare forward (no hooks) | {bare_rate:.1f} | 1.00 |")
    print(f"| pass 1 (hooks, top-k, histograms) | {pass_rate:.1f} | {pass_rate / bare_rate:.2f} |")

    print("\n| probe images | peak RSS (MiB) | peak GPU (MiB) |")
    print("|---|---|---|")
    for size in [int(s) for s in args.memory_sizes.split(",")]:
        command = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--layers",
            ",".join(args.layers),
            "--size",
            str(args.size),
            "--batch-size",
            str(args.batch_size),
            "--k",
            str(args.k),
            "--device",
            args.device,
            "--memory-child",
            str(size),
        ]
        result = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        print(f"| {size} | {result['peak_rss_mib']:.0f} | {result['peak_gpu_mib']:.0f} |")


if __name__ == "__main__":
    main()
