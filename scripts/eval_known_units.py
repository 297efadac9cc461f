#!/usr/bin/env python
"""How often a captioner names the right concept for units of known meaning, on the probe-world
networks held out of its training data, with PMI decoding and with p(d|E) alone.

    python scripts/eval_known_units.py --corpus data/probe_milannotations \\
        --captioner milan_hf/resources/captioner --output eval_known_units.json

Ground truth: the units of the held-out networks listed in the corpus's ``corpus.json`` are
annotated again by concept-mask IoU (``milan_hf.probe_world.describe_by_iou``) on the very
scenes the corpus was built from (rebuilt from its seed), which gives each unit's concept
expression (``red``, ``circle``, ``red AND top``...). Units whose best IoU is below the
annotator's floor have no known meaning and are left out. As a check, the results record the
fraction of those units whose corpus descriptions all name the re-annotated concept.

Each description is correct when it names the unit's concept by the rule of
``milan_hf.evaluation.concept_accuracy``, with the probe world's own nouns and adjectives for
every concept ("crimson discs" names "red circle"); compound expressions need both parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from milan_hf.probe_world.ground_truth import (
    DEFAULT_PMI_WEIGHTS,
    evaluate_known_units,
    markdown_summary,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, type=Path, help="probe-world corpus directory")
    parser.add_argument(
        "--captioner", help="captioner directory or Hub id (default: the embedded captioner)"
    )
    parser.add_argument(
        "--pmi-weights", type=float, nargs="+", default=list(DEFAULT_PMI_WEIGHTS), help="λ values"
    )
    parser.add_argument("--num-beams", type=int, help="beam width (default: the captioner's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="write the full results as JSON here")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        results = evaluate_known_units(
            args.captioner,
            args.corpus,
            pmi_weights=args.pmi_weights,
            num_beams=args.num_beams,
            batch_size=args.batch_size,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"eval_known_units: error: {error}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(json.dumps(results, indent=2, default=str))
    print(markdown_summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
