#!/usr/bin/env python
"""Train (or load from the cache) the spurious-text shape classifier of ``milan_hf.editing``
and its no-text control, and print their accuracies on the validation, clean and adversarial
splits. Seeded; a few minutes on 2 CPU cores the first time, cached afterwards under
``~/.cache/milan_hf/probe_models`` (``$MILAN_HF_CACHE`` overrides the root).

    python scripts/train_text_classifier.py            # both classifiers
    python scripts/train_text_classifier.py --only spurious --epochs 2 --train-images 400
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from milan_hf.ablation import evaluate_accuracy
from milan_hf.editing import TextClassifierConfig, load_text_classifier, split_dataset, with_config
from milan_hf.probe_world.probe_models import probe_transform


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = TextClassifierConfig()
    parser.add_argument("--only", choices=("spurious", "control"), help="train just one of them")
    parser.add_argument("--train-images", type=int, default=defaults.train_images)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--test-images", type=int, default=400, help="images per test split")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = TextClassifierConfig(train_images=args.train_images, epochs=args.epochs, seed=args.seed)
    configs = {"spurious": base, "control": with_config(base, text_probability=0.0)}
    results = {}
    for name, config in configs.items():
        if args.only not in (None, name):
            continue
        model, info = load_text_classifier(config)
        transform = probe_transform(config.image_size)
        results[name] = {
            split: evaluate_accuracy(
                model,
                split_dataset(config, split, args.test_images),
                transform=transform,
                progress=False,
            )
            for split in ("validation", "clean", "adversarial")
        }
        results[name]["train_seconds"] = info["train_seconds"]
        results[name]["key"] = config.key()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
