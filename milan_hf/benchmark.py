"""Benchmark a captioner: the paper's table on held-out units, and accuracy where meaning is known.

:func:`run_benchmark` takes exemplar sets with reference descriptions (MILANNOTATIONS, the
probe-world corpus, or any exemplar-set dataset with a ``descriptions`` column) and a
``MilanCaptionerModel``, and

1. generates a description of every unit under several decoding settings
   (:func:`decoding_settings`): p(d|E) greedy, p(d|E) beam search, and PMI
   ``log p(d|E) − λ·log p(d)`` for each λ of a sweep. With the original "rerank" strategy one
   beam search per batch serves every λ: only the choice among its candidates changes;
2. on a probe-world corpus (``corpus.json`` present), regenerates the scenes the exemplars were
   cut from and re-runs the IoU annotator on them (:func:`annotate_probe_world_units`). This
   yields the NetDissect-style baseline row and the ground truth of units of known meaning:
   planted units (their function is fixed by construction) and IoU-labelled units (the
   annotator's concept expression). Re-annotating with the corpus seed must reproduce the
   corpus's own descriptions, which checks that the regenerated scenes are the right ones;
3. scores every method with :func:`milan_hf.evaluation.score_descriptions` (BERTScore F1 is the
   paper's number) overall and per set (the paper's Table 2/3 layout: rows = methods, columns =
   held-out sets), and with :func:`milan_hf.evaluation.concept_accuracy` by concept family.

On the probe world the references ARE the IoU annotator's phrasings, so the NetDissect-style
row is a ceiling there (same concept, other words), not a weak baseline as in the paper.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from milan_hf import schema
from milan_hf.inference import encode_rows, row_batches
from milan_hf.modeling_milan import MilanCaptionerModel, MilanGenerationOutput
from milan_hf.processing_milan import MilanProcessor

logger = logging.getLogger(__name__)

GREEDY = "p(d|E) greedy"
BEAM = "p(d|E) beam"
NETDISSECT = "NetDissect (IoU)"
DEFAULT_PMI_WEIGHTS = (0.0, 0.1, 0.2, 0.5, 1.0)
DEFAULT_NUM_BEAMS = 50

#: Column naming the set a unit comes from (``"alexnet/imagenet"``), as MILANNOTATIONS has it.
SOURCE = "source"
#: Ground-truth columns of the per-unit results.
CONCEPT, FAMILY, KNOWN_BY, CORRECT = "concept", "family", "known_by", "correct"
PLANTED, IOU_LABELLED = "planted", "iou"
#: Family of a concept expression with two terms ("red AND top", "red OR blue").
COMPOSITION = "composition"
#: Name of the planted-units network in a probe-world corpus (``probe_world.corpus``).
PLANTED_NETWORK = "planted"


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
            no_repeat_ngram_size=0,
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


# ---- the probe world: scenes, IoU annotations, ground truth ---------------------------------


@dataclass
class ProbeWorldCorpus:
    """A probe-world corpus directory (``milan_hf.probe_world.corpus``) and its ``corpus.json``."""

    root: Path
    info: dict[str, Any]
    _scene_masks: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return int(self.info["seed"])

    @property
    def held_out(self) -> list[str]:
        return list(self.info.get("held_out", []))

    def network(self, source: str) -> dict[str, Any]:
        for record in self.info["networks"]:
            if record["set"] == source or record["name"] == source:
                return record
        raise ValueError(
            f"Set {source!r} is not in {self.root / 'corpus.json'}; it lists "
            f"{[record['set'] for record in self.info['networks']]}."
        )

    def scene_problem(self) -> str | None:
        """Why this corpus's scenes cannot be regenerated here, or None when they can.

        Scenes are drawn by seed, so they come back exactly when the probe-world code
        (``world_version``) and the installed photographic cut-outs are those of the build.
        """
        from milan_hf.probe_world.concepts import load_stamps
        from milan_hf.probe_world.scenes import world_version

        if self.info.get("world_version") != world_version():
            return (
                f"{self.root / 'corpus.json'} was built by probe-world version "
                f"{self.info.get('world_version')!r}, this code draws version "
                f"{world_version()!r}: rebuild the corpus (scripts/make_probe_annotations.py) "
                "to get its concept masks"
            )
        wanted = sorted(self.info.get("object_categories", []))
        found = sorted({stamp.category for stamp in load_stamps()}) if wanted else []
        if found != wanted:
            return (
                f"{self.root} was built with object categories {wanted}, but the installed "
                f"cut-outs give {found}: its scenes cannot be regenerated here"
            )
        return None

    def scene_masks(self, image_size: int):
        """The concept masks of the corpus's scenes at ``image_size``, regenerated by seed."""
        problem = self.scene_problem()
        if problem is not None:
            raise ValueError(problem)
        if image_size not in self._scene_masks:
            from milan_hf.probe_world.annotation import SceneMasks
            from milan_hf.probe_world.concepts import load_stamps
            from milan_hf.probe_world.scenes import generate_scenes

            stamps = load_stamps() if self.info.get("object_categories") else ()
            scenes = generate_scenes(int(self.info["num_images"]), self.seed, image_size, stamps)
            self._scene_masks[image_size] = SceneMasks(list(scenes))
        return self._scene_masks[image_size]


