"""Benchmark a captioner: the paper's table on held-out units, and accuracy where meaning is known.

:func:`run_benchmark` takes exemplar sets with reference descriptions (MILANNOTATIONS, the
probe-world corpus, or any exemplar-set dataset with a ``descriptions`` column) and a
``MilanCaptionerModel``, and

1. generates a description of every unit under several decoding settings
   (:func:`decoding_settings`): p(d|E) greedy, p(d|E) beam search, and PMI
   ``log p(d|E) − λ·log p(d)`` for each λ of a sweep. With the original "rerank" strategy one
   beam search per batch serves every λ: only the choice among its candidates changes;
2. on a probe-world corpus (``corpus.json`` present), regenerates the scenes the exemplars were
   cut from and re-runs the IoU annotator on them (:mod:`milan_hf.probe_world.ground_truth`).
   This yields the NetDissect-style baseline row and the ground truth of units of known
   meaning: planted units (their function is fixed by construction) and IoU-labelled units (the
   annotator's concept expression). Re-annotating with the corpus seed must reproduce the
   corpus's own descriptions, which checks that the regenerated scenes are the right ones;
3. scores every method with :func:`milan_hf.evaluation.score_descriptions` (BERTScore F1 is the
   paper's number) overall and per set (the paper's Table 2/3 layout: rows = methods, columns =
   held-out sets), and with ``ground_truth.known_unit_accuracy`` (strict and lenient) by
   concept family.

:func:`evaluate_known_units` is the known-unit accuracy alone, per held-out network of a
probe-world corpus and per λ (``scripts/eval_known_units.py``).

On the probe world the references ARE the IoU annotator's phrasings, so the NetDissect-style
row is a ceiling there (same concept, other words), not a weak baseline as in the paper.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from milan_hf import schema
from milan_hf.inference import encode_rows, row_batches
from milan_hf.modeling_milan import MilanCaptionerModel, MilanGenerationOutput
from milan_hf.probe_world.ground_truth import (  # noqa: F401  (moved there; names kept here)
    COMPOSITION,
    CONCEPT,
    CORRECT,
    FAMILY,
    IOU_LABELLED,
    KNOWN_BY,
    PLANTED,
    PLANTED_NETWORK,
    GroundTruth,
    KnownUnit,
    ProbeWorldCorpus,
    annotate_probe_world_units,
    check_annotations_against_references,
    expression_concept,
    known_unit_accuracy,
    probe_world_concept_phrases,
    probe_world_ground_truth,
    probe_world_known_units,
    read_probe_world_corpus,
)
from milan_hf.processing_milan import MilanProcessor

logger = logging.getLogger(__name__)

GREEDY = "p(d|E) greedy"
BEAM = "p(d|E) beam"
NETDISSECT = "NetDissect (IoU)"
DEFAULT_PMI_WEIGHTS = (0.0, 0.1, 0.2, 0.5, 1.0)
DEFAULT_NUM_BEAMS = 50


def pmi_method_name(pmi_weight: float) -> str:
    return f"PMI λ={pmi_weight:g}"


# ---- decoding settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class DecodingSetting:
    """One row of the table: how to decode with the captioner."""

    method: str
    num_beams: int
    pmi_weight: float


def decoding_settings(
    pmi_weights: Sequence[float] = DEFAULT_PMI_WEIGHTS, num_beams: int = DEFAULT_NUM_BEAMS
) -> list[DecodingSetting]:
    """p(d|E) greedy, p(d|E) beam and one PMI row per non-zero λ (λ = 0 *is* the beam row)."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}.")
    for weight in pmi_weights:
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"PMI weights must be finite and >= 0, got {weight}.")
    settings = [DecodingSetting(GREEDY, 1, 0.0), DecodingSetting(BEAM, num_beams, 0.0)]
    for weight in dict.fromkeys(float(w) for w in pmi_weights):
        if weight != 0.0:
            settings.append(DecodingSetting(pmi_method_name(weight), num_beams, weight))
    return settings


def rerank_beam(output: MilanGenerationOutput, pmi_weight: float) -> torch.Tensor:
    """The sequence per unit that maximises ``log p(d|E) − λ·log p(d)`` among its beam.

    The same choice ``MilanCaptionerModel.generate(pmi_weight=λ, pmi_strategy="rerank")``
    makes, applied to the candidates of one beam search (run at any λ):
    ``MilanGenerationOutput.rerank``.
    """
    return output.rerank(pmi_weight).sequences


