#!/usr/bin/env python
"""Benchmark ``describe`` end to end, against an original-style pipeline in the same run.

A seeded, randomly initialised timm ``resnet18`` (layers ``layer1``-``layer4``: 960 units) is
probed with probe-world scenes and described by the embedded captioner (or ``--captioner``).
Phases of the milan_hf pipeline:

* pass 1 / pass 2: exemplar extraction (top-k and quantiles over every image, then the
  exemplar images' maps);
* encoding: each distinct exemplar image through the captioner's backbone once, pooled under
  every mask that uses it (``milan_hf.inference.encode_exemplar_sets``, from ``ids`` and the
  probe images: nothing materialised);
* decoding: PMI beam search, ``--batch-size`` units per call;
* writing: the exemplar set and ``descriptions.csv``.

The original-style pipeline shares the two extraction passes and writing, then materialises
each unit's images and, one unit at a time, runs the encoder per (unit, exemplar) pair and
decodes that unit alone. It is timed on ``--original-units`` units (all by default) and its
rate extrapolated to every unit when fewer; its descriptions are compared with milan_hf's.

    python scripts/bench_describe.py                  # full size: 960 units, 512 images
    python scripts/bench_describe.py --small          # a few minutes on a laptop CPU
    python scripts/bench_describe.py --device cuda
"""

from __future__ import annotations

import argparse
import csv
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import timm
import torch

from milan_hf import exemplars as exemplars_module
from milan_hf.exemplar_storage import save_exemplars
from milan_hf.exemplars import extract_exemplars, materialize_images
from milan_hf.inference import collect_slots, decode_units, encode_exemplar_sets, load_captioner
from milan_hf.probe_world import build_scene_dataset
from milan_hf.vision_models import load_vision_model

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=512, help="probe-world scenes")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--units-per-layer", type=int, help="describe units 0..N-1 per layer")
    parser.add_argument("--original-units", type=int, help="units timed original-style")
    parser.add_argument("--captioner", help="captioner directory (default: embedded)")
    parser.add_argument("--num-beams", type=int, help="default: the captioner's (50)")
    parser.add_argument("--batch-size", type=int, default=64, help="units per decode call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--small",
        action="store_true",
        help="a few minutes on CPU: 64 images at 112 px, 8 units per layer, 8 original-style",
    )
    args = parser.parse_args(argv)
    if args.small:
        args.num_images, args.image_size = min(args.num_images, 64), min(args.image_size, 112)
        args.units_per_layer = args.units_per_layer or 8
        args.original_units = args.original_units or 8
    return args


