"""``milan-hf probe-world``: write a seeded set of probe-world scenes with concept masks."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe-world",
        help="generate probe-world scenes with per-pixel concept masks",
        description="Generate seeded scenes (colours, shapes, textures, text, regions and, when "
        "installed, photographic cut-outs) with a mask for every concept, as a datasets "
        "save_to_disk directory usable as probe images for `milan-hf exemplars`.",
    )
    parser.add_argument("--num-images", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="scene i depends only on (seed, i)")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument(
        "--stamps",
        type=Path,
        help="folder of RGBA cut-outs with .txt captions (default: $MILAN_HF_STAMPS or "
        "/usr/share/tuxpaint/stamps when installed)",
    )
    parser.add_argument(
        "--no-objects", action="store_true", help="do not use photographic cut-outs"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output directory"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..probe_world.concepts import load_stamps
    from ..probe_world.scenes import build_scene_dataset
    from ..staged_output import staged_directory

    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    if args.size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {args.size}")
    if args.stamps is not None and not args.stamps.is_dir():
        raise FileNotFoundError(f"--stamps folder {args.stamps} does not exist")
    output: Path = args.output
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    stamps = () if args.no_objects else load_stamps(args.stamps)
    # Written next to the target, then swapped in: an interrupted run leaves nothing that loads.
    with tempfile.TemporaryDirectory() as cache, staged_directory(output) as staging:
        dataset = build_scene_dataset(
            args.num_images,
            seed=args.seed,
            size=args.size,
            stamps_folder=args.stamps,
            use_stamps=not args.no_objects,
            cache_dir=cache,
        )
        dataset.save_to_disk(str(staging))
    categories = sorted({stamp.category for stamp in stamps})
    print(
        f"wrote {args.num_images} scenes ({args.size}px, seed {args.seed}, "
        f"{len(categories)} object categories) to {output}"
    )
    return 0
