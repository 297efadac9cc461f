"""The known-unit benchmark: does a captioner name what units of known meaning detect?

Three parts, each a set of units whose concept expression is known:

1. **planted**: units planted into the weights of real timm architectures
   (``milan_hf.probe_world.planted_timm``), kept only when they fire on their concept (AUC on
   renders against controls >= ``min_auc``), saved as safetensors and described through the
   public path (``milan-hf describe --model NAME --checkpoint FILE --layers L --max-units N``)
   on probe-world scenes;
2. **synthetic**: synthetic units (``milan_hf.probe_world.synthetic_units``) from seeds at or
   above ``BENCHMARK_SEED``, never used for training;
3. **corpus**: the held-out networks of a probe-world corpus (``corpus.json``), their units
   re-annotated by concept-mask IoU on the corpus's scenes (units without a concept skipped).

Matching rule (``milan_hf.probe_world.phrasing.names_concept``): a concept is named when its
word or a grammar synonym appears ("ivory" = white, "pinstripes" = vertical stripes); "left"
does not count for "right". AND (attribute+thing, concept+region) needs both parts; OR needs
both for *strict* accuracy, either for *lenient*. *Filler*: a description that names no
concept but a region, or is one of the grammar's "no clear concept" phrases
(``phrasing.is_filler``). *Exact*: strictly named and no other concept (regions aside)
named, since the rule does not penalise extra concepts ("either red areas or boxes" names
red). *Defects*: ``phrasing.description_defects`` (doubled words or phrases, "parts of
parts", dangling "either", cut-off or over-long strings).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .probe_world import phrasing
from .probe_world.annotation import expression_text
from .probe_world.synthetic_units import BENCHMARK_SEED, expression_family

PLANTED, SYNTHETIC, CORPUS = "planted", "synthetic", "corpus"
DEFAULT_ARCHITECTURES = ("resnet18", "tf_efficientnet_lite0", "vit_tiny_patch16_224")
DEFAULT_MIN_AUC = 0.9


def score_description(description: str, expression: Sequence[str], **where: Any) -> dict[str, Any]:
    """One unit's verdict: strict/lenient naming, filler, defects (``where``: part, model…)."""
    return {
        **where,
        "concept": expression_text(expression),
        "family": expression_family(expression),
        "description": description,
        "strict": phrasing.expression_named(description, expression, strict=True),
        "exact": _names_exactly(description, expression),
        "lenient": phrasing.expression_named(description, expression, strict=False),
        "filler": phrasing.is_filler(description),
        "defects": phrasing.description_defects(description),
    }


def _names_exactly(description: str, expression: Sequence[str]) -> bool:
    """Strictly named, and no other concept but regions named ("either red areas or boxes"
    names red, but is not an exact description of a red unit)."""
    from .probe_world.concepts import REGION, concept_family

    if not phrasing.expression_named(description, expression, strict=True):
        return False
    named = {n for n in phrasing.named_concepts(description) if concept_family(n) != REGION}
    return named <= set(expression[1:])


def _describe_args(name, layer, checkpoint, images, units, output, captioner) -> list[str]:
    args = ["describe", "--model", name, "--checkpoint", str(checkpoint), "--layers", layer]
    args += ["--images", str(images), "--max-units", str(units), "--output", str(output)]
    args += ["--no-report", "--overwrite"]
    return args + (["--captioner", str(captioner)] if captioner is not None else [])


