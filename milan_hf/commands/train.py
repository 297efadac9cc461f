"""``milan-hf train``: train MILAN's captioner p(d|E) and its prior p(d) (``milan_hf.training``).

    milan-hf train --dataset corpus/ --output-dir milan-captioner \\
        --image-size 64 --hidden-size 256 --embedding-size 64 [--push-to-hub REPO]

Input: any exemplar-set dataset (``milan_hf.schema``) with materialised ``images`` and a
``descriptions`` column: a ``datasets`` folder written by ``save_to_disk``, parquet file(s), or
a MILANNOTATIONS-format directory (``--dataset <set or grouping> --data-dir DIR``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

DESCRIPTION = (
    "Train MILAN's captioner p(d|E) and its prior p(d) on exemplar sets with descriptions."
)


def add_data_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        help="save_to_disk folder, parquet file or folder, or a MILANNOTATIONS name (with "
        "--data-dir); optional when --synthetic-units are given",
    )
    data.add_argument("--data-dir", help="MILANNOTATIONS-format directory of sets")
    data.add_argument("--split", default="train", help="split to train on (default: train)")
    data.add_argument("--validation-fraction", type=float, default=0.1)
    data.add_argument("--min-word-frequency", type=int, default=1)
    data.add_argument(
        "--feature-cache-dir",
        default=None,
        help="where encoded exemplar features are cached (default: ~/.cache/milan_hf/features)",
    )
    synthetic = parser.add_argument_group("synthetic units of known meaning (probe world)")
    synthetic.add_argument(
        "--synthetic-units",
        type=int,
        default=0,
        help="synthetic training units (mixed with --dataset)",
    )
    synthetic.add_argument("--synthetic-seed", type=int, default=0)
    synthetic.add_argument(
        "--synthetic-validation-units",
        type=int,
        default=256,
        help="synthetic validation units (their own seed); decoding is chosen on them",
    )
    synthetic.add_argument("--synthetic-validation-seed", type=int, default=500_000)
    synthetic.add_argument(
        "--synthetic-image-size", type=int, help="scene size (default: --image-size)"
    )
    synthetic.add_argument("--synthetic-composition-share", type=float, default=0.5)
    synthetic.add_argument(
        "--synthetic-units-per-block",
        type=int,
        default=512,
        help="units that share one pool of scenes (and one cache entry)",
    )
    synthetic.add_argument("--synthetic-scenes-per-block", type=int, default=200)
    model = parser.add_argument_group("model")
    model.add_argument("--init-from", help="start from this captioner (directory or Hub id)")
    model.add_argument("--backbone", default="tf_efficientnet_lite0")
    model.add_argument(
        "--no-pretrained-backbone", action="store_true", help="random backbone weights (tests only)"
    )
    model.add_argument(
        "--backbone-out-indices",
        type=int,
        nargs="+",
        help="feature stages to pool (default: all); fewer stages give a smaller model",
    )
    model.add_argument(
        "--exclude-backbone-weights",
        action="store_true",
        help="leave the frozen pretrained backbone out of the checkpoint (reloaded from its "
        "source by from_pretrained): a few MB instead of ~15 for the default backbone",
    )
    model.add_argument("--image-size", type=int, default=224)
    model.add_argument("--embedding-size", type=int, default=128)
    model.add_argument("--hidden-size", type=int, default=512)
    model.add_argument("--dropout", type=float, default=0.5)
    model.add_argument("--prior-layers", type=int, default=2)
    model.add_argument(
        "--mask-location-grid",
        type=int,
        default=0,
        help="g: append a g×g grid of each mask plus its centroid/spread/area (0: off)",
    )
    model.add_argument(
        "--mask-context-pooling",
        action="store_true",
        help="append the deepest stage averaged outside each mask (what surrounds the region)",
    )
    model.add_argument(
        "--mask-below-context",
        action="store_true",
        help="append the deepest stage averaged in the band below each mask (what lies under "
        "the region: the other side of 'a above b')",
    )
    model.add_argument(
        "--exemplar-feature-norm",
        action="store_true",
        help="layer-normalise exemplar features before the decoder",
    )


def add_training_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    training = parser.add_argument_group("training")
    training.add_argument("--batch-size", type=int, default=64)
    training.add_argument("--learning-rate", type=float, default=1e-3)
    training.add_argument("--max-epochs", type=int, default=100)
    training.add_argument("--patience", type=int, default=4)
    training.add_argument("--prior-max-epochs", type=int, default=100)
    training.add_argument("--prior-patience", type=int, default=4)
    training.add_argument("--encode-batch-size", type=int, default=8, help="units per encoder pass")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's); 1 is often fastest on a busy shared CPU",
    )
    decoding = parser.add_argument_group("decoding chosen on validation units of known meaning")
    decoding.add_argument(
        "--sweep-pmi-weights", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    )
    decoding.add_argument("--sweep-beam-widths", type=int, nargs="+", default=[5, 10, 20])
    decoding.add_argument("--no-decoding-sweep", action="store_true", help="keep the defaults")
    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", required=True)
    output.add_argument("--overwrite", action="store_true")
    output.add_argument("--push-to-hub", metavar="REPO", help="upload the result to this repo")
    output.add_argument("--private", action="store_true")
    output.add_argument("--dataset-name", help="name of the training data on the model card")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``milan-hf train`` (and ``scripts/train_captioner.py``)."""
    add_data_and_model_arguments(parser)
    add_training_and_output_arguments(parser)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``milan-hf train``'s options from ``argv`` (default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser.parse_args(argv)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a captioner (and its prior) on exemplar sets with descriptions",
        description=DESCRIPTION
        + " Encodes every exemplar set once with the frozen backbone (cached), trains the prior "
        "and then the decoder with early stopping (validation loss, then validation BLEU), and "
        "saves the captioner with its prior, tokenizer, processor and model card atomically.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    train(args)
    return 0
