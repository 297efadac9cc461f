"""Audit: find the units whose description matches a query, per layer, across models.

The paper's face audit counts units described as faces in a model trained on face-blurred
images and in one trained on the originals. Here a unit matches a query when its description
contains one of the query's words (or of ``words``, e.g. synonyms), compared after lowercasing
and reducing plurals ("faces" matches "face"), and/or when the cosine similarity of the
description's sentence embedding (all-MiniLM-L6-v2) to the query's reaches ``threshold``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .part_of_speech import PREPOSITIONS, words_of

_STOP_WORDS = (
    frozenset("a an the and or of some any that this these those is are".split()) | PREPOSITIONS
)


def singular(word: str) -> str:
    """A crude English singular, enough to match "faces"/"face" and "letters"/"letter"."""
    word = word.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass
class UnitMatch:
    """Whether one description matched, by which words, and its similarity to the query."""

    matched: bool
    words: list[str] = field(default_factory=list)
    similarity: float | None = None


def query_words(query: str, words: Sequence[str] = ()) -> set[str]:
    """The singular content words of the query, plus ``words``."""
    found = {singular(word) for word in words_of(query) if word not in _STOP_WORDS}
    found |= {singular(word) for text in words for word in words_of(text)}
    return found


def match_descriptions(
    descriptions: Sequence[str],
    query: str,
    *,
    words: Sequence[str] = (),
    use_words: bool = True,
    threshold: float | None = None,
    sentence_model: str | None = None,
) -> list[UnitMatch]:
    """Match every description against ``query`` (see the module docs)."""
    if not query.strip():
        raise ValueError("the query is empty")
    if not use_words and threshold is None:
        raise ValueError("match by words, by embedding similarity (a threshold), or both")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    targets = query_words(query, words) if use_words else set()
    if use_words and not targets:
        raise ValueError(f"the query {query!r} has no content words to match")
    similarities: list[float | None] = [None] * len(descriptions)
    if threshold is not None and descriptions:
        similarities = _similarities(list(descriptions), query, sentence_model)
    matches = []
    for text, similarity in zip(descriptions, similarities):
        hits = sorted({word for word in words_of(text) if singular(word) in targets})
        by_similarity = similarity is not None and similarity >= threshold
        matches.append(UnitMatch(bool(hits) or by_similarity, hits, similarity))
    return matches


def _similarities(descriptions: list[str], query: str, sentence_model: str | None) -> list[float]:
    from .metrics.embedding_cosine import embed_sentences, load_sentence_encoder
    from .metrics.sentence_model import default_sentence_model_path

    tokenizer, model = load_sentence_encoder(
        str(sentence_model or default_sentence_model_path()), "cpu"
    )
    embeddings = embed_sentences([query, *descriptions], tokenizer, model)
    return (embeddings[1:] @ embeddings[0]).tolist()


@dataclass
class ModelAudit:
    """One model's (one describe run's) audit: matches and per-layer counts."""

    name: str
    source: str
    layers: dict[str, dict[str, int]]  # layer -> {"matching": n, "units": n}
    matches: list[dict[str, Any]]  # layer, unit, description, words, similarity

    @property
    def matching(self) -> int:
        return sum(counts["matching"] for counts in self.layers.values())

    @property
    def units(self) -> int:
        return sum(counts["units"] for counts in self.layers.values())


@dataclass
class AuditResult:
    query: str
    words: list[str]
    threshold: float | None
    models: list[ModelAudit]

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "words": self.words,
            "threshold": self.threshold,
            "models": [
                {
                    "name": m.name,
                    "source": m.source,
                    "matching": m.matching,
                    "units": m.units,
                    "layers": m.layers,
                    "matches": m.matches,
                }
                for m in self.models
            ],
        }

    def table(self) -> str:
        """A plain-text table: model, layer, matching units / units."""
        lines = [
            f"query {self.query!r}: units whose description matches",
            "model\tlayer\tmatching\tunits",
        ]
        for model in self.models:
            for layer, counts in model.layers.items():
                lines.append(f"{model.name}\t{layer}\t{counts['matching']}\t{counts['units']}")
            lines.append(f"{model.name}\tall\t{model.matching}\t{model.units}")
        return "\n".join(lines)


def audit_descriptions(
    descriptions: Any, query: str, *, name: str = "model", source: str = "", **match_options: Any
) -> ModelAudit:
    """Audit one model's descriptions (a ``describe`` output dataset, or rows with layer, unit
    and description); ``match_options`` as in :func:`match_descriptions`."""
    layers = [str(layer) for layer in descriptions[schema.LAYER]]
    units = [int(unit) for unit in descriptions[schema.UNIT]]
    texts = [str(text) for text in descriptions[schema.DESCRIPTION]]
    matches = match_descriptions(texts, query, **match_options)
    counts: dict[str, dict[str, int]] = {}
    found = []
    for layer, unit, text, match in zip(layers, units, texts, matches):
        layer_counts = counts.setdefault(layer, {"matching": 0, "units": 0})
        layer_counts["units"] += 1
        if match.matched:
            layer_counts["matching"] += 1
            found.append(
                {
                    "layer": layer,
                    "unit": unit,
                    "description": text,
                    "words": match.words,
                    "similarity": match.similarity,
                }
            )
    return ModelAudit(name, source, counts, found)


def audit_describe_outputs(
    describe_dirs: Sequence[str | os.PathLike],
    query: str,
    *,
    names: Sequence[str] | None = None,
    **match_options: Any,
) -> AuditResult:
    """Audit the finished ``describe`` runs in ``describe_dirs`` (one per model) for ``query``.

    ``names``: a display name per run (default: the directory names).
    """
    from .describer import load_description_outputs

    if not describe_dirs:
        raise ValueError("name at least one describe output directory to audit")
    names = list(names) if names is not None else [Path(d).resolve().name for d in describe_dirs]
    if len(names) != len(describe_dirs):
        raise ValueError(f"{len(names)} names for {len(describe_dirs)} describe directories")
    models = []
    for directory, name in zip(describe_dirs, names):
        descriptions, _ = load_description_outputs(directory)
        models.append(
            audit_descriptions(
                descriptions, query, name=name, source=str(directory), **match_options
            )
        )
    words = (
        sorted(query_words(query, match_options.get("words", ())))
        if match_options.get("use_words", True)
        else []
    )
    return AuditResult(query, words, match_options.get("threshold"), models)
