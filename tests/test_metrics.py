"""Description metrics against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import evaluate
import pytest

from milan_hf.metrics import (
    METRICS,
    DescriptionBertScore,
    DescriptionBleu,
    DescriptionEmbeddingCosine,
    DescriptionRougeL,
    load_metric,
    metric_path,
)


@pytest.fixture(scope="module")
def bertscore() -> DescriptionBertScore:
    # The MiniLM scorer is cached per process, so the model loads once for the whole module.
    return load_metric("bertscore")


@pytest.fixture(scope="module")
def embedding_cosine() -> DescriptionEmbeddingCosine:
    return load_metric("embedding_cosine")


# ---- BLEU -----------------------------------------------------------------------------------


def test_bleu_of_identical_strings_is_100():
    result = load_metric("bleu").compute(
        predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]]
    )
    assert result["bleu"] == pytest.approx(100.0)
    assert result["sentence_bleu"] == [pytest.approx(100.0)]


def test_bleu_partial_overlap_matches_hand_computation():
    # hypothesis "the cat sat on the mat" vs reference "the cat sat on a mat":
    # clipped n-gram matches 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)
    result = load_metric("bleu").compute(
        predictions=["the cat sat on the mat"], references=[["the cat sat on a mat"]]
    )
    assert result["bleu"] == pytest.approx(expected)
    assert result["bleu_precisions"] == pytest.approx([500 / 6, 60.0, 50.0, 100 / 3])
    assert result["bleu_brevity_penalty"] == pytest.approx(1.0)


def test_bleu_counts_ngrams_against_all_references():
    # Each reference supplies some n-grams; together they cover the hypothesis exactly.
    hypothesis = "the cat sat on the mat"
    one_reference = load_metric("bleu").compute(
        predictions=[hypothesis], references=[["the cat sat on a mat"]]
    )
    two_references = load_metric("bleu").compute(
        predictions=[hypothesis], references=[["the cat sat on a mat", "a dog sat on the mat"]]
    )
    # The second reference adds "on the", "the mat", "sat on the", "on the mat",
    # "sat on the mat": matches become 5/6, 5/5, 4/4, 2/3 ("cat sat on the" is in neither;
    # the second "the" stays clipped since no single reference has two).
    expected = 100 * (5 / 6 * 1 * 1 * 2 / 3) ** (1 / 4)
    assert two_references["bleu"] == pytest.approx(expected)
    assert two_references["bleu"] > one_reference["bleu"]


def test_bleu_accepts_a_variable_number_of_references():
    result = load_metric("bleu").compute(
        predictions=["big red circles on top", "blue squares in the corner"],
        references=[
            ["big red circles on top"],
            ["blue squares in the corner", "a blue box", "squares"],
        ],
    )
    assert result["bleu"] == pytest.approx(100.0)
    assert result["sentence_bleu"] == [pytest.approx(100.0)] * 2


def test_corpus_bleu_is_zero_without_any_four_gram():
    # sacrebleu's corpus BLEU has no smoothing: a corpus of 2-word descriptions has no 4-grams.
    result = load_metric("bleu").compute(predictions=["red circle"], references=[["red circle"]])
    assert result["bleu"] == 0.0
    assert result["sentence_bleu"] == [pytest.approx(100.0)]


def test_bleu_rejects_a_unit_without_references():
    with pytest.raises(ValueError, match="Prediction 1 has no reference"):
        load_metric("bleu").compute(predictions=["a", "b"], references=[["a"], []])


# ---- ROUGE-L --------------------------------------------------------------------------------


def test_rouge_l_matches_lcs_by_hand():
    # prediction "red circles on top" vs reference "big red circles at the top":
    # LCS = "red circles top" (3 words); P = 3/4, R = 3/6, F = 2PR / (P + R) = 0.6.
    result = load_metric("rouge").compute(
        predictions=["red circles on top"], references=[["big red circles at the top"]]
    )
    assert result["rougeL"] == [pytest.approx(0.6)]


def test_rouge_l_keeps_the_best_reference():
    # References: LCS 1 word of 3/1 (F = 0.5) and the identical sentence (F = 1).
    result = load_metric("rouge").compute(
        predictions=["vertical stripes", "dog faces"],
        references=[["stripes", "vertical stripes"], ["text on signs", "cat faces"]],
    )
    # "dog faces" vs "cat faces": LCS 1, P = R = 1/2 -> F = 0.5; vs "text on signs": 0.
    assert result["rougeL"] == [pytest.approx(1.0), pytest.approx(0.5)]


def test_rouge_l_stemming_is_optional():
    plain = load_metric("rouge").compute(predictions=["stripes"], references=[["stripe"]])
    stemmed = load_metric("rouge").compute(
        predictions=["stripes"], references=[["stripe"]], use_stemmer=True
    )
    assert plain["rougeL"] == [0.0]
    assert stemmed["rougeL"] == [pytest.approx(1.0)]


# ---- embedding cosine -----------------------------------------------------------------------


def test_embedding_cosine_of_identical_sentences_is_one(embedding_cosine):
    result = embedding_cosine.compute(
        predictions=["red circles on a white background"],
        references=[["red circles on a white background"]],
    )
    assert result["cosine_max"] == [pytest.approx(1.0, abs=1e-5)]
    assert result["cosine_mean"] == [pytest.approx(1.0, abs=1e-5)]


def test_embedding_cosine_max_and_mean_over_references(embedding_cosine):
    result = embedding_cosine.compute(
        predictions=["red circles", "red circles", "red circles"],
        references=[
            ["red circles", "text on street signs"],
            ["red circles"],
            ["text on street signs"],
        ],
    )
    identical, unrelated = result["cosine_max"][1], result["cosine_max"][2]
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert unrelated < 0.6
    # max picks the identical reference; mean averages it with the unrelated one.
    assert result["cosine_max"][0] == pytest.approx(identical, abs=1e-5)
    assert result["cosine_mean"][0] == pytest.approx((identical + unrelated) / 2, abs=1e-5)


# ---- BERTScore ------------------------------------------------------------------------------


def test_bertscore_of_identical_sentences_is_one_and_unrelated_is_lower(bertscore):
    result = bertscore.compute(
        predictions=["vertical red stripes", "vertical red stripes"],
        references=[["vertical red stripes"], ["the faces of dogs"]],
    )
    identical, unrelated = result["bertscore_f1"]
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert unrelated < identical - 0.2
    assert "all-MiniLM-L6-v2_L6_no-idf" in result["bertscore_hashcode"]


def test_bertscore_keeps_the_best_reference(bertscore):
    alone = bertscore.compute(
        predictions=["vertical red stripes"], references=[["the faces of dogs"]]
    )["bertscore_f1"][0]
    with_match = bertscore.compute(
        predictions=["vertical red stripes"],
        references=[["the faces of dogs", "vertical red stripes"]],
    )["bertscore_f1"][0]
    assert with_match == pytest.approx(1.0, abs=1e-5)
    assert alone < with_match


def test_bertscore_idf_weights_come_from_the_references(bertscore):
    result = bertscore.compute(
        predictions=["red circles", "blue squares"],
        references=[["red circles"], ["green triangles"]],
        idf=True,
    )
    assert result["bertscore_f1"][0] == pytest.approx(1.0, abs=1e-5)
    assert result["bertscore_f1"][1] < 1.0
    assert "_idf_" in result["bertscore_hashcode"]


def test_bertscore_unknown_local_model_needs_num_layers(bertscore, tmp_path):
    with pytest.raises(ValueError, match="num_layers is required"):
        bertscore.compute(predictions=["a"], references=[["a"]], model_type=str(tmp_path))


# ---- loading ---------------------------------------------------------------------------------


def test_metric_modules_load_offline_with_evaluate_load():
    metric = evaluate.load(metric_path("rouge"))
    assert type(metric).__name__ == DescriptionRougeL.__name__
    result = metric.compute(predictions=["red circle"], references=[["red circle"]])
    assert result["rougeL"] == [pytest.approx(1.0)]


def test_every_metric_declares_its_per_prediction_keys():
    assert set(METRICS) == {"bertscore", "bleu", "rouge", "embedding_cosine"}
    assert DescriptionBleu.per_prediction_keys == ("sentence_bleu",)
    for metric_class in METRICS.values():
        assert metric_class.per_prediction_keys


def test_unknown_metric_name_is_rejected():
    with pytest.raises(ValueError, match="Unknown metric 'meteor'"):
        load_metric("meteor")
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_path("meteor")


def test_bleu_sentence_scores_are_finite_for_short_predictions():
    result = load_metric("bleu").compute(predictions=["red"], references=[["blue"]])
    assert all(math.isfinite(score) for score in result["sentence_bleu"])
