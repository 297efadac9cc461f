"""Score generated unit descriptions: reference metrics, concept accuracy, tables, model cards.

Two kinds of evaluation:

* :func:`score_descriptions` compares each unit's generated description with the unit's
  reference (human or automatic) descriptions using the metrics of :mod:`milan_hf.metrics`
  (BERTScore F1 is MILAN's headline number).
* :func:`concept_accuracy` checks, for units whose meaning is known (the probe world's planted
  and IoU-labelled units), whether the description names the unit's concept.

Both join predictions and ground truth on ``(layer, unit)``. Their summaries feed
:func:`results_table` (markdown), :func:`save_evaluation` (markdown + JSON + per-unit dataset)
and :func:`add_eval_results_to_card` / :func:`push_eval_results` (Hub model-index metadata).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import evaluate
from huggingface_hub import EvalResult, HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError
from rouge_score.tokenizers import DefaultTokenizer

from milan_hf import schema
from milan_hf.metrics import METRICS, load_metric
from milan_hf.staged_output import staged_directory, staged_file

#: Column of the generated description in a predictions dataset.
DESCRIPTION = schema.DESCRIPTION
#: Columns of the per-unit scores dataset besides the metric columns.
REFERENCES = "references"
METHOD = "method"

DEFAULT_METRICS = ("bertscore", "bleu", "rouge", "embedding_cosine")

#: Summary key -> (table header, number format). Also the order of the table's columns.
TABLE_COLUMNS: dict[str, tuple[str, str]] = {
    "bertscore_f1": ("BERTScore F1", ".3f"),
    "bleu": ("BLEU", ".1f"),
    "rougeL": ("ROUGE-L", ".3f"),
    "cosine_max": ("Cosine (max)", ".3f"),
    "cosine_mean": ("Cosine (mean)", ".3f"),
    "accuracy": ("Accuracy", ".3f"),
    "num_units": ("Units", "d"),
}

#: Summary key -> (model-index metric type, pretty name) for model cards.
CARD_METRICS: dict[str, tuple[str, str]] = {
    "bertscore_f1": ("bertscore", "BERTScore F1"),
    "bleu": ("bleu", "BLEU"),
    "rougeL": ("rouge", "ROUGE-L"),
    "cosine_max": ("cosine_similarity", "Embedding cosine (max)"),
    "accuracy": ("accuracy", "Concept accuracy"),
}


# ---- joining predictions with ground truth ---------------------------------------------------


def _require_columns(dataset: datasets.Dataset, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {what} dataset lacks column(s) {missing}; it has {dataset.column_names}."
        )


def _rows_by_unit(dataset: datasets.Dataset, what: str) -> dict[tuple[str, int], dict[str, Any]]:
    rows = {}
    for row in dataset:
        key = (row[schema.LAYER], int(row[schema.UNIT]))
        if key in rows:
            raise ValueError(f"The {what} dataset has unit {key} more than once.")
        rows[key] = row
    return rows


def _describe_keys(keys: list[tuple[str, int]], limit: int = 5) -> str:
    shown = ", ".join(f"{layer}/{unit}" for layer, unit in keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} unit(s): {shown}{more}"


def join_on_units(
    predictions: datasets.Dataset,
    truth: datasets.Dataset,
    truth_columns: Sequence[str],
    truth_name: str = "references",
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair each prediction row with the ground-truth row of the same ``(layer, unit)``.

    Pairs come in the predictions' order. Raises ``ValueError`` when a column is missing, a
    unit appears twice on one side, or a unit is on one side only (naming those units).
    """
    _require_columns(predictions, [schema.LAYER, schema.UNIT, DESCRIPTION], "predictions")
    _require_columns(truth, [schema.LAYER, schema.UNIT, *truth_columns], truth_name)
    # Only the needed columns: an exemplar set's masks would be decoded for nothing.
    predicted = _rows_by_unit(
        predictions.select_columns([schema.LAYER, schema.UNIT, DESCRIPTION]), "predictions"
    )
    expected = _rows_by_unit(
        truth.select_columns(list(dict.fromkeys([schema.LAYER, schema.UNIT, *truth_columns]))),
        truth_name,
    )
    without_truth = [key for key in predicted if key not in expected]
    without_prediction = [key for key in expected if key not in predicted]
    if without_truth or without_prediction:
        problems = []
        if without_truth:
            problems.append(f"no {truth_name} for {_describe_keys(without_truth)}")
        if without_prediction:
            problems.append(f"no prediction for {_describe_keys(without_prediction)}")
        raise ValueError("Predictions and " + truth_name + " differ: " + "; ".join(problems))
    if not predicted:
        raise ValueError("No units to evaluate: the predictions dataset is empty.")
    return [(row, expected[key]) for key, row in predicted.items()]


