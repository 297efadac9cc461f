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
from functools import partial
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
        # Verification (run_verification) checks the same units.
        (work_dir / f"{name}.kept.json").write_text(json.dumps([u.unit for u in kept]))
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
    verify_units: int = 0,
    verify_top: int = 5,
    verify_images: int = 16,
    verify_weight: float = 1.0,
) -> dict[str, Any]:
    """Run the three parts, write ``results.json`` and ``results.md`` to ``output_dir``.

    ``verify_units`` > 0 adds verification by synthesis (``run_verification``) on that many
    synthetic units, the planted units and that many units per held-out corpus network.

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
    verification = None
    if verify_units:
        verification = run_verification(
            output_dir, model, processor, units=verify_units, seed=seed,
            planted=bool(architectures), corpus_dir=corpus_dir, top=verify_top,
            num_images=verify_images, weight=verify_weight,
        )  # fmt: skip
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
        **({"verification": verification} if verification is not None else {}),
    }
    markdown = results_markdown(summary, notes)
    if verification is not None:
        markdown += "\n" + verification_markdown(verification)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown)
    return results


# ----------------------------------------------------------------------------- verification
#
# Verification by synthesis on the same units: each unit's top candidates of the PMI beam are
# rendered in the probe world (``milan_hf.text_to_image``) and checked against the unit
# (``milan_hf.faithfulness``). Measured: the AUROC of faithfulness separating correct from
# incorrect candidates (correct: ``phrasing.expression_named``, strict), the accuracy of the
# PMI choice against the verification rerank's, and the cost per unit.


def _states_exactly(description: str, expression: Sequence[str]) -> bool:
    """Whether ``description`` says what the unit computes, no more and no less: it parses
    (``text_to_image.parse_description``, synonyms included) to the unit's expression, operand
    order aside for AND and OR. "White text" is not exact for a text unit, nor "red" for red
    on the left, though both name the unit's concept."""
    from .text_to_image import CannotRender, parse_description

    def canonical(expr: Sequence[str]) -> tuple[str, ...]:
        expr = tuple(expr)
        return (expr[0], *sorted(expr[1:])) if expr[0] in ("and", "or") else expr

    try:
        return canonical(parse_description(description)) == canonical(expression)
    except CannotRender:
        return False