def generate_descriptions(
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    exemplars: datasets.Dataset,
    settings: Sequence[DecodingSetting],
    batch_size: int = 32,
    pmi_strategy: str = "rerank",
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Describe every unit of ``exemplars`` under each setting; returns method -> descriptions.

    Exemplars are encoded once per batch and shared by all settings. With ``"rerank"`` one
    beam search per beam width serves every λ; with ``"token"`` each λ has its own search.
    """
    if pmi_strategy not in ("rerank", "token"):
        raise ValueError(f"Unknown pmi_strategy {pmi_strategy!r}; expected 'rerank' or 'token'.")
    if captioner.prior is None:
        needing_prior = [s.method for s in settings if s.pmi_weight != 0.0]
        if needing_prior:
            raise ValueError(
                f"{needing_prior} need a prior p(d), but the captioner has none; "
                "use PMI weight 0 only."
            )
    descriptions: dict[str, list[str]] = {setting.method: [] for setting in settings}
    for rows in row_batches(exemplars, batch_size, progress):
        # The original decoding, as in the paper's table: no n-gram blocking.
        generate_kwargs = dict(
            **encode_rows(rows, captioner, processor), max_length=max_length,
            no_repeat_ngram_size=0, no_repeat_words=False,
        )  # fmt: skip
        shared_searches: dict[int, MilanGenerationOutput] = {}
        for setting in settings:
            if pmi_strategy == "token" and setting.pmi_weight != 0.0:
                sequences = captioner.generate(
                    num_beams=setting.num_beams,
                    pmi_weight=setting.pmi_weight,
                    pmi_strategy="token",
                    **generate_kwargs,
                ).sequences
            else:
                if setting.num_beams not in shared_searches:
                    shared_searches[setting.num_beams] = captioner.generate(
                        num_beams=setting.num_beams,
                        pmi_weight=0.0,
                        pmi_strategy="rerank",
                        **generate_kwargs,
                    )
                sequences = rerank_beam(shared_searches[setting.num_beams], setting.pmi_weight)
            descriptions[setting.method].extend(processor.batch_decode(sequences))
    return descriptions


# ---- scoring --------------------------------------------------------------------------------


#: Metrics whose result is only one score per unit (the corpus value is their mean).
PER_UNIT_ONLY_METRICS = ("bertscore", "embedding_cosine")


def _qualified_layers(exemplars: datasets.Dataset) -> list[str]:
    # Two networks may share layer names (conv1): key units by set and layer when sets differ.
    layers = list(exemplars[schema.LAYER])
    if schema.SOURCE not in exemplars.column_names:
        return layers
    return [f"{source}::{layer}" for source, layer in zip(exemplars[schema.SOURCE], layers)]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass(frozen=True)
class _UnitKeys:
    """(layer, unit) keys that stay unique across sets and across copies of the units."""

    layers: list[str]
    units: list[int]

    @classmethod
    def of(cls, exemplars: datasets.Dataset) -> _UnitKeys:
        return cls(_qualified_layers(exemplars), list(exemplars[schema.UNIT]))

    def dataset(self, column: str, values: list, copies: int = 1) -> datasets.Dataset:
        # ``copies`` blocks of the units, block i keyed "i::<layer>" so that keys stay unique.
        prefixes = [f"{copy}::" if copies > 1 else "" for copy in range(copies)]
        return datasets.Dataset.from_dict(
            {
                schema.LAYER: [prefix + layer for prefix in prefixes for layer in self.layers],
                schema.UNIT: self.units * copies,
                column: values,
            }
        )


#: Columns of ``score_descriptions``'s per-unit output that are not scores.
_NOT_SCORES = (schema.LAYER, schema.UNIT, schema.DESCRIPTION, "references")


def _metric_groups(
    metrics: Sequence[str], metric_kwargs: Mapping[str, Mapping[str, Any]] | None
) -> tuple[tuple[list, dict], tuple[list, dict]]:
    """((modules, kwargs) scored jointly over all methods, (modules, kwargs) one at a time)."""
    from milan_hf.metrics import load_metric

    joint_names = [name for name in metrics if name in PER_UNIT_ONLY_METRICS]
    separate_names = [name for name in metrics if name not in PER_UNIT_ONLY_METRICS]
    joint_modules = [load_metric(name) for name in joint_names]
    # score_descriptions finds a metric's kwargs by the module's name.
    joint_kwargs = {
        (module.name if name == "bertscore" else name): (metric_kwargs or {}).get(name, {})
        for name, module in zip(joint_names, joint_modules)
    }
    separate_kwargs = {name: (metric_kwargs or {}).get(name, {}) for name in separate_names}
    return (joint_modules, joint_kwargs), (
        [load_metric(n) for n in separate_names],
        separate_kwargs,
    )


def _joint_scores(
    keys: _UnitKeys,
    descriptions: Mapping[str, Sequence[str]],
    references: list,
    joint: tuple[list, dict],
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per-unit scores of every method, all methods scored in one call (method after method)."""
    from milan_hf.evaluation import score_descriptions

    modules, kwargs = joint
    if not modules:
        return {}, {}
    methods = list(descriptions)
    scored, summary = score_descriptions(
        keys.dataset(
            schema.DESCRIPTION, [t for m in methods for t in descriptions[m]], len(methods)
        ),
        keys.dataset(schema.DESCRIPTIONS, references * len(methods), len(methods)),
        metrics=modules,
        metric_kwargs=kwargs,
    )
    scores = {c: list(scored[c]) for c in scored.column_names if c not in _NOT_SCORES}
    return scores, summary


def _by_set(scored: datasets.Dataset, sources: list[str]) -> dict[str, dict[str, Any]]:
    """Mean of every per-unit score, and the number of units, per set."""
    score_columns = [column for column in scored.column_names if column not in _NOT_SCORES]
    return {
        source: {
            **{
                column: _mean([v for v, s in zip(scored[column], sources) if s == source])
                for column in score_columns
            },
            "num_units": sources.count(source),
        }
        for source in dict.fromkeys(sources)
    }


def _per_unit_results(
    scored: datasets.Dataset,
    layers: list[str],
    sources: list[str],
    truth: Sequence[KnownUnit | None],
    correct: list[bool | None],
) -> datasets.Dataset:
    records = [unit.record() if unit else {} for unit in truth]
    return (
        scored.remove_columns([schema.LAYER])
        .add_column(schema.LAYER, layers)
        .add_column(schema.SOURCE, sources)
        .add_column(CONCEPT, [record.get(CONCEPT) for record in records])
        .add_column(FAMILY, [record.get(FAMILY) for record in records])
        .add_column(KNOWN_BY, [record.get(KNOWN_BY) for record in records])
        .add_column(CORRECT, correct, feature=datasets.Value("bool"))
    )


def score_methods(
    exemplars: datasets.Dataset,
    descriptions: Mapping[str, Sequence[str]],
    ground_truth: Sequence[KnownUnit | None] | None = None,
    metrics: Sequence[str] = ("bertscore", "bleu", "rouge", "embedding_cosine"),
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    concept_phrases: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, datasets.Dataset]]:
    """Score each method's descriptions against the references (and the ground truth).

    Returns ``(rows, per_unit)``: per method a summary (``score_descriptions``'s, plus
    ``by_set`` {set: {mean of each per-unit score, units}} and, with ground truth,
    ``accuracy`` / ``lenient_accuracy`` over units of known meaning and ``ground_truth``
    {planted|iou: summary} (:func:`milan_hf.probe_world.ground_truth.known_unit_accuracy`)),
    and a per-unit dataset (layer, unit, source, description, references, scores, concept,
    family, known_by, correct).
    """
    from milan_hf.evaluation import score_descriptions

    for method, texts in descriptions.items():
        if len(texts) != len(exemplars):
            raise ValueError(f"{method}: {len(texts)} descriptions for {len(exemplars)} units.")
    # Metrics with only per-unit scores (the embedding ones, the slow ones) score every
    # method in one call: each reference, and each description several methods share, is
    # embedded once. Corpus-level metrics (BLEU, ROUGE) score one method at a time.
    joint, (separate_modules, separate_kwargs) = _metric_groups(metrics, metric_kwargs)
    keys = _UnitKeys.of(exemplars)
    unit_references = list(exemplars[schema.DESCRIPTIONS])
    joint_scores, joint_summary = _joint_scores(keys, descriptions, unit_references, joint)
    references = keys.dataset(schema.DESCRIPTIONS, unit_references)
    sources = (
        list(exemplars[schema.SOURCE])
        if schema.SOURCE in exemplars.column_names
        else ["(all)"] * len(exemplars)
    )
    truth = list(ground_truth) if ground_truth is not None else [None] * len(exemplars)

    rows: dict[str, dict[str, Any]] = {}
    per_unit: dict[str, datasets.Dataset] = {}
    for position, (method, texts) in enumerate(descriptions.items()):
        scored, summary = score_descriptions(
            keys.dataset(schema.DESCRIPTION, list(texts)),
            references,
            metrics=separate_modules,
            metric_kwargs=separate_kwargs,
        )
        block = slice(position * len(texts), (position + 1) * len(texts))
        for column, values in joint_scores.items():
            scored = scored.add_column(column, values[block])
            summary[column] = _mean(values[block])
        for key, value in joint_summary.items():
            if key not in joint_scores and key != "num_units":
                summary[key] = value
        # An empty description (the decoder ended at once) is a failure mode worth seeing.
        summary["empty_fraction"] = sum(not text.strip(". ") for text in texts) / len(texts)
        summary["by_set"] = _by_set(scored, sources)
        correct, accuracy = known_unit_accuracy(texts, truth, concept_phrases)
        for key in ("ground_truth", "accuracy", "lenient_accuracy", "num_known_units"):
            if key in accuracy:
                summary[key] = accuracy[key]
        rows[method] = summary
        layers = list(exemplars[schema.LAYER])
        per_unit[method] = _per_unit_results(scored, layers, sources, truth, correct)
    return rows, per_unit