# ---- reference metrics ----------------------------------------------------------------------


def _registered_name(metric: evaluate.EvaluationModule) -> str:
    # An instance of one of our metrics answers to its registry name ("bertscore"), also when
    # loaded with evaluate.load (which imports a copy of the class); others to their own name.
    for name, metric_class in METRICS.items():
        if type(metric).__name__ == metric_class.__name__:
            return name
    return metric.name


def _normalize_text(text: str) -> str:
    return text.lower().strip(". ")


def score_descriptions(
    predictions: datasets.Dataset,
    references: datasets.Dataset,
    metrics: Sequence[str | evaluate.EvaluationModule] = DEFAULT_METRICS,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    normalize: bool = True,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Score each unit's generated description against the unit's reference descriptions.

    Args:
        predictions: columns ``layer``, ``unit``, ``description`` (one row per unit).
        references: columns ``layer``, ``unit``, ``descriptions`` (list of strings per unit),
            e.g. an exemplar set with descriptions.
        metrics: metric names from :data:`milan_hf.metrics.METRICS` or metric instances (pass
            instances to reuse them across calls).
        metric_kwargs: per metric name, extra ``compute`` arguments, e.g.
            ``{"bertscore": PAPER_BERTSCORE_SETTINGS}``.
        normalize: lowercase every text and strip leading/trailing dots and spaces before
            scoring, as the original MILAN evaluation does ("Red circles." == "red circles").
            The per-unit dataset keeps the texts as given.

    Returns:
        ``(per_unit, summary)``: a dataset with ``layer``, ``unit``, ``description``,
        ``references`` and one column per per-unit score (``bertscore_f1``, ``sentence_bleu``,
        ``rougeL``, ``cosine_max``…), in the predictions' order; and a dict with ``num_units``,
        the mean of every per-unit score, and the corpus-level values (``bleu`` is corpus BLEU).
    """
    pairs = join_on_units(predictions, references, [schema.DESCRIPTIONS])
    for prediction, reference in pairs:
        if not reference[schema.DESCRIPTIONS]:
            key = (prediction[schema.LAYER], prediction[schema.UNIT])
            raise ValueError(f"Unit {key[0]}/{key[1]} has no reference descriptions.")
    texts = [prediction[DESCRIPTION] for prediction, _ in pairs]
    unit_references = [list(reference[schema.DESCRIPTIONS]) for _, reference in pairs]

    if normalize:
        scored_texts = [_normalize_text(text) for text in texts]
        scored_references = [[_normalize_text(text) for text in unit] for unit in unit_references]
    else:
        scored_texts, scored_references = texts, unit_references

    summary: dict[str, Any] = {"num_units": len(pairs)}
    per_unit_scores = _compute_metrics(
        metrics, metric_kwargs, scored_texts, scored_references, summary
    )

    per_unit = datasets.Dataset.from_dict(
        {
            schema.LAYER: [prediction[schema.LAYER] for prediction, _ in pairs],
            schema.UNIT: [int(prediction[schema.UNIT]) for prediction, _ in pairs],
            DESCRIPTION: texts,
            REFERENCES: unit_references,
            **per_unit_scores,
        },
        features=datasets.Features(
            {
                schema.LAYER: datasets.Value("string"),
                schema.UNIT: datasets.Value("int64"),
                DESCRIPTION: datasets.Value("string"),
                REFERENCES: datasets.List(datasets.Value("string")),
                **{key: datasets.Value("float64") for key in per_unit_scores},
            }
        ),
    )
    return per_unit, summary


def _compute_metrics(
    metrics: Sequence[str | evaluate.EvaluationModule],
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None,
    texts: list[str],
    references: list[list[str]],
    summary: dict[str, Any],
) -> dict[str, list[float]]:
    """Every metric's per-unit scores; their means and the corpus-level values go to
    ``summary``."""
    per_unit_scores: dict[str, list[float]] = {}
    for metric in metrics:
        module = load_metric(metric) if isinstance(metric, str) else metric
        name = metric if isinstance(metric, str) else _registered_name(metric)
        kwargs = dict((metric_kwargs or {}).get(name, {}))
        result = module.compute(predictions=texts, references=references, **kwargs)
        per_prediction_keys = getattr(module, "per_prediction_keys", None) or [
            key
            for key, value in result.items()
            if isinstance(value, list) and len(value) == len(texts)
        ]
        for key, value in result.items():
            if key in per_unit_scores or key in summary:
                raise ValueError(f"Two metrics both report {key!r}; score them separately.")
            if key in per_prediction_keys:
                per_unit_scores[key] = [float(score) for score in value]
                summary[key] = sum(per_unit_scores[key]) / len(texts)
            else:
                summary[key] = value
    return per_unit_scores


# ---- concept accuracy -----------------------------------------------------------------------

#: Canonical word -> words that mean the same in a unit description. Keys and variants are
#: single words; matching stems them, so plurals and "-ed" forms need no entry of their own.
DEFAULT_CONCEPT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "gray": ("grey",),
    "color": ("colour",),
    "circle": ("circular", "round", "disc", "disk"),
    "rectangle": ("rectangular",),
    "triangle": ("triangular",),
    "stripe": ("striped", "stripy", "line"),
    "dot": ("dotted", "spot", "spotted"),
    "checkerboard": ("checkered", "chequered", "checker"),
    "text": ("letter", "lettering", "word", "writing", "written", "character"),
    "top": ("upper",),
    "bottom": ("lower",),
}

#: Words of a concept that a description need not repeat ("top of image" ~ "top image").
CONCEPT_FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "in", "on", "at", "with", "and"})

# ROUGE's tokenizer: lowercase, split on anything but [a-z0-9], Porter-stem words of > 3 letters.
_STEMMING_TOKENIZER = DefaultTokenizer(use_stemmer=True)


class ConceptMatcher:
    """Decides whether a description names a concept: the rule of :func:`concept_accuracy`.

    Text is lowercased and split into words; each word is Porter-stemmed (so "stripes",
    "striped" and "stripe" agree, as do "circles" and "circle") and mapped to its canonical
    synonym (``synonyms``: canonical word -> variant words; default
    ``DEFAULT_CONCEPT_SYNONYMS``, ``{}`` for none). A phrase is *named* when the description
    contains every one of its words except the function words in ``CONCEPT_FUNCTION_WORDS``,
    in any order ("red circle" is named by "circles that are red").

    ``concept_phrases`` (concept -> alternative phrases, e.g. a world's vocabulary
    ``{"triangle": ["wedges", "triangular shapes"], "top": ["the upper half"]}``) widens that:
    a concept with an entry is named by itself or any of its phrases, and a compound concept
    made of entries ("red circle" = "red" + "circle") is named when each part is. Words of a
    concept outside any entry must appear themselves. Negation is not understood ("not red"
    names "red").
    """

    def __init__(
        self,
        synonyms: Mapping[str, Sequence[str]] | None = None,
        concept_phrases: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.word_table: dict[str, str] = {}
        for canonical, variants in (
            DEFAULT_CONCEPT_SYNONYMS if synonyms is None else synonyms
        ).items():
            canonical_stem = self._single_stem(canonical, "Synonym keys")
            for variant in [canonical, *variants]:
                self.word_table[self._single_stem(variant, "Synonyms")] = canonical_stem
        # Phrases keyed by the concept's plain lowercase words, so "Vertical  Stripes" finds them.
        self.phrases: dict[tuple[str, ...], list[str]] = {
            tuple(concept.lower().split()): [concept, *alternatives]
            for concept, alternatives in (concept_phrases or {}).items()
        }
        self._longest_key = max((len(key) for key in self.phrases), default=1)

    @staticmethod
    def _single_stem(word: str, what: str) -> str:
        stems = _STEMMING_TOKENIZER.tokenize(word)
        if len(stems) != 1:
            raise ValueError(f"{what} must be single words, got {word!r}.")
        return stems[0]

    def words(self, text: str) -> set[str]:
        """The normalised (stemmed, synonym-mapped) words of ``text``."""
        return {self.word_table.get(stem, stem) for stem in _STEMMING_TOKENIZER.tokenize(text)}

    def _phrase_named(self, description_words: set[str], phrase: str) -> bool:
        required = self.words(phrase) - CONCEPT_FUNCTION_WORDS
        return bool(required) and required <= description_words

    def _parts(self, concept: str) -> list[list[str]]:
        # Split the concept into known concepts (longest first) and leftover content words;
        # each part comes with the phrases that name it.
        concept_words = tuple(concept.lower().split())
        parts, start = [], 0
        while start < len(concept_words):
            for end in range(min(len(concept_words), start + self._longest_key), start, -1):
                if concept_words[start:end] in self.phrases:
                    parts.append(self.phrases[concept_words[start:end]])
                    break
            else:
                end = start + 1
                if self.words(concept_words[start]) - CONCEPT_FUNCTION_WORDS:
                    parts.append([concept_words[start]])
            start = end
        if not parts:
            raise ValueError(f"Concept {concept!r} has no content word to look for.")
        return parts

    def names(self, description: str, concept: str) -> bool:
        """Whether ``description`` names ``concept``."""
        description_words = self.words(description)
        return all(
            any(self._phrase_named(description_words, phrase) for phrase in alternatives)
            for alternatives in self._parts(concept)
        )


def description_names_concept(
    description: str,
    concept: str,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    concept_phrases: Mapping[str, Sequence[str]] | None = None,
) -> bool:
    """Whether ``description`` names ``concept`` by the rule of :class:`ConceptMatcher`."""
    return ConceptMatcher(synonyms, concept_phrases).names(description, concept)


def concept_accuracy(
    predictions: datasets.Dataset,
    ground_truth: datasets.Dataset,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    concept_phrases: Mapping[str, Sequence[str]] | None = None,
    concept_column: str = "concept",
    family_column: str | None = "family",
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Accuracy of descriptions on units of known meaning, overall and per concept family.

    Args:
        predictions: columns ``layer``, ``unit``, ``description``.
        ground_truth: columns ``layer``, ``unit``, ``concept_column`` (a concept string such as
            "red", "vertical stripes", "red circle", or a list of acceptable concepts) and,
            optionally, ``family_column`` (e.g. "color", "shape", "texture", "position").
        synonyms: canonical word -> variant words; default ``DEFAULT_CONCEPT_SYNONYMS``.
        concept_phrases: concept -> alternative phrases (see :class:`ConceptMatcher`); for the
            probe world, its concepts' nouns and adjectives.

    A description is correct when it names the unit's concept (any of them, for a list) by the
    rule of :class:`ConceptMatcher`.

    Returns:
        ``(per_unit, summary)``: a dataset with ``layer``, ``unit``, ``description``,
        ``concept``, ``family`` and ``correct``; and ``{"accuracy", "num_units", "num_correct",
        "by_family": {family: {...}}, "by_concept": {concept: {...}}}`` (families "all" when the
        ground truth has no family column).
    """
    has_family = family_column is not None and family_column in ground_truth.column_names
    truth_columns = [concept_column, family_column] if has_family else [concept_column]
    pairs = join_on_units(predictions, ground_truth, truth_columns, "ground-truth concepts")
    matcher = ConceptMatcher(synonyms, concept_phrases)
    layers, units, texts, concepts, families, correct = [], [], [], [], [], []
    for prediction, truth in pairs:
        unit_concepts = truth[concept_column]
        unit_concepts = [unit_concepts] if isinstance(unit_concepts, str) else list(unit_concepts)
        if not unit_concepts:
            raise ValueError(f"Unit {truth[schema.LAYER]}/{truth[schema.UNIT]} has no concept.")
        layers.append(prediction[schema.LAYER])
        units.append(int(prediction[schema.UNIT]))
        texts.append(prediction[DESCRIPTION])
        concepts.append(" | ".join(unit_concepts))
        families.append(str(truth[family_column]) if has_family else "all")
        correct.append(any(matcher.names(prediction[DESCRIPTION], c) for c in unit_concepts))

    def tally(selected: list[bool]) -> dict[str, Any]:
        return {
            "accuracy": sum(selected) / len(selected),
            "num_units": len(selected),
            "num_correct": sum(selected),
        }

    def grouped(keys: list[str]) -> dict[str, dict[str, Any]]:
        return {
            key: tally([ok for other, ok in zip(keys, correct) if other == key])
            for key in sorted(set(keys))
        }

    summary = {**tally(correct), "by_family": grouped(families), "by_concept": grouped(concepts)}
    per_unit = datasets.Dataset.from_dict(
        {
            schema.LAYER: layers,
            schema.UNIT: units,
            DESCRIPTION: texts,
            "concept": concepts,
            "family": families,
            "correct": correct,
        },
        features=datasets.Features(
            {
                schema.LAYER: datasets.Value("string"),
                schema.UNIT: datasets.Value("int64"),
                DESCRIPTION: datasets.Value("string"),
                "concept": datasets.Value("string"),
                "family": datasets.Value("string"),
                "correct": datasets.Value("bool"),
            }
        ),
    )
    return per_unit, summary


# ---- tables and files -----------------------------------------------------------------------


def results_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] | None = None
) -> str:
    """Markdown table with one row per method (e.g. "p(d|E) greedy", "PMI λ=0.2").

    Args:
        rows: method name -> summary (as returned by :func:`score_descriptions` or
            :func:`concept_accuracy`, or both merged).
        columns: summary keys to show; default every key of ``TABLE_COLUMNS`` that some row
            has. Missing values show as "–".
    """
    if not rows:
        raise ValueError("results_table needs at least one method row, got none.")
    if columns is None:
        columns = [key for key in TABLE_COLUMNS if any(key in row for row in rows.values())]
    headers = ["Method", *(TABLE_COLUMNS.get(key, (key, ""))[0] for key in columns)]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for method, row in rows.items():
        cells = [method.replace("|", "\\|")]
        for key in columns:
            value = row.get(key)
            number_format = TABLE_COLUMNS.get(key, (key, ".3f"))[1]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("–")
            elif isinstance(value, (int, float)):
                cells.append(format(value, number_format))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def accuracy_by_family_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of concept accuracy, one row per method and one column per family.

    ``rows`` maps method name -> :func:`concept_accuracy` summary. Cells read
    "accuracy (correct/units)"; the last column is the overall accuracy.
    """
    if not rows:
        raise ValueError("accuracy_by_family_table needs at least one method row, got none.")
    for method, row in rows.items():
        if "by_family" not in row:
            raise ValueError(f"Row {method!r} is not a concept_accuracy summary (no 'by_family').")
    families = sorted({family for row in rows.values() for family in row["by_family"]})

    def cell(tally: Mapping[str, Any] | None) -> str:
        if tally is None:
            return "–"
        return f"{tally['accuracy']:.3f} ({tally['num_correct']}/{tally['num_units']})"

    lines = [
        "| " + " | ".join(["Method", *families, "All"]) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(families) + 1)) + "|",
    ]
    for method, row in rows.items():
        cells = [cell(row["by_family"].get(family)) for family in families]
        lines.append("| " + " | ".join([method.replace("|", "\\|"), *cells, cell(row)]) + " |")
    return "\n".join(lines) + "\n"


def _json_ready(value: Any) -> Any:
    # JSON has no NaN/inf; a metric that could not be computed is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_results_json(
    path: str | os.PathLike,
    rows: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"metadata": ..., "results": {method: summary}}`` to ``path`` atomically."""
    path = Path(path)
    document = _json_ready({"metadata": dict(metadata or {}), "results": rows})
    with staged_file(path) as handle:  # a crash never leaves half a file
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return path


