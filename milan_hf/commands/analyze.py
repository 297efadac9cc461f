"""``milan-hf analyze``: ablate units in the order of a property of their descriptions."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="ablate units by a property of their descriptions and plot accuracy (MILAN Fig. 4)",
        description="Score each described unit by its description's adjectives, nouns, "
        "prepositions, length and word diversity; ablate the units in decreasing order of each "
        "and plot the classifier's accuracy against the number ablated. Writes "
        "OUTPUT/analysis.json, analysis.png and analysis.html.",
    )
    parser.add_argument("describe_dir", type=Path, help="output directory of `milan-hf describe`")
    add_classifier_arguments(parser)
    parser.add_argument(
        "--output", type=Path, help="output directory (default: DESCRIBE_DIR/analysis)"
    )
    parser.add_argument("--points", type=int, default=11, help="accuracies measured per curve")
    parser.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablation mode")
    parser.add_argument(
        "--tagger",
        choices=("auto", "spacy", "lexicon"),
        default="auto",
        help="part-of-speech tagger (auto: spaCy when an English pipeline is installed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="tie-breaking and random-order seed")
    parser.set_defaults(func=run)


def add_classifier_arguments(parser: argparse.ArgumentParser) -> None:
    """The classifier and labelled images to measure accuracy with."""
    parser.add_argument(
        "--model",
        required=True,
        help="timm name, local timm/transformers directory, or a classifier directory written "
        "by `milan-hf edit` (model.safetensors + probe_model.json)",
    )
    parser.add_argument("--checkpoint", type=Path, help="local weights for --model")
    parser.add_argument("--pretrained", action="store_true", help="timm pretrained weights")
    parser.add_argument(
        "--images",
        required=True,
        help="labelled images: save_to_disk directory, parquet file or hub dataset",
    )
    parser.add_argument("--split", help="split of a multi-split dataset")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=64)


def load_classifier_and_images(args: argparse.Namespace):
    """(model, transform, labelled dataset) from the classifier arguments."""
    from ..editing import is_classifier_dir, load_classifier
    from ..probe_world.probe_models import probe_transform
    from ..vision_models import load_vision_model

    if is_classifier_dir(args.model):
        model, info = load_classifier(args.model)
        transform = probe_transform(info["image_size"])
    else:
        model = load_vision_model(
            args.model, pretrained=args.pretrained, checkpoint=args.checkpoint
        )
        transform = model.transform
    return model, transform, load_labelled_images(args.images, args.split)


def load_labelled_images(source: str, split: str | None = None):
    """A ``datasets.Dataset`` from a save_to_disk directory, a parquet file or a hub id."""
    import datasets

    path = Path(source)
    if path.is_dir() and (
        (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    ):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        loaded = datasets.Dataset.from_parquet(str(path))
    elif path.exists():
        raise ValueError(f"{source} is neither a save_to_disk directory nor a parquet file")
    else:
        loaded = datasets.load_dataset(source, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            raise ValueError(f"{source} has splits {sorted(loaded)}; choose one with --split")
        loaded = loaded[split]
    return loaded


def run(args: argparse.Namespace) -> int:
    from ..analysis import analyze_descriptions, save_analysis
    from ..application_report import write_analysis_page
    from ..describer import load_description_outputs
    from ..part_of_speech import load_tagger

    descriptions, _ = load_description_outputs(args.describe_dir)
    model, transform, images = load_classifier_and_images(args)
    tagger = load_tagger(args.tagger)
    print(f"part-of-speech tags: {tagger.name}")
    result = analyze_descriptions(
        model,
        descriptions,
        images,
        transform=transform,
        num_points=args.points,
        mode=args.mode,
        seed=args.seed,
        tagger=tagger,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
    )
    output = args.output or args.describe_dir / "analysis"
    files = save_analysis(result, output)
    page = write_analysis_page(result.as_dict(), files["figure"], output)
    for name, curve in result.curves.items():
        print(
            f"{name:>15}: accuracy {curve.accuracy[0]:.3f} -> {curve.accuracy[-1]:.3f} "
            f"after {curve.num_ablated[-1]} units"
        )
    print(f"wrote {files['json']}, {files['figure']} and {page}")
    return 0