def _verify_units(
    exemplars,
    expressions,
    captioner,
    processor,
    verifier_for,
    where,
    settings,
    probe=None,
    check_labels=False,
) -> list[dict[str, Any]]:
    """One row per unit: its candidates with their faithfulness and correctness, the PMI and
    the reranked choice. ``verifier_for(layer, unit)`` -> (Verifier, channel).

    ``check_labels``: also render a wording of each unit's own label and record its AUC
    (``label_auc``), for labels that are themselves inferred (the corpus's IoU annotations),
    as the planted units' concepts are checked before use. Not part of the cost."""
    from .faithfulness import (
        COMPOSITION_MARGIN,
        ConceptSurvey,
        Verifier,
        beam_candidates,
        best_composition,
        composition_hypotheses,
        expression_wording,
        hypothesis_key,
        rerank_by_faithfulness,
    )
    from .inference import collect_slots, encode_exemplar_sets

    label_verifiers: dict[int, Verifier] = {}
    # One survey per layer; synthetic units (one verifier each, one render cache) share its
    # renders, each scoring them for its own unit.
    survey_renders: dict[int, dict] = {}
    surveys: dict[int, tuple[Verifier, ConceptSurvey]] = {}  # holds the verifier: ids stay

    def survey_for(verifier: Verifier) -> ConceptSurvey:
        if id(verifier) not in surveys:
            renders = survey_renders.setdefault(id(verifier.render_cache), {})
            surveys[id(verifier)] = (verifier, ConceptSurvey(verifier, render_cache=renders))
        return surveys[id(verifier)][1]

    def label_auc(verifier: Verifier, channel: int, expression) -> float | None:
        wording = expression_wording(expression)
        if wording is None:
            return None
        if id(verifier) not in label_verifiers:  # own cost and renders: not verification's
            label_verifiers[id(verifier)] = Verifier(
                verifier.scorer, verifier.text_to_image, verifier.num_images, verifier.seed,
                verifier.image_size,
            )  # fmt: skip
        check = label_verifiers[id(verifier)].check(channel, wording)
        return check.auc if check.verifiable else None

    rows = []
    for start in range(0, len(exemplars), 16):
        batch = exemplars.select(range(start, min(start + 16, len(exemplars))))
        encoded = encode_exemplar_sets(collect_slots(batch, probe), captioner, processor)
        beams = beam_candidates(
            encoded, captioner, processor, 10**6, hypothesis_key,
            lambda text: not phrasing.description_defects(text),  # as describe keeps them
            keep_best=True,  # a unit whose whole beam is ill-formed still has a candidate
            no_repeat_ngram_size=3, num_beams=settings.get("num_beams"),
        )  # fmt: skip
        for offset, (record, whole_beam) in enumerate(zip(batch, beams)):
            expression = expressions[start + offset]
            verifier, channel = verifier_for(record["layer"], int(record["unit"]))
            beam = whole_beam[: settings["top"]]
            texts = [c["description"] for c in beam]
            # What the exemplars show, by the captioner: every concept of its whole beam.
            seen = set().union(*(phrasing.named_concepts(c["description"]) for c in whole_beam))
            checks = verifier.check_candidates(channel, texts)
            correct = [phrasing.expression_named(t, expression) for t in texts]
            exact = [_states_exactly(t, expression) for t in texts]
            chosen = rerank_by_faithfulness(texts, checks, settings["weight"])
            # MILAN + verification also composes: "a or b" from two faithful operands, and
            # what the concept survey points to (their renders are in the cost).
            survey = survey_for(verifier) if settings.get("survey", True) else None
            grounded = seen if settings.get("grounded", True) else None
            hypotheses = composition_hypotheses(texts, checks, survey, channel, grounded)
            best = best_composition(verifier, channel, texts, checks, hypotheses, chosen)
            margin = settings.get("margin", COMPOSITION_MARGIN)
            composed = best[:2] if best is not None and best[2] > margin else None
            compose_correct = (phrasing.expression_named(composed[0], expression)
                               if composed is not None else correct[chosen])  # fmt: skip
            compose_exact = (_states_exactly(composed[0], expression)
                             if composed is not None else exact[chosen])  # fmt: skip
            rows.append({
                **where, "layer": record["layer"], "unit": int(record["unit"]),
                "concept": expression_text(expression),
                "family": expression_family(expression),
                "candidates": [{"description": t, "auc": c.auc, "ratio": c.ratio,
                                "contrast_auc": c.contrast_auc, "score": c.score,
                                "verifiable": c.verifiable, "correct": ok, "exact": same}
                               for t, c, ok, same in zip(texts, checks, correct, exact)],
                "pmi_correct": bool(correct[0]), "rerank_correct": bool(correct[chosen]),
                "composed": composed[0] if composed is not None else None,
                # The best composition checked, chosen or not, and its AUC gain over the
                # best candidate (what COMPOSITION_MARGIN is set against).
                "best_composition": best[0] if best is not None else None,
                "composition_gain": round(best[2], 4) if best is not None else None,
                "compose_correct": bool(compose_correct),
                "pmi_exact": bool(exact[0]), "rerank_exact": bool(exact[chosen]),
                "compose_exact": bool(compose_exact),
                "any_correct": any(correct),
                **({"label_auc": label_auc(verifier, channel, expression)}
                   if check_labels else {}),
            })  # fmt: skip
    return rows


