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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from milan_hf.evaluation import ConceptMatcher, concept_accuracy
from milan_hf.inference import encode_rows, load_captioner, row_batches
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
    rows: datasets.Dataset, corpus: dict[str, Any], scenes: SceneMasks, matcher: ConceptMatcher
) -> tuple[datasets.Dataset, float]:
    """The concept of each unit of known meaning (re-annotated by IoU on the corpus scenes),
    and the fraction of those units all of whose corpus descriptions name that concept (a
    check that the re-annotation agrees with the corpus)."""
    annotations = describe_by_iou(rows, scenes, seed=corpus["seed"], progress=False)
    truth: dict[str, list] = {
        "layer": [], "unit": [], "concept": [], "any_concept": [], "family": []
    }  # fmt: skip
    agreeing = 0
    for annotation, corpus_descriptions in zip(annotations, rows["descriptions"]):
        kind, *operands = annotation.expression
        if kind == "none":
            continue
        concept = " ".join(operands)
        truth["layer"].append(annotation.layer)
        truth["unit"].append(annotation.unit)
        truth["concept"].append(concept)
        # "a OR b" units fire for either: the lenient score accepts naming one of them.
        truth["any_concept"].append(list(operands) if kind == "or" else [concept])
        truth["family"].append(concept_family(operands[0]) if kind == "concept" else kind)
        agreeing += all(matcher.names(text, concept) for text in corpus_descriptions)
    return datasets.Dataset.from_dict(truth), agreeing / max(len(truth["unit"]), 1)


def describe_with_weights(
    rows: datasets.Dataset,
    model,
    processor,
    pmi_weights: Sequence[float],
    num_beams: int | None,
    batch_size: int,
    progress: bool,
) -> dict[float, datasets.Dataset]:
    """Descriptions of every row for each λ, from one beam search per batch.

    With the rerank strategy the beam search runs on p(d|E) alone and λ only picks among the
    final candidates, so every λ is read off the same beam: exactly what ``generate`` with
    that ``pmi_weight`` returns, at a fraction of the cost.
    """
    columns: dict[float, dict[str, list]] = {
        weight: {"layer": [], "unit": [], "description": []} for weight in pmi_weights
    }
    for batch in row_batches(rows, batch_size, progress):
        with torch.inference_mode():
            output = model.generate(
                **encode_rows(batch, model, processor),
                pmi_strategy="rerank",
                num_beams=num_beams,
                no_repeat_ngram_size=0,  # the original decoding
            )
        for weight in pmi_weights:
            texts = processor.batch_decode(output.rerank(weight).sequences)
            columns[weight]["layer"] += [row["layer"] for row in batch]
            columns[weight]["unit"] += [row["unit"] for row in batch]
            columns[weight]["description"] += texts
    return {weight: datasets.Dataset.from_dict(data) for weight, data in columns.items()}


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
    matcher = ConceptMatcher(concept_phrases=phrases)
    model, processor = load_captioner(captioner)
    results: dict[str, Any] = {
        "captioner": str(captioner) if captioner else "embedded",
        "corpus": str(corpus_dir),
        "held_out": corpus["held_out"],
        "num_beams": num_beams or model.generation_config.num_beams,
        "networks": {},
    }
    predictions = {weight: [] for weight in pmi_weights}
    truths = []
    scene_masks: dict[int, SceneMasks] = {}
    for network in corpus["networks"]:
        if network["set"] not in corpus["held_out"]:
            continue
        started = time.perf_counter()
        rows = load_milannotations(network["set"], data_dir=corpus_dir, split="all")
        size = network["image_size"]
        if size not in scene_masks:  # the scenes the corpus probed this network with
            scene_masks[size] = SceneMasks(
                build_scene_dataset(
                    corpus["num_images"], corpus["seed"], size, use_stamps=bool(stamps)
                )
            )
        truth, agreement = known_unit_concepts(rows, corpus, scene_masks[size], matcher)
        known = {(layer, unit) for layer, unit in zip(truth["layer"], truth["unit"])}
        rows = rows.filter(
            lambda layer, unit, known=known: (layer, unit) in known,
            input_columns=["layer", "unit"],
        )
        truths.append(truth)
        network_result: dict[str, Any] = {
            "units": network["units"],
            "known_units": len(truth),
            "corpus_descriptions_name_the_concept": agreement,
        }
        described_by_weight = describe_with_weights(
            rows, model, processor, pmi_weights, num_beams, batch_size, progress
        )
        for weight, described in described_by_weight.items():
            predictions[weight].append(described)
            _, summary = concept_accuracy(described, truth, concept_phrases=phrases)
            _, lenient = concept_accuracy(
                described, truth, concept_phrases=phrases, concept_column="any_concept"
            )
            summary["lenient_accuracy"] = lenient["accuracy"]
            network_result[f"lambda={weight}"] = summary
        network_result["seconds"] = round(time.perf_counter() - started, 1)
        results["networks"][network["name"]] = network_result
    truth = datasets.concatenate_datasets(truths)
    results["overall"] = {}
    for weight in pmi_weights:
        described = datasets.concatenate_datasets(predictions[weight])
        per_unit, summary = concept_accuracy(described, truth, concept_phrases=phrases)
        _, lenient = concept_accuracy(
            described, truth, concept_phrases=phrases, concept_column="any_concept"
        )
        summary["lenient_accuracy"] = lenient["accuracy"]
        summary["lenient_by_family"] = lenient["by_family"]
        summary["examples"] = per_unit.select(range(min(12, len(per_unit)))).to_list()
        results["overall"][f"lambda={weight}"] = summary
    return results


def markdown_summary(results: dict[str, Any]) -> str:
    """Accuracy per held-out network and overall, per λ; then per concept family."""
    weights = list(results["overall"])
    header = " | ".join(f"{w}: strict / lenient" for w in weights)
    lines = [f"| network | known units | {header} |", "|---|---|" + "---|" * len(weights)]

    def cells(summaries: list[dict], bold: bool = False) -> str:
        mark = "**" if bold else ""
        return " | ".join(
            f"{mark}{s['accuracy']:.3f}{mark} / {s['lenient_accuracy']:.3f}" for s in summaries
        )

    for name, network in results["networks"].items():
        summaries = [network[w] for w in weights]
        lines.append(f"| {name} | {network['known_units']} | {cells(summaries)} |")
    overall = [results["overall"][w] for w in weights]
    lines.append(f"| all held out | {overall[0]['num_units']} | {cells(overall, bold=True)} |")
    lines += ["", "| concept family | units | " + " | ".join(weights) + " |",
              "|---|---|" + "---|" * len(weights)]  # fmt: skip
    for family, tally in overall[0]["by_family"].items():
        accuracies = " | ".join(f"{s['by_family'][family]['accuracy']:.3f}" for s in overall)
        lines.append(f"| {family} | {tally['num_units']} | {accuracies} |")
    lines += [
        "",
        "Strict: the description names every part of the unit's concept (both operands of "
        "`a AND b` and `a OR b`). Lenient: naming either operand of an `a OR b` unit counts. "
        "Families `and` / `or` are compound concepts.",
    ]
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
