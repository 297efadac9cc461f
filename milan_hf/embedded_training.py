"""The recipe that reproduces the captioner embedded in milan_hf (``milan_hf/resources/captioner``).

    python scripts/train_embedded_captioner.py --corpus data/probe_milannotations

Steps:

1. The probe-world corpus (MILANNOTATIONS layout, ``scripts/make_probe_annotations.py``): built
   at ``--corpus`` with the default settings when it is not there yet (this trains the probe
   networks on first use; tens of minutes on 2 CPU cores).
2. Its training networks only: every network listed under ``held_out`` in ``corpus.json``
   is left out whole (checked row by row), so it can measure generalisation to unseen networks.
3. ``milan_hf.training`` (``milan-hf train``: frozen ImageNet EfficientNet-Lite0 encoder,
   Show-Attend-Tell decoder, LSTM prior, early stopping on validation BLEU) with small decoder
   sizes.
4. The trained weights are stored in float16, without the frozen backbone, which
   ``from_pretrained`` rebuilds from the offline package (the config keeps ``dtype: float32`` so
   ``from_pretrained`` computes in float32), with the processor, tokenizer, training metrics,
   the held-out concept accuracy (``milan_hf.benchmark.evaluate_known_units``) and a model
   card rendered from ``hub_cards/embedded_captioner.md``; the output directory is replaced
   atomically.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from milan_hf import schema, training
from milan_hf.benchmark import evaluate_known_units
from milan_hf.probe_world.ground_truth import markdown_summary
from milan_hf.staged_output import require_own_output, staged_directory, write_text_atomically

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "resources" / "captioner"
EVALUATION_FILE = "held_out_evaluation.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, required=True, help="probe-world corpus (built if missing)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work-dir", type=Path, help="intermediate files (default: a temp dir)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--synthetic-units", type=int, default=6000)
    parser.add_argument(
        "--synthetic-composition-share",
        type=float,
        default=0.65,
        help="share of composed synthetic units (AND/OR/region/above: the hard ones)",
    )
    parser.add_argument("--synthetic-validation-units", type=int, default=256)
    parser.add_argument("--mask-location-grid", type=int, default=4)
    parser.add_argument(
        "--mask-context-pooling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the deepest stage averaged outside each mask (default: on)",
    )
    parser.add_argument(
        "--mask-below-context",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the deepest stage averaged in the band below each mask (default: on)",
    )
    parser.add_argument(
        "--exemplar-feature-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="layer-normalise exemplar features before the decoder (default: on)",
    )
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-epochs", type=int, default=14)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--prior-max-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a shared 2-core machine: no spin contention)",
    )
    parser.add_argument(
        "--skip-evaluation", action="store_true", help="do not measure held-out concept accuracy"
    )
    parser.add_argument("--eval-num-beams", type=int, help="beam width of the held-out evaluation")
    parser.add_argument(
        "--benchmark-results",
        type=Path,
        help="results.md of `milan-hf benchmark` run on this captioner: its tables go into "
        "the card (with --evaluate-only, after training)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-measure the captioner already at --output and rewrite its card; no training",
    )
    return parser.parse_args(argv)


def ensure_corpus(corpus_dir: Path) -> dict[str, Any]:
    """``corpus.json`` of the corpus at ``corpus_dir``, building the corpus if needed."""
    if not (corpus_dir / "corpus.json").is_file():
        from milan_hf.probe_world.corpus import build_corpus

        print(f"building the probe-world corpus at {corpus_dir} (trains the probe networks)")
        build_corpus(corpus_dir)
    return json.loads((corpus_dir / "corpus.json").read_text())


def training_sets(
    corpus_dir: Path, corpus: dict[str, Any], destination: Path, image_size: int
) -> Path:
    """Save the training networks' units (no held-out network) to ``destination``.

    Networks were probed at different sizes (64 and 96 pixels); every set is brought to the
    captioner's ``image_size`` first (images bilinear, masks by area then thresholded at half),
    which the processor would do anyway, so that the sets share one schema.
    """
    from milan_hf.milannotations import load_milannotations

    held_out = set(corpus["held_out"])
    if not held_out:
        raise ValueError(f"{corpus_dir}/corpus.json lists no held-out networks")
    parts = []
    for name in corpus["train"]:
        if name in held_out:
            raise ValueError(f"{name} is both a training and a held-out set in corpus.json")
        part = load_milannotations(name, data_dir=corpus_dir, split="all")
        parts.append(resize_exemplar_set(part, image_size))
    dataset = datasets.concatenate_datasets(parts)
    leaked = sorted(set(dataset["source"]) & held_out)
    if leaked:
        raise ValueError(f"held-out sets {leaked} leaked into the training data")
    dataset.save_to_disk(str(destination))
    return destination


def resize_exemplar_set(dataset: datasets.Dataset, size: int) -> datasets.Dataset:
    """Exemplar images and masks at ``size``×``size``."""
    features = dataset.features.copy()
    features[schema.MASKS] = datasets.List(datasets.Array2D((size, size), "uint8"))
    if features == dataset.features:
        return dataset

    def resize(row: dict) -> dict:
        row[schema.IMAGES] = [
            image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            for image in row[schema.IMAGES]
        ]
        row[schema.MASKS] = [
            np.asarray(
                Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(
                    (size, size), Image.Resampling.BOX
                )
            )
            >= 128
            for mask in row[schema.MASKS]
        ]
        row[schema.MASKS] = [mask.astype(np.uint8) for mask in row[schema.MASKS]]
        return row

    return dataset.map(resize, features=features, desc=f"resizing exemplars to {size}px")


def store_half_precision(trained: Path, output: Path) -> None:
    """Copy the trained captioner with float16 weights; ``config.json`` keeps float32 as the
    dtype to compute in, so ``from_pretrained`` upcasts on load."""
    from milan_hf.modeling_milan import MilanCaptionerModel
    from milan_hf.processing_milan import MilanProcessor

    model = MilanCaptionerModel.from_pretrained(trained, dtype=torch.float32)
    # The frozen backbone is the installed EfficientNet-Lite0 package's: from_pretrained
    # rebuilds it from there, so the checkpoint holds only what was trained (3.3 MB, not 9.5).
    model.config.save_backbone_weights = False
    model.half().save_pretrained(output)
    config_file = output / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    for nested in ("prior_config",):
        if isinstance(config.get(nested), dict):
            config[nested]["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    MilanProcessor.from_pretrained(trained).save_pretrained(output)
    shutil.copy(trained / "training_metrics.json", output / "training_metrics.json")


def render_card(fields: dict[str, Any]) -> str:
    from milan_hf.hub_cards import render_card as render

    return render("embedded_captioner", **fields)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    corpus = ensure_corpus(args.corpus)
    if args.evaluate_only:
        return evaluate_only(args, corpus)
    # Checked before training (minutes): only a folder of a captioner's files is replaced.
    require_own_output(
        args.output,
        metadata_file=training.METRICS_FILE,
        owned=training.OWNED_OUTPUT,
        what="--output",
    )
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="milan_hf_embedded_captioner_"))
    work.mkdir(parents=True, exist_ok=True)
    data = training_sets(args.corpus, corpus, work / "train_data", args.image_size)
    trained = work / "trained"
    metrics = training.main(
        [
            "--dataset", str(data),
            "--output-dir", str(trained),
            "--overwrite",
            "--image-size", str(args.image_size),
            "--synthetic-units", str(args.synthetic_units),
            "--synthetic-validation-units", str(args.synthetic_validation_units),
            "--synthetic-composition-share", str(args.synthetic_composition_share),
            "--mask-location-grid", str(args.mask_location_grid),
            *(["--mask-context-pooling"] if args.mask_context_pooling else []),
            *(["--mask-below-context"] if args.mask_below_context else []),
            *(["--exemplar-feature-norm"] if args.exemplar_feature_norm else []),
            "--threads", str(args.threads),
            "--embedding-size", str(args.embedding_size),
            "--hidden-size", str(args.hidden_size),
            "--dropout", str(args.dropout),
            "--batch-size", str(args.batch_size),
            "--learning-rate", str(args.learning_rate),
            "--max-epochs", str(args.max_epochs),
            "--patience", str(args.patience),
            "--prior-max-epochs", str(args.prior_max_epochs),
            "--seed", str(args.seed),
            "--feature-cache-dir", str(work / "features"),
            "--dataset-name", "the probe-world corpus (training networks) + synthetic units",
        ]
    )  # fmt: skip
    # The card reports the recipe's wall time (corpus preparation, encoding, training, sweep).
    metrics["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)
    (trained / training.METRICS_FILE).write_text(json.dumps(metrics, indent=2))

    with staged_directory(args.output) as staging:
        store_half_precision(trained, staging)
        evaluation = None
        if not args.skip_evaluation:
            evaluation = evaluate_known_units(staging, args.corpus, num_beams=args.eval_num_beams)
            (staging / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, default=str))
        (staging / "README.md").write_text(
            card_text(args, argv, corpus, metrics, evaluation, staging)
        )
        # Package data: readable by everyone (mkdtemp and some writers create owner-only files).
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
    size = sum(p.stat().st_size for p in args.output.iterdir()) / 1e6
    minutes = (time.perf_counter() - started) / 60
    print(f"wall time {minutes:.1f} min (training, sweep and held-out evaluation)")
    print(
        f"embedded captioner at {args.output} ({size:.1f} MB), "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    return 0


def evaluate_only(args: argparse.Namespace, corpus: dict[str, Any]) -> int:
    """Measure the captioner at ``args.output`` again and rewrite its evaluation and card."""
    if not (args.output / "training_metrics.json").is_file():
        raise FileNotFoundError(f"no trained captioner at {args.output}")
    metrics = json.loads((args.output / "training_metrics.json").read_text())
    if args.skip_evaluation:  # keep the evaluation already there (if any), rewrite the card
        saved = args.output / EVALUATION_FILE
        evaluation = json.loads(saved.read_text()) if saved.is_file() else None
    else:
        evaluation = evaluate_known_units(args.output, args.corpus, num_beams=args.eval_num_beams)
        # Rewritten in place, each file atomically: the captioner stays loadable throughout.
        write_text_atomically(
            args.output / EVALUATION_FILE, json.dumps(evaluation, indent=2, default=str)
        )
    # The card's reproduction command is the training run's (the defaults, on this corpus).
    card = card_text(args, ["--corpus", str(args.corpus)], corpus, metrics, evaluation, args.output)
    write_text_atomically(args.output / "README.md", card)
    if evaluation is not None:
        print(markdown_summary(evaluation))
    return 0


def encoder_extras(config: Any) -> str:
    """What the card says the encoder adds to the pooled features, from the config."""
    parts = []
    if config.mask_location_grid:
        grid = config.mask_location_grid
        parts.append(
            f"a {grid}×{grid} grid of where each mask lies plus its centroid, spread and area "
            "(`mask_location_grid`), so regions can be named"
        )
    if getattr(config, "mask_context_pooling", False):
        parts.append(
            "the deepest stage averaged outside the mask (`mask_context_pooling`), so what "
            'surrounds the unit\'s region (the other side of "above") reaches the decoder'
        )
    if getattr(config, "mask_below_context", False):
        parts.append(
            "the deepest stage averaged in the band below the mask (`mask_below_context`), so "
            'the decoder sees which side the rest lies on ("a above b": b is below)'
        )
    if getattr(config, "exemplar_feature_norm", False):
        parts.append(
            "and the features are layer-normalised before the decoder (`exemplar_feature_norm`)"
        )
    if not parts:
        return "The exemplar encoder is the original MILAN one (pooled features only)."
    return "The exemplar encoder appends " + "; ".join(parts) + "."


def benchmark_text(results: Path | None) -> str:
    """The card's known-unit benchmark: the tables of ``milan-hf benchmark``'s results.md."""
    if results is None:
        return (
            "Not measured for this card: run `milan-hf benchmark --output B --corpus <corpus>` "
            "and rewrite the card with `--evaluate-only --benchmark-results B/results.md`."
        )
    text = Path(results).read_text().strip()
    lines = text.splitlines()
    if lines and lines[0].startswith("#"):  # the file's own title; the card has a heading
        text = "\n".join(lines[1:]).strip()
    return text


def sweep_text(metrics: dict[str, Any]) -> str:
    """The decoding sweep of ``training_metrics.json`` as a markdown table."""
    from milan_hf.decoding_selection import markdown_table

    sweep = metrics.get("decoding_sweep")
    if not sweep:
        return "No sweep (no validation units of known meaning)."
    winner = next(row for row in sweep["table"] if row == sweep["winner"])
    return (
        f"On {sweep['units']} validation synthetic units (seed 500000, never the benchmark's "
        "seeds), strict concept accuracy:\n\n" + markdown_table(sweep["table"], winner)
    )


def card_text(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    corpus: dict[str, Any],
    metrics: dict[str, Any],
    evaluation: dict[str, Any] | None,
    folder: Path,
) -> str:
    """The embedded captioner's model card (``hub_cards/embedded_captioner.md`` filled in)."""
    from milan_hf.modeling_milan import MilanCaptionerModel

    model = MilanCaptionerModel.from_pretrained(folder)
    train_networks = [n for n in corpus["networks"] if not n["held_out"]]
    held_out_networks = [n for n in corpus["networks"] if n["held_out"]]

    def network_lines(networks):
        return "\n".join(
            f"| {n['name']} | {n['architecture']} | {n['task']} | "
            f"{', '.join(f'`{layer}`' for layer in n['layers'])} | {n['units']} |"
            for n in networks
        )

    accuracy = "not measured (trained with --skip-evaluation)"
    if evaluation is not None:
        accuracy = markdown_summary(evaluation)
    command = "python scripts/train_embedded_captioner.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    return render_card(
        {
            **training.trained_captioner_card_fields(model, metrics),
            "vocabulary_size": model.config.vocab_size,
            "train_networks": network_lines(train_networks),
            "held_out_networks": network_lines(held_out_networks),
            "num_images": corpus["num_images"],
            "held_out_accuracy": accuracy,
            "eval_num_beams": (evaluation or {}).get(
                "num_beams", model.generation_config.num_beams
            ),
            "command": command.strip(),
            "synthetic_units": metrics.get("sources", {}).get("synthetic_training", 0),
            "synthetic_validation_units": metrics.get("sources", {}).get("synthetic_validation", 0),
            "mask_location_grid": model.config.mask_location_grid,
            "encoder_extras": encoder_extras(model.config),
            "known_unit_benchmark": benchmark_text(getattr(args, "benchmark_results", None)),
            "decoding_sweep": sweep_text(metrics),
            "wall_minutes": metrics.get("wall_minutes", "not recorded"),
        }
    )
