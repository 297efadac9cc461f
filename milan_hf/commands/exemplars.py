"""``milan-hf exemplars``: top-k exemplar images and masks for every unit of some layers."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import schema


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "exemplars",
        help="find each unit's top-activating images and where it fires",
        description="Find each unit's top-k exemplar images and the regions where it fires. "
        "Runs on several processes/GPUs under `accelerate launch` or `torchrun`.",
    )
    add_extraction_arguments(parser, required=True)
    parser.add_argument("--output", required=True, type=Path, help="output directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding workers")
    parser.add_argument(
        "--materialize-images",
        action="store_true",
        help="embed exemplar images in the dataset instead of ids alone",
    )
    parser.add_argument(
        "--export-original",
        action="store_true",
        help="also write the original MILAN layout to OUTPUT/original",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="push the exemplar set to the Hub")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a complete output directory"
    )
    parser.set_defaults(func=run)


def add_extraction_arguments(
    parser: argparse.ArgumentParser, *, required: bool, model_default: str = ""
) -> None:
    """The model, layer and probe-image options shared by ``exemplars`` and ``describe``."""
    parser.add_argument(
        "--model",
        required=required,
        help="timm model name, or a local timm/transformers model directory "
        "(or a transformers hub id when online)" + model_default,
    )
    parser.add_argument(
        "--layers",
        required=required,
        help="comma-separated module names as in model.named_modules()",
    )
    parser.add_argument(
        "--images",
        required=required,
        help="probe images: image folder, save_to_disk directory, parquet, or a hub dataset id",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="local weights for --model (safetensors or a state dict; never unpickles code)",
    )
    parser.add_argument(
        "--pretrained", action="store_true", help="load the timm model's pretrained weights"
    )
    parser.add_argument("--k", type=int, default=schema.DEFAULT_K, help="exemplars per unit")
    parser.add_argument(
        "--quantile",
        type=float,
        default=schema.DEFAULT_QUANTILE,
        help="activation quantile that becomes each unit's mask threshold",
    )
    parser.add_argument("--split", help="split of a multi-split probe dataset")
    parser.add_argument("--image-column", help="image column of the probe dataset")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of a randomly initialised model (default 0)"
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import Accelerator

    from ..exemplar_storage import (
        METADATA_FILE,
        ORIGINAL_DIR,
        OWNED_ENTRIES,
        export_original_layout,
        push_exemplars_to_hub,
        save_exemplars,
    )
    from ..exemplars import extract_exemplars
    from ..staged_output import check_output_location, require_own_output

    # Before any work: where the results go must be free, or hold only an earlier run's.
    output = check_output_location(
        args.output, [args.images, args.model, args.checkpoint], flag="--output"
    )
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            raise FileExistsError(
                f"{output} already exists and is not empty; pass --overwrite to replace it"
            )
        require_own_output(output, metadata_file=METADATA_FILE, owned=OWNED_ENTRIES,
                           what="--output")  # fmt: skip
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    exemplars = extract_exemplars(
        args.model,
        args.layers,
        str(args.images) if isinstance(args.images, Path) else args.images,
        k=args.k,
        quantile=args.quantile,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        image_column=args.image_column,
        split=args.split,
        materialize=args.materialize_images,
        accelerator=accelerator,
        seed=args.seed,
    )
    if exemplars is None:  # not the main process of a distributed run
        return 0
    save_exemplars(exemplars, output, overwrite=args.overwrite)
    if args.export_original:
        export_original_layout(
            exemplars, output / ORIGINAL_DIR, with_images=args.materialize_images
        )
    if args.push_to_hub:
        push_exemplars_to_hub(exemplars, args.push_to_hub)
    layers = sorted(set(exemplars[schema.LAYER]))
    dead = sum(exemplars[schema.DEAD])
    print(
        f"wrote {len(exemplars)} units of {len(layers)} layer(s) to {output}"
        + (f" ({dead} dead units flagged)" if dead else "")
    )
    return 0