# ---- the whole benchmark --------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` found: summaries per method, per-unit scores, metadata."""

    rows: dict[str, dict[str, Any]]
    per_unit: dict[str, datasets.Dataset]
    metadata: dict[str, Any]

    def markdown(self) -> str:
        """Results as markdown: overall table, BERTScore by set, accuracy by concept family."""
        return results_markdown(self.rows, self.metadata)


def _probe_world_truth(
    probe_world: ProbeWorldCorpus | None, exemplars: datasets.Dataset, progress: bool
) -> tuple[GroundTruth | None, list[str] | None, dict[str, Any]]:
    """(units of known meaning, NetDissect-style descriptions, metadata) on the probe world;
    None for both where there is no corpus or its scenes cannot be regenerated here."""
    if probe_world is None:
        return None, None, {}
    problem = probe_world.scene_problem()
    if problem is not None:
        # The reference metrics stand without concept masks; the baseline and accuracy do not.
        logger.warning("No NetDissect baseline or ground-truth accuracy: %s.", problem)
        return None, None, {"probe_world": {"corpus": str(probe_world.root), "skipped": problem}}
    known = probe_world_known_units(probe_world, exemplars, progress=progress)
    # Another seed words the same concepts differently from the references.
    baseline = annotate_probe_world_units(
        probe_world, exemplars, seed=probe_world.seed + 1, num_descriptions=1, progress=False
    )
    metadata = {
        "corpus": str(probe_world.root),
        "seed": probe_world.seed,
        "world_version": probe_world.info.get("world_version"),
        **known.metadata(exemplars),
    }
    return known, [a.descriptions[0] for a in baseline], {"probe_world": metadata}