def read_probe_world_corpus(path: str | Path) -> ProbeWorldCorpus | None:
    """The probe-world corpus at ``path``, or None when ``path`` has no ``corpus.json``."""
    corpus_file = Path(path) / "corpus.json"
    if not corpus_file.is_file():
        return None
    return ProbeWorldCorpus(Path(path), json.loads(corpus_file.read_text()))


def annotate_probe_world_units(
    corpus: ProbeWorldCorpus,
    exemplars: datasets.Dataset,
    seed: int,
    num_descriptions: int = 3,
    progress: bool = True,
) -> list:
    """Re-run the corpus's IoU annotator (``describe_by_iou``) on the rows of ``exemplars``.

    Rows need ``source`` (the corpus set), ``layer``, ``unit``, ``ids`` and ``masks``. Returns
    one ``Annotation`` per row, in row order. ``seed`` picks the phrasings: the corpus seed
    reproduces its descriptions, another seed words the same concepts differently.
    """
    from milan_hf.probe_world.annotation import describe_by_iou

    needed = [schema.LAYER, schema.UNIT, schema.IDS, schema.MASKS, SOURCE]
    missing = [column for column in needed if column not in exemplars.column_names]
    if missing:
        raise ValueError(f"Annotating probe-world units needs column(s) {missing}.")
    annotations: list = [None] * len(exemplars)
    sources = list(exemplars[SOURCE])
    for source in dict.fromkeys(sources):
        indices = [index for index, name in enumerate(sources) if name == source]
        image_size = int(corpus.network(source)["image_size"])
        columns = [schema.LAYER, schema.UNIT, schema.IDS, schema.MASKS]
        if schema.DEAD in exemplars.column_names:
            columns.append(schema.DEAD)
        rows = exemplars.select(indices).select_columns(columns)
        found = describe_by_iou(
            rows,
            corpus.scene_masks(image_size),
            seed=seed,
            num_descriptions=num_descriptions,
            progress=progress,
        )
        for index, annotation in zip(indices, found):
            annotations[index] = annotation
    return annotations


def expression_concept(expression: Sequence[str]) -> tuple[str, str]:
    """(concept string for ``concept_accuracy``, family) of an annotator expression.

    ``("concept", "red")`` -> ``("red", "colour")``; ``("and", "red", "top")`` and
    ``("or", "red", "blue")`` -> ``("red top", "composition")``: a correct description names
    both terms.
    """
    from milan_hf.probe_world.concepts import concept_family

    if expression[0] == "concept":
        return expression[1], concept_family(expression[1])
    if expression[0] in ("and", "or"):
        return " ".join(expression[1:]), COMPOSITION
    raise ValueError(f"Expression {tuple(expression)} names no concept.")