def save_evaluation(
    output_dir: str | os.PathLike,
    rows: Mapping[str, Mapping[str, Any]],
    per_unit: Mapping[str, datasets.Dataset] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``results.md``, ``results.json`` and ``per_unit/`` (a ``datasets`` dataset).

    ``per_unit`` maps method name -> per-unit dataset (from :func:`score_descriptions`); they
    are concatenated with a ``method`` column. Everything is written to a temporary sibling
    folder first and renamed into place, so an interrupted run leaves no partial result.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True to replace it.")
    with staged_directory(output_dir) as staging:
        title = (metadata or {}).get("title")
        table = results_table(rows)
        (staging / "results.md").write_text(f"# {title}\n\n{table}" if title else table)
        write_results_json(staging / "results.json", rows, metadata)
        if per_unit:
            tables = [
                dataset.add_column(METHOD, [method] * len(dataset))
                for method, dataset in per_unit.items()
            ]
            datasets.concatenate_datasets(tables).save_to_disk(str(staging / "per_unit"))
    return output_dir


# ---- model cards ----------------------------------------------------------------------------


def eval_results_from_rows(
    rows: Mapping[str, Mapping[str, Any]],
    dataset_name: str,
    dataset_type: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    task_type: str = "image-to-text",
    metrics: Sequence[str] | None = None,
) -> list[EvalResult]:
    """One ``EvalResult`` per (method, metric); the method goes in the metric's name and config.

    ``metrics`` are summary keys of ``CARD_METRICS`` (default: every one present).
    """
    results = []
    for method, row in rows.items():
        for key in metrics or CARD_METRICS:
            if key not in CARD_METRICS:
                raise ValueError(
                    f"No model-card metric for {key!r}; choose from {list(CARD_METRICS)}."
                )
            value = row.get(key)
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue
            metric_type, pretty_name = CARD_METRICS[key]
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name="Neuron description",
                    dataset_type=dataset_type or dataset_name,
                    dataset_name=dataset_name,
                    dataset_config=dataset_config,
                    dataset_split=dataset_split,
                    metric_type=metric_type,
                    metric_value=round(float(value), 4),
                    metric_name=f"{pretty_name} ({method})",
                    metric_config=method,
                )
            )
    if not results:
        raise ValueError(f"No card metric ({list(CARD_METRICS)}) in the results of {list(rows)}.")
    return results