def run_benchmark(
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    exemplars: datasets.Dataset,
    settings: Sequence[DecodingSetting],
    probe_world: ProbeWorldCorpus | None = None,
    metrics: Sequence[str] = ("bertscore", "bleu", "rouge", "embedding_cosine"),
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    pmi_strategy: str = "rerank",
    max_length: int | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Generate, score and (on the probe world) check descriptions of every unit.

    ``exemplars`` are exemplar-set rows with ``images`` and ``descriptions`` (references).
    With ``probe_world``, rows also need ``source``; the NetDissect-style row and the
    ground-truth accuracy are added.
    """
    if len(exemplars) == 0:
        raise ValueError("No units to evaluate: the exemplar set is empty.")
    for column in (schema.IMAGES, schema.MASKS, schema.DESCRIPTIONS):
        if column not in exemplars.column_names:
            raise ValueError(
                f"The evaluation data lacks column {column!r}; it has {exemplars.column_names}."
            )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    descriptions: dict[str, list[str]] = {}
    known, baseline, metadata = _probe_world_truth(probe_world, exemplars, progress)
    if baseline is not None:
        descriptions[NETDISSECT] = baseline
        timings["annotation"] = time.perf_counter() - started

    generation_started = time.perf_counter()
    captioner.eval()
    descriptions.update(
        generate_descriptions(
            captioner,
            processor,
            exemplars,
            settings,
            batch_size=batch_size,
            pmi_strategy=pmi_strategy,
            max_length=max_length,
            progress=progress,
        )
    )
    timings["generation"] = time.perf_counter() - generation_started

    scoring_started = time.perf_counter()
    rows, per_unit = score_methods(
        exemplars,
        descriptions,
        known.units if known else None,
        metrics=metrics,
        metric_kwargs=metric_kwargs,
        concept_phrases=known.concept_phrases if known else None,
    )
    timings["scoring"] = time.perf_counter() - scoring_started
    sources = list(exemplars[schema.SOURCE]) if schema.SOURCE in exemplars.column_names else []
    metadata.update(
        {
            "num_units": len(exemplars),
            "units_per_set": {s: sources.count(s) for s in dict.fromkeys(sources)},
            "settings": [setting.__dict__ for setting in settings],
            "pmi_strategy": pmi_strategy,
            "metrics": list(metrics),
            "metric_kwargs": {k: dict(v) for k, v in (metric_kwargs or {}).items()},
            "seconds": {key: round(value, 1) for key, value in timings.items()},
        }
    )
    return BenchmarkResult(rows, per_unit, metadata)


# ---- known-unit accuracy on the held-out networks of a probe-world corpus -------------------


def _known_unit_network(
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    corpus: ProbeWorldCorpus,
    network: Mapping[str, Any],
    settings: Sequence[DecodingSetting],
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, Any], list[KnownUnit], dict[str, list[str]]]:
    """Known-unit accuracy on one network: (its results, its known units, their descriptions)."""
    from milan_hf.milannotations import load_milannotations

    started = time.perf_counter()
    rows = load_milannotations(network["set"], data_dir=corpus.root, split="all")
    known = probe_world_known_units(corpus, rows, progress=False)
    annotated = [agrees for agrees in known.agreement if agrees is not None]
    keep = [index for index, unit in enumerate(known.units) if unit is not None]
    units = [known.units[index] for index in keep]
    descriptions = generate_descriptions(
        captioner, processor, rows.select(keep), settings, batch_size=batch_size, progress=progress
    )
    result: dict[str, Any] = {
        "units": network["units"],
        "known_units": len(units),
        "corpus_descriptions_name_the_concept": sum(annotated) / max(len(annotated), 1),
    }
    for setting in settings:
        result[setting.method] = known_unit_accuracy(
            descriptions[setting.method], units, known.concept_phrases
        )[1]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result, units, descriptions


def evaluate_known_units(
    captioner: str | Path | None,
    corpus_dir: str | Path,
    *,
    pmi_weights: Sequence[float] = (0.2, 0.0),
    num_beams: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Known-unit accuracy of ``captioner`` (a directory, Hub id, or None for the embedded one)
    on the held-out networks of a probe-world corpus, per network and overall, per λ.

    Units and the matching rule are those of :mod:`milan_hf.probe_world.ground_truth`; one beam
    search (``num_beams``, default the captioner's) per batch serves every λ.
    """
    from milan_hf.describer import load_captioner

    corpus = read_probe_world_corpus(corpus_dir)
    if corpus is None:
        raise FileNotFoundError(f"{corpus_dir} has no corpus.json: not a probe-world corpus")
    if not corpus.held_out:
        raise ValueError(f"{corpus.root / 'corpus.json'} lists no held-out networks")
    problem = corpus.scene_problem()
    if problem is not None:
        raise ValueError(problem)
    model, processor = load_captioner(captioner)
    beams = num_beams or model.generation_config.num_beams
    settings = [DecodingSetting(f"lambda={float(w)}", beams, float(w)) for w in pmi_weights]
    results: dict[str, Any] = {
        "captioner": str(captioner) if captioner else "embedded",
        "corpus": str(corpus.root),
        "held_out": corpus.held_out,
        "num_beams": beams,
        "networks": {},
    }
    all_units: list[KnownUnit] = []
    all_descriptions: dict[str, list[str]] = {setting.method: [] for setting in settings}
    for network in corpus.info["networks"]:
        if network["set"] in corpus.held_out:
            result, units, descriptions = _known_unit_network(
                model, processor, corpus, network, settings, batch_size, progress
            )
            results["networks"][network["name"]] = result
            all_units += units
            for method, texts in descriptions.items():
                all_descriptions[method] += texts
    phrases = probe_world_concept_phrases()
    results["overall"] = {}
    for method, texts in all_descriptions.items():
        correct, summary = known_unit_accuracy(texts, all_units, phrases)
        summary["examples"] = [
            {"description": text, **unit.record(), CORRECT: ok}
            for text, unit, ok in list(zip(texts, all_units, correct))[:12]
        ]
        results["overall"][method] = summary
    return results


# ---- markdown -------------------------------------------------------------------------------

#: Columns of the main table: the evaluation module's plus per-unit sentence BLEU (corpus BLEU
#: is 0 for descriptions shorter than 4 words, which many are).
MAIN_COLUMNS = (
    "bertscore_f1",
    "bleu",
    "sentence_bleu",
    "rougeL",
    "cosine_max",
    "accuracy",
    "empty_fraction",
    "num_units",
)
#: Headers of the summary keys that ``milan_hf.evaluation.TABLE_COLUMNS`` does not name.
EXTRA_HEADERS = {"sentence_bleu": "sentence BLEU", "empty_fraction": "Empty"}


def _header(key: str) -> str:
    from milan_hf.evaluation import TABLE_COLUMNS

    return TABLE_COLUMNS[key][0] if key in TABLE_COLUMNS else EXTRA_HEADERS.get(key, key)


def _renamed_headers(table: str) -> str:
    header, rest = table.split("\n", 1)
    for key, name in EXTRA_HEADERS.items():
        header = header.replace(f"| {key} |", f"| {name} |")
    return header + "\n" + rest


#: Per-unit score shown in the by-set table: the first of these that was computed.
BY_SET_METRICS = ("bertscore_f1", "rougeL", "cosine_max", "sentence_bleu")


def results_markdown(rows: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, Any]) -> str:
    """The evaluation as markdown: title, main table, BERTScore by set, accuracy by family."""
    from milan_hf.evaluation import accuracy_by_family_table, results_table

    title = metadata.get("title")
    parts = [f"# {title}\n"] if title else []
    columns = [key for key in MAIN_COLUMNS if any(key in row for row in rows.values())]
    table = _renamed_headers(results_table(rows, columns=columns))
    parts.append("## Reference metrics\n\n" + table)

    by_set_rows = {m: row["by_set"] for m, row in rows.items() if "by_set" in row}
    metric = next(
        (
            key
            for key in BY_SET_METRICS
            if any(key in by_set for row in by_set_rows.values() for by_set in row.values())
        ),
        None,
    )
    if metric is not None:
        sets = list(dict.fromkeys(s for by_set in by_set_rows.values() for s in by_set))
        cells = {
            m: {s: v.get(metric) for s, v in by_set.items()} for m, by_set in by_set_rows.items()
        }
        parts.append(
            f"## {_header(metric)} by set (paper Table 2 layout)\n\n" + results_table(cells, sets)
        )
    for known_by, heading in ((PLANTED, "planted units"), (IOU_LABELLED, "IoU-labelled units")):
        accuracy_rows = {
            m: row["ground_truth"][known_by]
            for m, row in rows.items()
            if known_by in row.get("ground_truth", {})
        }
        if accuracy_rows:
            parts.append(
                f"## Concept accuracy on {heading}, by concept family\n\n"
                + accuracy_by_family_table(accuracy_rows)
            )
    notes = metadata.get("notes")
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {note}" for note in notes) + "\n")
    return "\n".join(parts)


def unit_sample(num_units: int, max_units: int | None, seed: int) -> list[int] | None:
    """Indices of a seeded random sample of ``max_units`` units (sorted), or None for all."""
    if max_units is None or max_units >= num_units:
        return None
    if max_units < 1:
        raise ValueError(f"max_units must be at least 1, got {max_units}.")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_units, size=max_units, replace=False))
