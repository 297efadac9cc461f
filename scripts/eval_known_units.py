#!/usr/bin/env python
"""How often a captioner names the right concept for units of known meaning, on the probe-world
networks held out of its training data, with PMI decoding and with p(d|E) alone.

    python scripts/eval_known_units.py --corpus data/probe_milannotations \\
        --captioner milan_hf/resources/captioner --output eval_known_units.json

Ground truth: the units of the held-out networks listed in the corpus's ``corpus.json`` are
annotated again by concept-mask IoU (``milan_hf.probe_world.describe_by_iou``) on the very
scenes the corpus was built from (rebuilt from its seed), which gives each unit's concept
expression (``red``, ``circle``, ``red AND top``...). Units whose best IoU is below the
annotator's floor have no known meaning and are left out. The check that the re-annotation
reproduces the corpus's own descriptions is printed.

Each description is correct when it names the unit's concept by the rule of
``milan_hf.evaluation.concept_accuracy``, with the probe world's own nouns and adjectives for
every concept ("crimson discs" names "red circle"); compound expressions need both parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from milan_hf.describe import describe_exemplars, load_captioner
from milan_hf.evaluation import concept_accuracy
from milan_hf.milannotations import load_milannotations
from milan_hf.probe_world import SceneMasks, all_concepts, build_scene_dataset, describe_by_iou
from milan_hf.probe_world.concepts import concept_family, load_stamps

DEFAULT_PMI_WEIGHTS = (0.2, 0.0)


def probe_world_concept_phrases(stamps: Sequence = ()) -> dict[str, list[str]]:
    """Every probe-world concept with the nouns and adjectives the world's grammar uses."""
    return {
        name: [*concept.nouns, *concept.adjectives]
        for name, concept in all_concepts(stamps).items()
    }


def known_unit_concepts(
    rows: datasets.Dataset, corpus: dict[str, Any], network: dict[str, Any], stamps: Sequence
) -> tuple[datasets.Dataset, float]:
    """The concept of each unit of known meaning (re-annotated by IoU on the corpus scenes),
    and the fraction of units whose re-annotation reproduces the corpus's descriptions."""
    scenes = build_scene_dataset(
        corpus["num_images"],
        corpus["seed"],
        network["image_size"],
        use_stamps=bool(stamps),
    )
    annotations = describe_by_iou(rows, SceneMasks(scenes), seed=corpus["seed"], progress=False)
    reproduced = sum(
        sorted(annotation.descriptions) == sorted(row_descriptions)
        for annotation, row_descriptions in zip(annotations, rows["descriptions"])
    ) / max(len(annotations), 1)
    truth: dict[str, list] = {"layer": [], "unit": [], "concept": [], "family": []}
    for annotation in annotations:
        kind, *operands = annotation.expression
        if kind == "none":
            continue
        truth["layer"].append(annotation.layer)
        truth["unit"].append(annotation.unit)
        truth["concept"].append(" ".join(operands))
        truth["family"].append(concept_family(operands[0]) if kind == "concept" else kind)
    return datasets.Dataset.from_dict(truth), reproduced


def evaluate_known_units(
    captioner: str | Path | None,
    corpus_dir: str | Path,
    *,
    pmi_weights: Sequence[float] = DEFAULT_PMI_WEIGHTS,
    num_beams: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Concept accuracy of ``captioner`` on the held-out networks of the corpus, per λ."""
    corpus_dir = Path(corpus_dir)
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    if not corpus.get("held_out"):
        raise ValueError(f"{corpus_dir}/corpus.json lists no held-out networks")
    stamps = load_stamps() if corpus.get("object_categories") else ()
    phrases = probe_world_concept_phrases(stamps)
    model, processor = load_captioner(captioner)
    results: dict[str, Any] = {
        "captioner": str(captioner) if captioner else "embedded",
        "corpus": str(corpus_dir),
        "held_out": corpus["held_out"],
        "num_beams": num_beams or model.config.beam_size,
        "networks": {},
    }
    predictions = {weight: [] for weight in pmi_weights}
    truths = []
    for network in corpus["networks"]:
        if network["set"] not in corpus["held_out"]:
            continue
        started = time.perf_counter()
        rows = load_milannotations(network["set"], data_dir=corpus_dir, split="all")
        truth, reproduced = known_unit_concepts(rows, corpus, network, stamps)
        known = {(layer, unit) for layer, unit in zip(truth["layer"], truth["unit"])}
        rows = rows.filter(
            lambda layer, unit, known=known: (layer, unit) in known,
            input_columns=["layer", "unit"],
        )
        truths.append(truth)
        network_result: dict[str, Any] = {
            "units": network["units"],
            "known_units": len(truth),
            "reannotation_reproduces_corpus": reproduced,
        }
        for weight in pmi_weights:
            described = describe_exemplars(
                rows,
                model,
                processor,
                pmi_weight=weight,
                num_beams=num_beams,
                batch_size=batch_size,
                progress=progress,
            )
            predictions[weight].append(described)
            _, summary = concept_accuracy(described, truth, concept_phrases=phrases)
            network_result[f"lambda={weight}"] = summary
        network_result["seconds"] = round(time.perf_counter() - started, 1)
        results["networks"][network["name"]] = network_result
    truth = datasets.concatenate_datasets(truths)
    results["overall"] = {}
    for weight in pmi_weights:
        described = datasets.concatenate_datasets(predictions[weight])
        per_unit, summary = concept_accuracy(described, truth, concept_phrases=phrases)
        summary["examples"] = per_unit.select(range(min(12, len(per_unit)))).to_list()
        results["overall"][f"lambda={weight}"] = summary
    return results


def markdown_summary(results: dict[str, Any]) -> str:
    """One table: accuracy per held-out network and overall, per λ."""
    weights = [key for key in results["overall"]]
    lines = [
        "| network | known units | " + " | ".join(f"accuracy, {w}" for w in weights) + " |",
        "|---|---|" + "---|" * len(weights),
    ]
    for name, network in results["networks"].items():
        cells = [f"{network[w]['accuracy']:.3f}" for w in weights]
        lines.append(f"| {name} | {network['known_units']} | " + " | ".join(cells) + " |")
    overall = results["overall"]
    cells = [f"**{overall[w]['accuracy']:.3f}**" for w in weights]
    lines.append(
        f"| all held out | {overall[weights[0]]['num_units']} | " + " | ".join(cells) + " |"
    )
    return "\n".join(lines)


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