def _verification_tally(rows: Sequence[dict[str, Any]], cost) -> dict[str, Any]:
    from .faithfulness import roc_auc

    checked = [c for r in rows for c in r["candidates"] if c["verifiable"]]
    good = [c["auc"] for c in checked if c["correct"]]
    bad = [c["auc"] for c in checked if not c["correct"]]
    scored_good = [c["score"] for c in checked if c["correct"]]
    scored_bad = [c["score"] for c in checked if not c["correct"]]
    exact_good = [c["score"] for c in checked if c["exact"]]
    exact_bad = [c["score"] for c in checked if not c["exact"]]
    first = [r["candidates"][0] for r in rows]
    count = max(1, len(rows))
    composed_rows = [r for r in rows if r["family"] == "composition"]
    return {
        "units": len(rows),
        "faithfulness_auroc": round(roc_auc(good, bad), 3) if good and bad else None,
        "contrastive_auroc": round(roc_auc(scored_good, scored_bad), 3) if good and bad else None,
        "exact_auroc": round(roc_auc(exact_good, exact_bad), 3)
        if exact_good and exact_bad
        else None,
        "exact_candidates": len(exact_good),
        "auroc_pmi_choice": round(roc_auc(*_split_first(first)), 3)
        if len(set(c["correct"] for c in first if c["verifiable"])) == 2
        else None,
        "correct_candidates": len(good),
        "incorrect_candidates": len(bad),
        "unrenderable_share": round(
            1 - len(checked) / max(1, sum(len(r["candidates"]) for r in rows)), 3
        ),
        "pmi_accuracy": round(sum(r["pmi_correct"] for r in rows) / count, 3),
        "rerank_accuracy": round(sum(r["rerank_correct"] for r in rows) / count, 3),
        "compose_accuracy": round(sum(r["compose_correct"] for r in rows) / count, 3),
        "composed_share": round(sum(r["composed"] is not None for r in rows) / count, 3),
        "pmi_composition_accuracy": _share(composed_rows, "pmi_correct"),
        "compose_composition_accuracy": _share(composed_rows, "compose_correct"),
        "pmi_exact_accuracy": round(sum(r["pmi_exact"] for r in rows) / count, 3),
        "compose_exact_accuracy": round(sum(r["compose_exact"] for r in rows) / count, 3),
        "oracle_accuracy": round(sum(r["any_correct"] for r in rows) / count, 3),
        **(cost.per_unit() if cost is not None else {}),
    }


