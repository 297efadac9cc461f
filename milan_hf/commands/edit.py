"""``milan-hf edit``: the spurious-text experiment on the probe world, offline."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="remove a spurious text feature by ablating the units described as text",
        description="MILAN's editing experiment on the probe world: train (or load from the "
        "cache) a shape classifier whose training scenes carry their class name as text, "
        "describe its units, ablate the ones described as text (least harmful to validation "
        "accuracy first) and report validation, clean and adversarial (random text) accuracy "
        "before and after. With --control, also describe a classifier trained without text and "
        "audit both for text units.",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("milan-hf-edit"), help="output directory"
    )
    parser.add_argument(
        "--layers", default="conv4,conv5", help="comma-separated layers to describe"
    )
    parser.add_argument(
        "--control", action="store_true", help="also train/describe/audit the no-text control"
    )
    parser.add_argument("--query", default="text", help="what the units to ablate are described as")
    parser.add_argument(
        "--words", help="comma-separated match words (default: the grammar's text nouns)"
    )
    parser.add_argument("--threshold", type=float, help="also match by embedding cosine >= this")
    parser.add_argument("--split-images", type=int, default=400, help="images per evaluation split")
    parser.add_argument("--train-images", type=int, help="training images (default 2400)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 6)")
    parser.add_argument("--channels", help="comma-separated CNN widths (default 16,32,64,128,192)")
    parser.add_argument("--image-size", type=int, help="scene size in pixels (default 64)")
    parser.add_argument("--seed", type=int, help="seed of data and training (default 0)")
    parser.add_argument("--k", type=int, default=15, help="exemplars per unit")
    parser.add_argument(
        "--num-beams", type=int, help="captioner beam width (default: the captioner's)"
    )
    parser.add_argument("--max-units", type=int, help="describe only units 0..N-1 of each layer")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..editing import TextClassifierConfig, run_spurious_text_experiment

    changes = {
        "train_images": args.train_images,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "seed": args.seed,
    }
    if args.channels:
        changes["channels"] = tuple(int(width) for width in args.channels.split(","))
    config = TextClassifierConfig(
        **{name: value for name, value in changes.items() if value is not None}
    )
    describe_options = {"k": args.k, "num_beams": args.num_beams, "units": args.max_units}
    words = [word.strip() for word in args.words.split(",")] if args.words else None
    summary = run_spurious_text_experiment(
        args.output,
        config,
        layers=[layer.strip() for layer in args.layers.split(",")],
        split_images=args.split_images,
        query=args.query,
        words=words,
        threshold=args.threshold,
        control=args.control,
        **describe_options,
    )
    edit = summary["edit"]
    print(
        f"{edit['num_text_units']} units described as {args.query!r}; "
        f"{edit['truly_textual']} respond to written words"
    )
    print(f"ablating {edit['chosen']} of them (best on the adversarial validation split):")
    print(f"{'split':<24}before  after   change  (all {edit['num_text_units']} ablated)")
    for row in edit["table"]:
        print(
            f"{row['split']:<24}{row['before']:.3f}   {row['chosen']:.3f}   "
            f"{row['change']:+.3f}  ({row['all']:.3f})"
        )
    if "audit" in summary:
        for model in summary["audit"]["models"]:
            print(f"audit {model['name']}: {model['matching']} of {model['units']} units match")
    print(f"wrote {args.output}/edit.json and edit.html")
    return 0
