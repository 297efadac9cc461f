"""Audit matching on hand-made descriptions, counts per layer, the page and the command."""

from __future__ import annotations

import datasets
import pytest

from milan_hf.audit import audit_descriptions, match_descriptions, query_words, singular
from milan_hf.editing import text_query_words

DESCRIPTIONS = [
    "faces of people",
    "a human face in the centre",
    "surfaces with stripes",  # "surfaces" must not match "face"
    "red circles",
    "printed text near the top",
    "typed letters",
    "facial hair",
]


def test_singular_forms():
    assert [singular(w) for w in ("faces", "letters", "glasses", "bodies", "bus", "text")] == [
        "face", "letter", "glass", "body", "bus", "text",
    ]  # fmt: skip


def test_word_matching_is_whole_words_after_plurals():
    matches = match_descriptions(DESCRIPTIONS, "faces")
    assert [m.matched for m in matches] == [True, True, False, False, False, False, False]
    assert matches[0].words == ["faces"] and matches[1].words == ["face"]
    assert query_words("faces of people") == {"face", "people"}


def test_extra_words_and_the_grammar_text_words():
    matches = match_descriptions(DESCRIPTIONS, "text", words=text_query_words())
    assert [m.matched for m in matches] == [False, False, False, False, True, True, False]
    assert "letters" in text_query_words() and "text" in text_query_words()


def test_embedding_similarity_with_a_threshold():
    scored = match_descriptions(DESCRIPTIONS, "faces", use_words=False, threshold=-1.0)
    similarities = [m.similarity for m in scored]
    assert all(m.matched for m in scored)  # cosine >= -1 always
    assert similarities[1] > similarities[3]  # "a human face" is nearer "faces" than "red circles"
    strict = match_descriptions(DESCRIPTIONS, "faces", use_words=False, threshold=similarities[1])
    assert strict[1].matched and not strict[3].matched


def test_bad_queries_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        match_descriptions(DESCRIPTIONS, "  ")
    with pytest.raises(ValueError, match="threshold"):
        match_descriptions(DESCRIPTIONS, "faces", threshold=2.0)
    with pytest.raises(ValueError, match="'of the'"):
        match_descriptions(DESCRIPTIONS, "of the")
    with pytest.raises(ValueError, match="both"):
        match_descriptions(DESCRIPTIONS, "faces", use_words=False)


def test_counts_per_layer():
    rows = datasets.Dataset.from_dict({
        "layer": ["a", "a", "b", "b", "b"], "unit": [0, 1, 0, 1, 2],
        "description": ["faces", "red circles", "a face", "faces and hands", "grass"],
    })  # fmt: skip
    result = audit_descriptions(rows, "faces", name="m")
    assert result.layers == {"a": {"matching": 1, "units": 2}, "b": {"matching": 2, "units": 3}}
    assert result.matching == 3 and result.units == 5
    assert [(m["layer"], m["unit"]) for m in result.matches] == [("a", 0), ("b", 0), ("b", 1)]