def _share(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    return round(sum(bool(r[key]) for r in rows) / len(rows), 3) if rows else None


def _split_first(first: Sequence[dict]) -> tuple[list[float], list[float]]:
    checked = [c for c in first if c["verifiable"]]
    good = [c["auc"] for c in checked if c["correct"]]
    return good, [c["auc"] for c in checked if not c["correct"]]


def _model_verifiers(load_model, settings, text_to_image):
    """``verifier_for`` over the layers of one model: one Verifier (and render cache) each."""
    from .faithfulness import Verifier, model_scorer

    verifiers: dict[str, Any] = {}
    model = load_model()

    def verifier_for(layer: str, unit: int):
        if layer not in verifiers:
            scorer = model_scorer(model, layer)
            verifiers[layer] = Verifier(
                scorer, text_to_image, settings["num_images"], 0, settings["image_size"]
            )
        return verifiers[layer], unit

    return verifier_for, verifiers


def verification_synthetic(captioner, processor, num_units, seed, settings, text_to_image):
    """Synthetic units: each unit's response is its known expression (``expression_scorer``)."""
    from datasets import Dataset

    from .faithfulness import VerificationCost, Verifier, expression_scorer
    from .probe_world.synthetic_units import (
        SyntheticUnitSettings,
        iter_synthetic_units,
        synthetic_unit_features,
    )

    units = list(iter_synthetic_units(seed, num_units, SyntheticUnitSettings(image_size=96)))
    expressions = [_parse_expression(u["concept"]) for u in units]
    exemplars = Dataset.from_list(units, features=synthetic_unit_features(96))
    cache: dict = {}
    cost = VerificationCost()
    by_key = {(u["layer"], int(u["unit"])): e for u, e in zip(units, expressions)}

    def verifier_for(layer: str, unit: int):
        scorer = expression_scorer([by_key[(layer, unit)]])
        verifier = Verifier(scorer, text_to_image, settings["num_images"], 0, 96, cost=cost,
                            render_cache=cache)  # fmt: skip
        return verifier, 0

    where = {"part": SYNTHETIC, "architecture": "synthetic"}
    rows = _verify_units(exemplars, expressions, captioner, processor, verifier_for, where,
                         settings)  # fmt: skip
    return rows, cost


def verification_planted(work_dir, captioner, processor, settings, text_to_image):
    """Planted units, re-read from the planted part's describe outputs (run it first)."""
    from .describe_output import load_description_outputs
    from .faithfulness import VerificationCost
    from .probe_images import load_probe_images
    from .probe_world.planted_timm import plant_units
    from .vision_models import load_vision_model

    probe = load_probe_images(str(Path(work_dir) / "probe-scenes"))
    rows, cost = [], VerificationCost()
    for name in DEFAULT_ARCHITECTURES:
        output = Path(work_dir) / f"describe-{name}"
        if not (output / "descriptions.csv").is_file():
            continue
        _, exemplars = load_description_outputs(output)
        _, units = plant_units(name)
        kept_file = Path(work_dir) / f"{name}.kept.json"
        kept = set(json.loads(kept_file.read_text())) if kept_file.is_file() else None
        # Only the units the benchmark kept: those checked to fire on their concept.
        known = {u.unit: u.expression for u in units if kept is None or u.unit in kept}
        keep = [i for i, u in enumerate(exemplars["unit"]) if u in known]
        exemplars = exemplars.select(keep)
        checkpoint = Path(work_dir) / f"{name}.safetensors"
        verifier_for, verifiers = _model_verifiers(
            partial(load_vision_model, name, checkpoint=checkpoint), settings, text_to_image
        )
        expressions = [known[u] for u in exemplars["unit"]]
        where = {"part": PLANTED, "architecture": name}
        rows += _verify_units(exemplars, expressions, captioner, processor, verifier_for,
                              where, settings, probe)  # fmt: skip
        for verifier in verifiers.values():
            cost.add(verifier.cost)
    return rows, cost


def _corpus_model(network: dict[str, Any], stamps):
    """The held-out network's trained probe model (cached weights; never retrained here)."""
    from dataclasses import replace

    from .probe_world.probe_models import default_probe_models, load_probe_model, probe_transform
    from .vision_models import load_vision_model

    size = int(network["image_size"])
    spec = next(s for s in default_probe_models() if s.name == network["name"])
    module, _ = load_probe_model(replace(spec, image_size=size), stamps, train_if_missing=False,
                                 progress=False)  # fmt: skip
    return load_vision_model(module.eval(), transform=probe_transform(size), input_size=size)


def verification_corpus(
    corpus_dir, captioner, processor, max_units, settings, text_to_image, networks=None
):
    """The corpus's held-out networks (or the ``networks`` named, e.g. training ones for
    validation): IoU-annotated units, their trained models verified."""
    from .faithfulness import VerificationCost
    from .milannotations import load_milannotations
    from .probe_world import SceneMasks, build_scene_dataset, describe_by_iou
    from .probe_world.concepts import load_stamps

    corpus_dir = Path(corpus_dir)
    corpus = json.loads((corpus_dir / "corpus.json").read_text())
    stamps = load_stamps() if corpus.get("object_categories") else ()
    rows, cost = [], VerificationCost()
    for network in corpus["networks"]:
        wanted = corpus.get("held_out", []) if networks is None else networks
        if network["set"] not in wanted and network["name"] not in wanted:
            continue
        exemplars = load_milannotations(network["set"], data_dir=corpus_dir, split="all")
        scene_set = build_scene_dataset(
            corpus["num_images"], corpus["seed"], network["image_size"], use_stamps=bool(stamps)
        )
        scenes = SceneMasks(scene_set)
        annotations = describe_by_iou(exemplars, scenes, seed=corpus["seed"], progress=False)
        known = [i for i, a in enumerate(annotations) if a.expression[0] != "none"]
        known = known[: max_units] if max_units is not None else known
        if not known:
            continue
        settings = {**settings, "image_size": int(network["image_size"])}
        verifier_for, verifiers = _model_verifiers(
            partial(_corpus_model, network, stamps), settings, text_to_image
        )
        where = {"part": CORPUS, "architecture": network["name"]}
        expressions = [annotations[i].expression for i in known]
        rows += _verify_units(exemplars.select(known), expressions, captioner, processor,
                              verifier_for, where, settings, check_labels=True)  # fmt: skip
        for verifier in verifiers.values():
            cost.add(verifier.cost)
    return rows, cost


def verification_markdown(verification: dict[str, Any]) -> str:
    """The verification table: AUROC, PMI vs rerank accuracy, cost per unit, per part."""
    lines = ["## Verification by synthesis (probe-world text-to-image)", "",
             f"Top {verification['settings']['top']} candidates of the PMI beam per unit, "
             f"{verification['settings']['num_images']} images + as many controls each; rerank: "
             f"PMI rank + {verification['settings']['weight']} x activation rank (by contrastive "
             "AUC: each candidate on the pooled renders of all of them, `Verifier.contrast`); "
             "+ compose: the \"a or b\" of the two most faithful single concepts, the operands "
             "alone of an AND, and what the concept survey points to (the other operand of an "
             "OR, the region of a gated concept: `faithfulness.ConceptSurvey`) are checked on "
             "one pool with the candidates, and the most faithful replaces the reranked choice "
             "when its contrastive AUC is above the choice's by more than `COMPOSITION_MARGIN` "
             "(`faithfulness.composed_choice`; *composed*: the share replaced). *Exact* "
             "accuracy: the choice states the unit's "
             "expression, no more and no less. AUROC of faithfulness separating correct from "
             "incorrect candidates: *named* labels a candidate correct when it names the unit's "
             "concept (the accuracy rule), *exact* when it states the unit's expression, no more "
             "and no less (\"white text\" is named, not exact, for a text unit); *own* scores "
             "each candidate by its AUC against its own controls (CoSy), *contrastive* by its "
             "AUC on the pooled renders.", "",
             "| part | units | AUROC named, own | AUROC named, contrastive | "
             "AUROC exact, contrastive | AUROC (PMI choices) | unrenderable | PMI accuracy | "
             "rerank accuracy | "
             "rerank + compose accuracy | composed | compositions: PMI | compositions: rerank "
             "+ compose | exact: PMI | exact: rerank + compose | "
             "correct in top | images rendered / unit | forward images / unit | s / unit |",
             "|---|" + "---:|" * 18]  # fmt: skip
    keys = ["units", "faithfulness_auroc", "contrastive_auroc", "exact_auroc", "auroc_pmi_choice",
            "unrenderable_share", "pmi_accuracy", "rerank_accuracy", "compose_accuracy",
            "composed_share", "pmi_composition_accuracy", "compose_composition_accuracy",
            "pmi_exact_accuracy", "compose_exact_accuracy", "oracle_accuracy",
            "images_rendered_per_unit", "forward_images_per_unit", "seconds_per_unit"]  # fmt: skip
    for part, tally in verification["by_part"].items():
        lines.append(f"| {part} | " + " | ".join(_cell(tally.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def run_verification(
    output_dir: str | Path,
    captioner_model: Any,
    processor: Any,
    *,
    units: int = 100,
    seed: int = BENCHMARK_SEED,
    planted: bool = True,
    corpus_dir: str | Path | None = None,
    top: int = 5,
    num_images: int = 16,
    weight: float = 1.0,
) -> dict[str, Any]:
    """Verification on ``units`` synthetic units, the planted units (when the planted part ran
    in ``output_dir``/planted) and up to ``units`` units per held-out corpus network."""
    from .faithfulness import LOW_FAITHFULNESS_AUC
    from .text_to_image import ProbeWorldTextToImage

    settings = {"top": top, "num_images": num_images, "weight": weight, "image_size": 128}
    stage = ProbeWorldTextToImage()
    parts: dict[str, tuple[list, Any]] = {}
    if units:
        parts[SYNTHETIC] = verification_synthetic(captioner_model, processor, units, seed,
                                                  settings, stage)  # fmt: skip
    if planted and (Path(output_dir) / "planted").is_dir():
        parts[PLANTED] = verification_planted(Path(output_dir) / "planted", captioner_model,
                                              processor, settings, stage)  # fmt: skip
    if corpus_dir is not None and (Path(corpus_dir) / "corpus.json").is_file():
        parts[CORPUS] = verification_corpus(corpus_dir, captioner_model, processor, units,
                                            settings, stage)  # fmt: skip
    verification = {
        "settings": {k: v for k, v in settings.items() if k != "image_size"},
        "by_part": {part: _verification_tally(rows, cost) for part, (rows, cost) in parts.items()},
    }
    for part, (rows, _) in parts.items():
        architectures = sorted({r["architecture"] for r in rows})
        for name in architectures if len(architectures) > 1 else []:
            selected = [r for r in rows if r["architecture"] == name]
            verification["by_part"][f"{part} / {name}"] = _verification_tally(selected, None)
    if CORPUS in parts:
        # IoU labels are inferred from natural probe images, where concepts co-occur (white
        # dots): only labels the unit itself responds to, rendered alone, are known meaning.
        threshold = LOW_FAITHFULNESS_AUC
        trusted = [r for r in parts[CORPUS][0] if (r.get("label_auc") or 0.0) >= threshold]
        verification["by_part"][f"{CORPUS}, label AUC >= {threshold}"] = (
            _verification_tally(trusted, None)
        )
    verification["units"] = [row for rows, _ in parts.values() for row in rows]
    return verification