def _read_descriptions(path: Path) -> dict[tuple[str, int], str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {(r["layer"], int(r["unit"])): r["description"] for r in csv.DictReader(handle)}


def planted_part(
    work_dir: str | Path,
    captioner: str | Path | None = None,
    architectures: Sequence[str] = DEFAULT_ARCHITECTURES,
    num_images: int = 200,
    image_size: int = 128,
    min_auc: float = DEFAULT_MIN_AUC,
    auc_images: int = 16,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Plant, check, save and describe (through the CLI) units in each architecture."""
    from .cli import main as cli_main
    from .probe_world.planted_timm import check_planted_units, plant_units, save_planted_model
    from .probe_world.scenes import build_scene_dataset

    work_dir = Path(work_dir)
    images = work_dir / "probe-scenes"
    if not (images / "dataset_info.json").is_file():
        scenes = build_scene_dataset(num_images, BENCHMARK_SEED, image_size, use_stamps=False)
        scenes.save_to_disk(str(images))
    rows, notes = [], []
    for name in architectures:
        model, units = plant_units(name)
        checkpoint = save_planted_model(model, work_dir / f"{name}.safetensors")
        del model
        aucs = check_planted_units(name, checkpoint, units, num_images=auc_images)
        kept = [u for u in units if aucs[u.unit] >= min_auc]
        dropped = [f"{u.unit} ({expression_text(u.expression)}, AUC {aucs[u.unit]:.2f})"
                   for u in units if u not in kept]  # fmt: skip
        if dropped:
            notes.append(f"{name}: left out units that do not fire on their concept: "
                         + ", ".join(dropped))  # fmt: skip
        output = work_dir / f"describe-{name}"
        layer = units[0].layer
        count = max(u.unit for u in units) + 1
        status = cli_main(_describe_args(name, layer, checkpoint, images, count, output, captioner))
        if status:
            raise RuntimeError(f"milan-hf describe failed for {name} (exit status {status})")
        described = _read_descriptions(output / "descriptions.csv")
        for unit in kept:
            rows.append(
                score_description(
                    described[(layer, unit.unit)],
                    unit.expression,
                    part=PLANTED,
                    architecture=name,
                    layer=layer,
                    unit=unit.unit,
                    auc=round(aucs[unit.unit], 3),
                )
            )
    return rows, notes


def _decoding(model, processor, exemplars, batch_size: int):
    from .describer import describe_exemplars

    # The decoding ``milan-hf describe`` uses: the captioner's λ and beam, trigram blocking.
    described = describe_exemplars(
        exemplars, model, processor, no_repeat_ngram_size=3, batch_size=batch_size,
        progress=False,
    )  # fmt: skip
    return described["description"]


def synthetic_part(
    model,
    processor,
    num_units: int = 200,
    seed: int = BENCHMARK_SEED,
    image_size: int = 96,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Synthetic units of held-out seeds, described by the captioner."""
    from datasets import Dataset

    from .probe_world.synthetic_units import (
        SyntheticUnitSettings,
        iter_synthetic_units,
        synthetic_unit_features,
    )

    if seed < BENCHMARK_SEED:
        raise ValueError(f"benchmark seeds start at {BENCHMARK_SEED} (training's are below); "
                         f"got {seed}")  # fmt: skip
    settings = SyntheticUnitSettings(image_size=image_size)
    units = list(iter_synthetic_units(seed, num_units, settings))
    expressions = [_parse_expression(u["concept"]) for u in units]
    dataset = Dataset.from_list(units, features=synthetic_unit_features(image_size))
    descriptions = _decoding(model, processor, dataset, batch_size)
    return [
        score_description(
            text,
            expression,
            part=SYNTHETIC,
            architecture="synthetic",
            layer=unit["layer"],
            unit=unit["unit"],
        )  # fmt: skip
        for text, expression, unit in zip(descriptions, expressions, units)
    ]


def _parse_expression(concept: str) -> tuple[str, ...]:
    """``expression_text``'s inverse: ``red AND top`` -> ("and", "red", "top")."""
    for operator in ("AND", "OR", "ABOVE"):
        if f" {operator} " in concept:
            return (operator.lower(), *concept.split(f" {operator} "))
    return ("none",) if concept == "none" else ("concept", concept)


def corpus_part(
    model, processor, corpus_dir: str | Path, max_units: int | None = None, batch_size: int = 16
) -> list[dict[str, Any]]:
    """The corpus's held-out networks: IoU-annotated units of known meaning, described."""
    from .milannotations import load_milannotations
    from .probe_world import SceneMasks, build_scene_dataset, describe_by_iou
    from .probe_world.concepts import load_stamps

    corpus_dir = Path(corpus_dir)
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    stamps = bool(load_stamps()) and bool(corpus.get("object_categories"))
    rows: list[dict[str, Any]] = []
    for network in corpus["networks"]:
        if network["set"] not in corpus.get("held_out", []):
            continue
        exemplars = load_milannotations(network["set"], data_dir=corpus_dir, split="all")
        if max_units is not None:
            exemplars = exemplars.select(range(min(max_units, len(exemplars))))
        scenes = SceneMasks(
            build_scene_dataset(
                corpus["num_images"], corpus["seed"], network["image_size"], use_stamps=stamps
            )  # fmt: skip
        )
        annotations = describe_by_iou(exemplars, scenes, seed=corpus["seed"], progress=False)
        known = [i for i, a in enumerate(annotations) if a.expression[0] != "none"]
        if not known:
            continue
        descriptions = _decoding(model, processor, exemplars.select(known), batch_size)
        for index, text in zip(known, descriptions):
            annotation = annotations[index]
            rows.append(
                score_description(
                    text,
                    annotation.expression,
                    part=CORPUS,
                    architecture=network["name"],
                    layer=annotation.layer,
                    unit=annotation.unit,
                )  # fmt: skip
            )
    return rows


def _tally(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    count = len(rows)
    singles = [r for r in rows if r["family"] != "composition"]
    composed = [r for r in rows if r["family"] == "composition"]

    def share(selected, key):
        return round(sum(bool(r[key]) for r in selected) / len(selected), 3) if selected else None

    return {
        "units": count,
        "single_units": len(singles),
        "single_accuracy": share(singles, "strict"),
        "composition_units": len(composed),
        "composition_accuracy": share(composed, "strict"),
        "composition_lenient_accuracy": share(composed, "lenient"),
        "accuracy": share(rows, "strict"),
        "exact_accuracy": share(rows, "exact"),
        "filler_share": share(rows, "filler"),
        "defect_count": sum(bool(r["defects"]) for r in rows),
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Tallies per part, per (part, architecture) and per (part, family)."""
    summary: dict[str, Any] = {"by_part": {}, "by_architecture": {}, "by_family": {}}
    for part in dict.fromkeys(r["part"] for r in rows):
        selected = [r for r in rows if r["part"] == part]
        summary["by_part"][part] = _tally(selected)
        for key, field in (("by_architecture", "architecture"), ("by_family", "family")):
            for value in sorted({r[field] for r in selected}):
                group = [r for r in selected if r[field] == value]
                summary[key][f"{part}/{value}"] = _tally(group)
    return summary


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def results_markdown(summary: dict[str, Any], notes: Sequence[str] = ()) -> str:
    """The benchmark's tables: per part and architecture, then per family."""
    header = (
        "| part / architecture | units | single | composition (strict) | composition "
        "(lenient) | exact | filler | defects |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = ["## Known-unit benchmark", "", header]
    keys = ["single_accuracy", "composition_accuracy", "composition_lenient_accuracy"]
    keys += ["exact_accuracy", "filler_share", "defect_count"]
    for part, tally in summary["by_part"].items():
        groups = [(part, tally)] + [
            (f"{part} / {name.split('/', 1)[1]}", t)
            for name, t in summary["by_architecture"].items()
            if name.startswith(part + "/") and part != SYNTHETIC
        ]
        for label, t in groups:
            lines.append(f"| {label} | {t['units']} | " + " | ".join(_cell(t[k]) for k in keys)
                         + " |")  # fmt: skip
    lines += ["", "| part / family | units | accuracy (strict) | lenient | filler |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, t in summary["by_family"].items():
        lenient = t["composition_lenient_accuracy"] if t["composition_units"] else t["accuracy"]
        lines.append(f"| {name.replace('/', ' / ')} | {t['units']} | {_cell(t['accuracy'])} | "
                     f"{_cell(lenient)} | {_cell(t['filler_share'])} |")  # fmt: skip
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def run_known_unit_benchmark(
    output_dir: str | Path,
    captioner: str | Path | None = None,
    *,
    architectures: Sequence[str] = DEFAULT_ARCHITECTURES,
    num_images: int = 200,
    image_size: int = 128,
    synthetic_units: int = 200,
    seed: int = BENCHMARK_SEED,
    corpus_dir: str | Path | None = None,
    corpus_max_units: int | None = None,
    min_auc: float = DEFAULT_MIN_AUC,
    auc_images: int = 16,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run the three parts, write ``results.json`` and ``results.md`` to ``output_dir``.

    ``captioner`` None is the captioner embedded in the package. An empty ``architectures``
    or ``synthetic_units=0`` skips that part; a missing ``corpus_dir`` skips the corpus part
    with a note.
    """
    from .describer import load_captioner

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if architectures:
        planted, planted_notes = planted_part(
            output_dir / "planted", captioner, architectures, num_images, image_size,
            min_auc, auc_images,
        )  # fmt: skip
        rows += planted
        notes += planted_notes
    model, processor = load_captioner(captioner)
    if synthetic_units:
        rows += synthetic_part(model, processor, synthetic_units, seed, batch_size=batch_size)
    if corpus_dir is not None and (Path(corpus_dir) / "corpus.json").is_file():
        rows += corpus_part(model, processor, corpus_dir, corpus_max_units, batch_size)
    else:
        where = corpus_dir if corpus_dir is not None else "(none given)"
        notes.append(f"corpus part skipped: no probe-world corpus at {where}")
    summary = summarize(rows)
    results = {
        "captioner": str(captioner) if captioner is not None else "embedded",
        "settings": {
            "architectures": list(architectures),
            "num_images": num_images,
            "image_size": image_size,
            "synthetic_units": synthetic_units,
            "seed": seed,
            "corpus": str(corpus_dir) if corpus_dir is not None else None,
            "min_auc": min_auc,
        },  # fmt: skip
        "summary": summary,
        "notes": notes,
        "units": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(results_markdown(summary, notes))
    return results