def probe_world_concept_phrases() -> dict[str, list[str]]:
    """Concept -> the phrases the probe world's grammar uses for it (nouns, adjectives, captions).

    Feeds :class:`milan_hf.evaluation.ConceptMatcher`, so that "crimson discs" names
    "red circle" and "great blue herons" names "bird".
    """
    from milan_hf.probe_world.concepts import all_concepts, load_stamps
    from milan_hf.probe_world.phrasing import EXTRA_ADJECTIVES, EXTRA_NOUNS, PATTERN_ADJECTIVES

    stamps = load_stamps()
    phrases: dict[str, list[str]] = {}
    for name, concept in all_concepts(stamps).items():
        words = [*concept.nouns, *concept.adjectives, *PATTERN_ADJECTIVES.get(name, ())]
        words += [*EXTRA_NOUNS.get(name, ()), *EXTRA_ADJECTIVES.get(name, ())]
        words += [stamp.caption for stamp in stamps if stamp.category == name]
        phrases[name] = list(dict.fromkeys(words))
    return phrases


def probe_world_ground_truth(
    corpus: ProbeWorldCorpus, exemplars: datasets.Dataset, annotations: Sequence
) -> list[dict[str, Any] | None]:
    """Per row of ``exemplars``: ``{concept, family, known_by}``, or None when not known.

    Planted units (the corpus's ``planted`` network) take the expression they compute by
    construction; other units take their IoU annotation when it found a concept.
    """
    from milan_hf.probe_world.planted import planted_units

    planted = {(unit.layer, unit.unit): unit.expression for unit in planted_units()}
    truth: list[dict[str, Any] | None] = []
    for row, annotation in zip(
        exemplars.select_columns([schema.LAYER, schema.UNIT, SOURCE]), annotations
    ):
        if corpus.network(row[SOURCE])["name"] == PLANTED_NETWORK:
            expression, known_by = planted.get((row[schema.LAYER], row[schema.UNIT])), PLANTED
        else:
            expression, known_by = annotation.expression, IOU_LABELLED
        if expression is None or expression[0] == "none":
            truth.append(None)
            continue
        concept, family = expression_concept(expression)
        truth.append({CONCEPT: concept, FAMILY: family, KNOWN_BY: known_by})
    return truth


def check_annotations_against_references(
    exemplars: datasets.Dataset,
    annotations: Sequence,
    concept_phrases: Mapping[str, Sequence[str]],
    min_agreement: float = 0.5,
) -> list[bool | None]:
    """Whether each unit's re-annotated concept is the one its corpus descriptions name.

    True when re-annotation reproduced the descriptions word for word, or when every
    reference description names the re-annotated concept (so a later change of the grammar's
    wording does not matter); False when some reference does not name it; None when the
    annotator found no concept (nothing to check). Raises ``ValueError`` when fewer than
    ``min_agreement`` of the checkable units agree: the regenerated scenes are then not the
    corpus's, or its annotator chose concepts differently.
    """
    from milan_hf.evaluation import ConceptMatcher

    matcher = ConceptMatcher(concept_phrases=concept_phrases)
    agreement: list[bool | None] = []
    for annotation, references in zip(annotations, exemplars[schema.DESCRIPTIONS]):
        if list(annotation.descriptions) == list(references):
            agreement.append(True)
        elif annotation.expression[0] == "none":
            agreement.append(None)
        else:
            concept = expression_concept(annotation.expression)[0]
            agreement.append(all(matcher.names(text, concept) for text in references))
    agreeing, checked = agreement.count(True), len(agreement) - agreement.count(None)
    if checked and agreeing < min_agreement * checked:
        raise ValueError(
            f"Re-annotating the corpus's units found the concept its descriptions name for "
            f"only {agreeing}/{checked} of them: the regenerated scenes or the annotator "
            "differ from the corpus's (was it built with other settings or code?)."
        )
    return agreement


# ---- scoring --------------------------------------------------------------------------------


#: Metrics whose result is only one score per unit (the corpus value is their mean).
PER_UNIT_ONLY_METRICS = ("bertscore", "embedding_cosine")


