#!/usr/bin/env python
"""Benchmark: units described per second with PMI decoding, batched across units vs one unit
at a time (as the original MILAN code decoded), same model, same run.

The model has the original's sizes (embedding 128, hidden 512, 2-layer 512 prior, beam 50,
15 tokens, λ = 0.2) over the default ``tf_efficientnet_lite0`` encoder (512-dimensional
exemplar features), with random decoder weights: beams then rarely finish early, so every unit
costs the full 15 steps in both modes. ``--inputs images`` times the whole path from
exemplar images and masks (processor + encoder + decoding); ``--inputs features`` (default)
times decoding from precomputed exemplar features.

    python scripts/bench_describe.py --units 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from milan_hf.configuration_milan import MilanCaptionerConfig, MilanPriorConfig
from milan_hf.modeling_milan import MilanCaptionerModel


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=32, help="units described per run")
    parser.add_argument("--batch-size", type=int, default=32, help="units per generate call")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (median reported)")
    parser.add_argument("--num-beams", type=int, default=50)
    parser.add_argument("--pmi-strategy", choices=("rerank", "token"), default="rerank")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--exemplars", type=int, default=15)
    parser.add_argument("--inputs", choices=("features", "images"), default="features")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> MilanCaptionerModel:
    torch.manual_seed(args.seed)
    prior = MilanPriorConfig(vocab_size=args.vocab_size)
    config = MilanCaptionerConfig(
        vocab_size=args.vocab_size,
        image_size=args.image_size,
        prior_config=prior,
    )
    model = MilanCaptionerModel(config).eval().to(args.device)
    model.generation_config.update(pmi_strategy=args.pmi_strategy, num_beams=args.num_beams)
    return model


def make_inputs(model: MilanCaptionerModel, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(args.seed)
    k = args.exemplars
    if args.inputs == "features":
        shape = (args.units, k, model.config.feature_size)
        features = torch.randn(*shape, generator=generator).abs()
        return {"exemplar_features": features.to(args.device)}
    size = args.image_size
    pixel_values = torch.randn(args.units, k, 3, size, size, generator=generator)
    masks = (torch.rand(args.units, k, size, size, generator=generator) > 0.8).float()
    return {"pixel_values": pixel_values.to(args.device), "masks": masks.to(args.device)}


def describe(model: MilanCaptionerModel, inputs: dict[str, torch.Tensor], batch_size: int):
    """Describe all units, ``batch_size`` units per generate call; returns the token ids."""
    units = next(iter(inputs.values())).shape[0]
    sequences = []
    for start in range(0, units, batch_size):
        chunk = {name: value[start : start + batch_size] for name, value in inputs.items()}
        output = model.generate(**chunk)
        sequences.extend(output.sequences.tolist())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return sequences


def time_mode(model, inputs, batch_size: int, repeats: int) -> tuple[float, list]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sequences = describe(model, inputs, batch_size)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), sequences


def strip_padding(sequence: list[int], pad_id: int) -> list[int]:
    while sequence and sequence[-1] == pad_id:
        sequence = sequence[:-1]
    return sequence


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args)
    inputs = make_inputs(model, args)
    describe(model, {k: v[:2] for k, v in inputs.items()}, 2)  # warm-up

    batched_seconds, batched = time_mode(model, inputs, args.batch_size, args.repeats)
    single_seconds, single = time_mode(model, inputs, 1, args.repeats)
    pad_id = model.config.pad_token_id
    same = sum(
        strip_padding(a, pad_id) == strip_padding(b, pad_id) for a, b in zip(batched, single)
    )

    batched_rate, single_rate = args.units / batched_seconds, args.units / single_seconds
    print(
        f"device={args.device} threads={torch.get_num_threads()} units={args.units} "
        f"inputs={args.inputs} beams={args.num_beams} pmi={args.pmi_strategy} "
        f"(λ={model.generation_config.pmi_weight}) vocab={args.vocab_size} k={args.exemplars} "
        f"repeats={args.repeats} (median)"
    )
    print("| mode | units per call | seconds | units/s |")
    print("|---|---|---|---|")
    print(f"| one unit at a time | 1 | {single_seconds:.2f} | {single_rate:.2f} |")
    print(f"| batched | {args.batch_size} | {batched_seconds:.2f} | {batched_rate:.2f} |")
    print(f"speed-up from batching: {batched_rate / single_rate:.1f}×")
    print(f"identical descriptions in both modes: {same}/{args.units}")
    return {
        "batched_units_per_second": batched_rate,
        "single_units_per_second": single_rate,
        "speedup": batched_rate / single_rate,
        "identical": same,
    }


if __name__ == "__main__":
    main()