class Phases:
    """Wall time, CPU time (this process: on a shared machine wall time includes waiting) and
    peak resident memory after each named phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str):
        self._sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu
        self.peak_rss_mb[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed_function(*args, **kwargs):
            with self.timed(name):
                return function(*args, **kwargs)

        return timed_function

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def extract(args, probe, phases: Phases) -> datasets.Dataset:
    """Exemplars of every unit of the layers, pass 1 and pass 2 timed separately."""
    torch.manual_seed(0)  # the same random resnet18 in every run
    vision_model = load_vision_model(timm.create_model("resnet18"))
    originals = exemplars_module.pass_one, exemplars_module._exemplar_maps
    exemplars_module.pass_one = phases.wrap("pass 1", originals[0])
    exemplars_module._exemplar_maps = phases.wrap("pass 2", originals[1])
    try:
        # accelerate's default device: the GPU when there is one.
        found = extract_exemplars(
            vision_model, args.layers.split(","), probe, batch_size=32, progress=False
        )
    finally:
        exemplars_module.pass_one, exemplars_module._exemplar_maps = originals
    if args.units_per_layer:
        units = np.asarray(found["unit"])
        found = found.select(np.flatnonzero(units < args.units_per_layer))
    return found


def describe_milan_hf(found, probe, captioner, processor, args, phases) -> list[str]:
    generation = {"num_beams": args.num_beams}
    with phases.timed("encoding"):
        slots = collect_slots(found, probe_images=probe)
        encoded = encode_exemplar_sets(slots, captioner, processor)
    with phases.timed("decoding"):
        records = decode_units(
            encoded, slots.names, captioner, processor, args.batch_size, **generation
        )
    phases.distinct_images = len(slots.images)
    return [record["description"] for record in records]


def write_outputs(found, descriptions: list[str], folder: Path, phases: Phases) -> None:
    with phases.timed("writing"):
        save_exemplars(found, folder / "exemplars", overwrite=True)
        with open(folder / "descriptions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["layer", "unit", "description"])
            writer.writerows(zip(found["layer"], found["unit"], descriptions))


def describe_original_style(found, probe, captioner, processor, args, phases) -> list[str]:
    """Materialised images; per unit: encoder per (unit, exemplar) pair, then that unit alone
    decoded (as the original MILAN code did)."""
    count = min(args.original_units or len(found), len(found))
    device = phases.device
    descriptions = []
    with phases.timed("original: materialise"):
        rows = materialize_images(found.select(range(count)), probe_images=probe, progress=False)
    with phases.timed("original: encode + decode"):
        for row in rows:
            inputs = processor(row)
            with torch.inference_mode():
                output = captioner.generate(
                    pixel_values=inputs["pixel_values"].to(device),
                    masks=inputs["masks"].to(device),
                    num_beams=args.num_beams,
                )
            descriptions += processor.batch_decode(output.sequences)
    return descriptions


def report(args, phases: Phases, units: int, original_units: int, same: int) -> dict[str, Any]:
    seconds = phases.seconds
    extraction = seconds["pass 1"] + seconds["pass 2"]
    ours = extraction + seconds["encoding"] + seconds["decoding"] + seconds["writing"]
    per_unit = (seconds["original: materialise"] + seconds["original: encode + decode"]) / max(
        original_units, 1
    )
    original = extraction + seconds["writing"] + per_unit * units
    print(
        f"device={phases.device} threads={torch.get_num_threads()} images={args.num_images} "
        f"({args.image_size} px) layers={args.layers} units={units} "
        f"distinct exemplar images={phases.distinct_images} beams={args.num_beams or 'default'}"
    )
    print("| phase | wall s | CPU s | peak RSS (MB) |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        cpu, rss = phases.cpu_seconds[name], phases.peak_rss_mb[name]
        print(f"| {name} | {value:.2f} | {cpu:.2f} | {rss:.0f} |")
    estimated = "" if original_units == units else f" (extrapolated from {original_units} units)"
    print(f"milan_hf total: {ours:.1f} s, {units / ours:.2f} units/s")
    print(f"original-style total{estimated}: {original:.1f} s, {units / original:.2f} units/s")
    print(f"speed-up end to end: {original / ours:.1f}x")
    describing = seconds["encoding"] + seconds["decoding"]
    print(
        f"describing alone (after the shared extraction): {units / describing:.2f} units/s vs "
        f"{1 / per_unit:.2f} original-style, {per_unit * units / describing:.1f}x"
    )
    print(f"describe / exemplars alone: {ours / extraction:.2f}x")
    print(f"identical descriptions (original-style vs milan_hf): {same}/{original_units}")
    return {"units": units, "milan_hf_seconds": ours, "original_seconds": original,
            "speedup": original / ours, "identical": same, "phases": seconds}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    phases = Phases(torch.device(args.device))
    probe = build_scene_dataset(num_images=args.num_images, seed=0, size=args.image_size)
    captioner, processor = load_captioner(args.captioner, device=args.device)
    found = extract(args, probe, phases)
    # Untimed warm-up of both paths (one-time kernel set-up would otherwise count for the first).
    warm_up = Phases(phases.device)
    describe_milan_hf(found.select(range(2)), probe, captioner, processor, args, warm_up)
    warm_up_args = argparse.Namespace(**{**vars(args), "original_units": 2})
    describe_original_style(found, probe, captioner, processor, warm_up_args, warm_up)
    ours = describe_milan_hf(found, probe, captioner, processor, args, phases)
    with tempfile.TemporaryDirectory() as folder:
        write_outputs(found, ours, Path(folder), phases)
    original = describe_original_style(found, probe, captioner, processor, args, phases)
    same = sum(a == b for a, b in zip(original, ours))
    return report(args, phases, len(found), len(original), same)


if __name__ == "__main__":
    main()
