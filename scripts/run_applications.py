#!/usr/bin/env python
"""The paper's three applications, reproduced offline on the probe world, into one folder:

1. edit: the spurious-text shape classifier (``milan_hf.editing``), its units described by the
   embedded captioner, the units described as text ablated (least harmful first): validation,
   clean and adversarial accuracy before and after, and how many of the text units truly
   respond to written words;
2. audit: the same descriptions and those of a classifier trained without text, counted for
   "text" per layer (with the matching units' exemplars);
3. analysis: the spurious-text classifier's units ablated in order of each description property
   (adjectives, nouns, prepositions, length, word diversity), the figure ``analysis.png``.

About 15 minutes on 2 busy CPU cores the first time (the two classifiers train in ~2 minutes
each, then cached); ``OUTPUT/index.html`` links the pages.

    python scripts/run_applications.py --output applications
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch

from milan_hf.analysis import analyze_descriptions, save_analysis
from milan_hf.application_report import write_analysis_page, write_applications_index
from milan_hf.describer import load_description_outputs
from milan_hf.editing import TextClassifierConfig, load_classifier, run_spurious_text_experiment
from milan_hf.probe_world.probe_models import probe_transform


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("applications"))
    parser.add_argument("--layers", default="conv4,conv5")
    parser.add_argument("--split-images", type=int, default=400)
    parser.add_argument("--num-beams", type=int, help="captioner beam width (default: its own)")
    parser.add_argument("--points", type=int, default=11, help="accuracies per analysis curve")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-analysis", action="store_true", help="edit and audit only")
    return parser.parse_args(argv)


def run_analysis(output: Path, config: TextClassifierConfig, points: int) -> dict:
    """Ablate the spurious-text classifier's units by each description property."""
    descriptions, _ = load_description_outputs(output / "describe")
    model, _ = load_classifier(output / "classifier")
    validation = datasets.load_from_disk(str(output / "data" / "validation"))
    analysis = analyze_descriptions(
        model,
        descriptions,
        validation,
        transform=probe_transform(config.image_size),
        num_points=points,
    )
    files = save_analysis(analysis, output / "analysis")
    write_analysis_page(analysis.as_dict(), files["figure"], output / "analysis")
    return {
        "analysis_tagger": analysis.tagger,
        "analysis_curves": {
            name: {"num_ablated": c.num_ablated, "accuracy": c.accuracy}
            for name, c in analysis.curves.items()
        },
        "layer_shares": analysis.layer_shares,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = [layer.strip() for layer in args.layers.split(",")]
    config = TextClassifierConfig()
    summary = run_spurious_text_experiment(
        args.output,
        config,
        layers=layers,
        split_images=args.split_images,
        control=True,
        num_beams=args.num_beams,
    )
    edit, audited = summary["edit"], summary["audit"]
    report = {
        "edit_table": edit["table"],
        "chosen": edit["chosen"],
        "text_units": edit["num_text_units"],
        "truly_textual": edit["truly_textual"],
        "truly_textual_chosen": edit["truly_textual_chosen"],
        "responsive_per_layer": audited["responsive_per_layer"],
        "audit": {
            m["name"]: {"matching": m["matching"], "units": m["units"], "layers": m["layers"]}
            for m in audited["models"]
        },
    }
    pages = {
        "Editing: ablating text units": "edit.html",
        "Audit: text units with and without text": "audit.html",
    }
    if not args.no_analysis:
        report.update(run_analysis(args.output, config, args.points))
        pages["Analysis: description properties"] = "analysis/analysis.html"
    write_applications_index(args.output, pages)
    (args.output / "summary.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
