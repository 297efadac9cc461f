"""``milan-hf benchmark``: the known-unit benchmark (planted, synthetic and corpus units)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="accuracy on units of known meaning: planted in timm models, synthetic, corpus",
        description="Describe units whose meaning is known and count how often the "
        "description names it: units planted into real timm architectures (checked to fire on "
        "their concept, described through 'milan-hf describe --checkpoint'), synthetic units "
        "from seeds never used in training, and a probe-world corpus's held-out networks. "
        "Prints a markdown table and writes OUTPUT/results.json and OUTPUT/results.md.",
    )
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--captioner", help="captioner directory or Hub id (default: the embedded captioner)"
    )
    parser.add_argument(
        "--architectures",
        default="resnet18,tf_efficientnet_lite0,vit_tiny_patch16_224",
        help="comma-separated timm models to plant units into ('none': skip that part)",
    )
    parser.add_argument("--num-images", type=int, default=200, help="probe scenes per model")
    parser.add_argument("--image-size", type=int, default=128, help="probe scene side (px)")
    parser.add_argument(
        "--synthetic-units", type=int, default=200, help="synthetic units (0: skip that part)"
    )
    parser.add_argument("--seed", type=int, help="synthetic-unit seed (>= 1000000)")
    parser.add_argument("--corpus", type=Path, help="probe-world corpus directory (corpus.json)")
    parser.add_argument(
        "--corpus-max-units", type=int, help="at most this many units per held-out network"
    )
    parser.add_argument(
        "--min-auc", type=float, default=0.9, help="planted units below this AUC are left out"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="units per decoding batch")
    parser.add_argument(
        "--verify-units",
        type=int,
        default=0,
        help="verification by synthesis on this many synthetic units, the planted units and "
        "this many units per held-out corpus network (0: off)",
    )
    parser.add_argument(
        "--verify-top", type=int, default=5, help="PMI beam candidates rendered per unit"
    )
    parser.add_argument(
        "--verify-images", type=int, default=16, help="images (and controls) per description"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..known_units import BENCHMARK_SEED, run_known_unit_benchmark

    for name in ("num_images", "image_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    if args.synthetic_units < 0:
        raise ValueError(f"--synthetic-units must be >= 0, got {args.synthetic_units}")
    names = [] if args.architectures == "none" else args.architectures.split(",")
    results = run_known_unit_benchmark(
        args.output,
        args.captioner,
        architectures=[name.strip() for name in names if name.strip()],
        num_images=args.num_images,
        image_size=args.image_size,
        synthetic_units=args.synthetic_units,
        seed=BENCHMARK_SEED if args.seed is None else args.seed,
        corpus_dir=args.corpus,
        corpus_max_units=args.corpus_max_units,
        min_auc=args.min_auc,
        batch_size=args.batch_size,
        verify_units=args.verify_units,
        verify_top=args.verify_top,
        verify_images=args.verify_images,
    )
    print((args.output / "results.md").read_text(), end="")
    print(f"results: {args.output / 'results.json'} ({len(results['units'])} units)")
    return 0
