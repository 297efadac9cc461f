"""Build the automatically annotated probe-world corpus in the original MILANNOTATIONS layout.

    python scripts/make_probe_annotations.py --output data/probe_milannotations
    python scripts/make_probe_annotations.py --output /tmp/tiny_corpus --tiny   # seconds

Trains the probe networks on first use (cached under ~/.cache/milan_hf/probe_models), extracts
exemplars on probe-world scenes, annotates every unit by concept-mask IoU (3 descriptions per
unit) and writes ``<output>/<network>/probeworld/`` per network plus ``<output>/corpus.json``.
Read it back with ``milan_hf.milannotations.load_milannotations("all", data_dir=<output>)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from milan_hf.probe_world.corpus import build_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="corpus directory")
    parser.add_argument("--num-images", type=int, default=1500, help="probe scenes per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="scene side for the probe nets")
    parser.add_argument(
        "--efficientnet-size", type=int, default=96, help="scene side for EfficientNet-Lite0"
    )
    parser.add_argument("--k", type=int, default=15, help="exemplars per unit")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny corpus (planted + two tiny nets) for tests"
    )
    parser.add_argument("--no-efficientnet", action="store_true")
    parser.add_argument("--no-objects", action="store_true", help="ignore the tuxpaint stamps")
    parser.add_argument("--model-cache", type=Path, help="where trained probe nets are cached")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        corpus = build_corpus(
            args.output,
            num_images=args.num_images,
            seed=args.seed,
            image_size=args.size,
            efficientnet_size=args.efficientnet_size,
            k=args.k,
            tiny=args.tiny,
            with_efficientnet=not args.no_efficientnet,
            use_stamps=not args.no_objects,
            model_cache_dir=args.model_cache,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"make_probe_annotations: error: {error}", file=sys.stderr)
        return 2
    summary = {key: corpus[key] for key in ("units", "descriptions", "vocabulary_size")}
    summary["build_seconds"] = corpus["build_seconds"]
    summary["networks"] = {n["name"]: n["units"] for n in corpus["networks"]}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
