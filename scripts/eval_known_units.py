#!/usr/bin/env python
"""How often a captioner names the right concept for units of known meaning, on the probe-world
networks held out of its training data, with PMI decoding and with p(d|E) alone.

    python scripts/eval_known_units.py --corpus data/probe_milannotations \\
        --captioner milan_hf/resources/captioner --output eval_known_units.json

A thin caller of ``milan_hf.benchmark.evaluate_known_units``: the units of known meaning and
the matching rule (strict, and lenient for ``a OR b`` units) are those of
``milan_hf.probe_world.ground_truth``, the same as ``milan-hf evaluate`` reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from milan_hf.benchmark import evaluate_known_units
from milan_hf.probe_world.ground_truth import markdown_summary

DEFAULT_PMI_WEIGHTS = (0.2, 0.0)


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