def _qualified_layers(exemplars: datasets.Dataset) -> list[str]:
    # Two networks may share layer names (conv1): key units by set and layer when sets differ.
    layers = list(exemplars[schema.LAYER])
    if SOURCE not in exemplars.column_names:
        return layers
    return [f"{source}::{layer}" for source, layer in zip(exemplars[SOURCE], layers)]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def score_methods(
    exemplars: datasets.Dataset,
    descriptions: Mapping[str, Sequence[str]],
    ground_truth: Sequence[dict[str, Any] | None] | None = None,
    metrics: Sequence[str] = ("bertscore", "bleu", "rouge", "embedding_cosine"),
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    concept_phrases: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, datasets.Dataset]]:
    """Score each method's descriptions against the references (and the ground truth).

    Returns ``(rows, per_unit)``: per method a summary (``score_descriptions``'s, plus
    ``by_set`` {set: {mean of each per-unit score, units}} and, with ground truth,
    ``accuracy`` over units of known meaning and ``ground_truth`` {planted|iou:
    ``concept_accuracy`` summary}), and a
    per-unit dataset (layer, unit, source, description, references, scores, concept, family,
    known_by, correct).
    """
    from milan_hf.evaluation import concept_accuracy, score_descriptions
    from milan_hf.metrics import load_metric

    for method, texts in descriptions.items():
        if len(texts) != len(exemplars):
            raise ValueError(f"{method}: {len(texts)} descriptions for {len(exemplars)} units.")
    # Metrics with only per-unit scores (the embedding ones, the slow ones) score every
    # method in one call: each reference, and each description several methods share, is
    # embedded once. Corpus-level metrics (BLEU, ROUGE) score one method at a time.
    joint_names = [name for name in metrics if name in PER_UNIT_ONLY_METRICS]
    separate_names = [name for name in metrics if name not in PER_UNIT_ONLY_METRICS]
    joint_modules = [load_metric(name) for name in joint_names]
    separate_modules = [load_metric(name) for name in separate_names]
    # score_descriptions finds a metric's kwargs by the module's name.
    joint_kwargs = {
        (module.name if name == "bertscore" else name): (metric_kwargs or {}).get(name, {})
        for name, module in zip(joint_names, joint_modules)
    }
    separate_kwargs = {name: (metric_kwargs or {}).get(name, {}) for name in separate_names}

    keyed_layers = _qualified_layers(exemplars)
    layers, units = list(exemplars[schema.LAYER]), list(exemplars[schema.UNIT])
    unit_references = list(exemplars[schema.DESCRIPTIONS])
    methods = list(descriptions)

    def keyed_dataset(copies: int, column: str, values: list) -> datasets.Dataset:
        # ``copies`` blocks of the units, block i keyed "i::<layer>" so that keys stay unique.
        prefixes = [f"{copy}::" if copies > 1 else "" for copy in range(copies)]
        return datasets.Dataset.from_dict(
            {
                schema.LAYER: [prefix + layer for prefix in prefixes for layer in keyed_layers],
                schema.UNIT: units * copies,
                column: values,
            }
        )

    joint_scores: dict[str, list[float]] = {}
    joint_summary: dict[str, Any] = {}
    if joint_modules:
        joint_scored, joint_summary = score_descriptions(
            keyed_dataset(
                len(methods), "description", [t for m in methods for t in descriptions[m]]
            ),
            keyed_dataset(len(methods), schema.DESCRIPTIONS, unit_references * len(methods)),
            metrics=joint_modules,
            metric_kwargs=joint_kwargs,
        )
        for column in joint_scored.column_names:
            if column not in (schema.LAYER, schema.UNIT, "description", "references"):
                joint_scores[column] = list(joint_scored[column])
    references = keyed_dataset(1, schema.DESCRIPTIONS, unit_references)
    sources = (
        list(exemplars[SOURCE]) if SOURCE in exemplars.column_names else ["(all)"] * len(exemplars)
    )
    truth = list(ground_truth) if ground_truth is not None else [None] * len(exemplars)
    known = [index for index, item in enumerate(truth) if item is not None]

    rows: dict[str, dict[str, Any]] = {}
    per_unit: dict[str, datasets.Dataset] = {}
    for position, (method, texts) in enumerate(descriptions.items()):
        predictions = keyed_dataset(1, "description", list(texts))
        scored, summary = score_descriptions(
            predictions, references, metrics=separate_modules, metric_kwargs=separate_kwargs
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
        score_columns = [
            column
            for column in scored.column_names
            if column not in (schema.LAYER, schema.UNIT, "description", "references")
        ]
        summary["by_set"] = {
            source: {
                **{
                    column: _mean([v for v, s in zip(scored[column], sources) if s == source])
                    for column in score_columns
                },
                "num_units": sources.count(source),
            }
            for source in dict.fromkeys(sources)
        }
        correct: list[bool | None] = [None] * len(exemplars)
        if known:
            summary["ground_truth"] = {}
            for known_by in (PLANTED, IOU_LABELLED):
                chosen = [i for i in known if truth[i][KNOWN_BY] == known_by]
                if not chosen:
                    continue
                subset_predictions = predictions.select(chosen)
                subset_truth = datasets.Dataset.from_dict(
                    {
                        schema.LAYER: [keyed_layers[i] for i in chosen],
                        schema.UNIT: [units[i] for i in chosen],
                        CONCEPT: [truth[i][CONCEPT] for i in chosen],
                        FAMILY: [truth[i][FAMILY] for i in chosen],
                    }
                )
                judged, accuracy = concept_accuracy(
                    subset_predictions, subset_truth, concept_phrases=concept_phrases
                )
                summary["ground_truth"][known_by] = accuracy
                for index, ok in zip(chosen, judged[CORRECT]):
                    correct[index] = ok
            judged_known = [correct[i] for i in known]
            summary["accuracy"] = sum(judged_known) / len(judged_known)
            summary["num_known_units"] = len(judged_known)
        rows[method] = summary
        per_unit[method] = (
            scored.remove_columns([schema.LAYER])
            .add_column(schema.LAYER, layers)
            .add_column(SOURCE, sources)
            .add_column(CONCEPT, [item[CONCEPT] if item else None for item in truth])
            .add_column(FAMILY, [item[FAMILY] if item else None for item in truth])
            .add_column(KNOWN_BY, [item[KNOWN_BY] if item else None for item in truth])
            .add_column(CORRECT, correct, feature=datasets.Value("bool"))
        )
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
    ground_truth = None
    concept_phrases = None
    metadata: dict[str, Any] = {}
    problem = probe_world.scene_problem() if probe_world is not None else None
    if problem is not None:
        # The reference metrics stand without concept masks; the baseline and accuracy do not.
        logger.warning("No NetDissect baseline or ground-truth accuracy: %s.", problem)
        metadata["probe_world"] = {"corpus": str(probe_world.root), "skipped": problem}
    elif probe_world is not None:
        reference_annotations = annotate_probe_world_units(
            probe_world, exemplars, seed=probe_world.seed, progress=progress
        )
        concept_phrases = probe_world_concept_phrases()
        agreement = check_annotations_against_references(
            exemplars, reference_annotations, concept_phrases
        )
        baseline = annotate_probe_world_units(
            probe_world, exemplars, seed=probe_world.seed + 1, num_descriptions=1, progress=False
        )
        descriptions[NETDISSECT] = [annotation.descriptions[0] for annotation in baseline]
        ground_truth = probe_world_ground_truth(probe_world, exemplars, reference_annotations)
        # An IoU label that the unit's corpus descriptions do not name is not trusted as truth.
        ground_truth = [
            item if item and (item[KNOWN_BY] == PLANTED or agrees) else None
            for item, agrees in zip(ground_truth, agreement)
        ]
        identical = sum(
            list(a.descriptions) == list(r)
            for a, r in zip(reference_annotations, exemplars[schema.DESCRIPTIONS])
        )
        metadata["probe_world"] = {
            "corpus": str(probe_world.root),
            "seed": probe_world.seed,
            "world_version": probe_world.info.get("world_version"),
            "units_reannotated_identically": identical,
            "units_whose_references_name_the_reannotated_concept": agreement.count(True),
            "units_whose_references_do_not": agreement.count(False),
            "known_units": {
                known_by: sum(1 for item in ground_truth if item and item[KNOWN_BY] == known_by)
                for known_by in (PLANTED, IOU_LABELLED)
            },
        }
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
        ground_truth,
        metrics=metrics,
        metric_kwargs=metric_kwargs,
        concept_phrases=concept_phrases,
    )
    timings["scoring"] = time.perf_counter() - scoring_started
    sources = list(exemplars[SOURCE]) if SOURCE in exemplars.column_names else []
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