def add_eval_results_to_card(
    card: ModelCard | str | os.PathLike,
    rows: Mapping[str, Mapping[str, Any]],
    dataset_name: str,
    dataset_type: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    model_name: str | None = None,
    task_type: str = "image-to-text",
) -> ModelCard:
    """Add evaluation results to a model card's ``model-index`` metadata.

    ``card`` is a ``ModelCard`` (updated in place) or the path of a local README.md (loaded;
    save it back with ``card.save(path)``). A result already on the card for the same method,
    metric and dataset is replaced, not duplicated. ``model_name`` (required by the
    model-index format) defaults to the card's own.
    """
    if not isinstance(card, ModelCard):
        if not Path(card).is_file():
            raise FileNotFoundError(f"Model card {str(card)!r} is not a file.")
        card = ModelCard.load(Path(card))
    new_results = eval_results_from_rows(
        rows, dataset_name, dataset_type, dataset_split, dataset_config, task_type
    )
    model_name = model_name or card.data.model_name
    if model_name is None:
        raise ValueError("The card has no model_name; pass model_name= for its model-index.")
    kept = [
        old
        for old in card.data.eval_results or []
        if not any(old.is_equal_except_value(new) for new in new_results)
    ]
    card.data.model_name = model_name
    card.data.eval_results = kept + new_results
    return card


def push_eval_results(
    repo_id: str,
    rows: Mapping[str, Mapping[str, Any]],
    dataset_name: str,
    dataset_type: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    model_name: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
):
    """Add evaluation results to the model card of Hub repo ``repo_id`` and upload it.

    Starts from the repo's README.md (or a minimal card when it has none). Returns the
    ``CommitInfo`` of the upload.
    """
    api = HfApi(token=token)
    try:
        card = ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=revision))
    except EntryNotFoundError:
        card = ModelCard(f"---\nlibrary_name: milan-hf\n---\n\n# {repo_id}\n")
    card = add_eval_results_to_card(
        card,
        rows,
        dataset_name,
        dataset_type,
        dataset_split,
        dataset_config,
        model_name=model_name or card.data.model_name or repo_id.split("/")[-1],
    )
    return api.upload_file(
        path_or_fileobj=str(card).encode("utf-8"),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"Add evaluation results on {dataset_name}",
    )
