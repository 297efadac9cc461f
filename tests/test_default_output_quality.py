"""The default run's descriptions are well-formed English: the defect check on real output.

Runs the README's main job (``milan-hf describe`` on the embedded default, with its default
decoding) on a sample of units of both default layers and asserts that not one description has
a defect (``phrasing.description_defects``: doubled words or phrases, "parts of parts", a
dangling "either", a cut-off or over-long string). The filler share of the full run is measured
by ``scripts/default_run_quality.py`` (README, "Known-unit benchmark").
"""

from __future__ import annotations

import csv

import pytest

from milan_hf.default_run import DEFAULT_LAYERS, describe_default, description_quality


def test_description_quality_counts_filler_defects_and_repetition():
    quality = description_quality(
        [
            "red circles",
            "houses",
            "houses and red houses",
            "houses at the top",
            "nothing in particular",
            "",
        ]
    )
    assert quality["units"] == 5  # the empty string is not a description
    assert quality["filler_share"] == 0.2
    assert quality["defect_count"] == 1  # "houses ... houses": a doubled word
    assert quality["most_common_word"] == "houses"
    assert quality["most_common_word_share"] == 0.6
    assert quality["distinct_share"] == 1.0


def test_default_output_has_no_defect_strings(tmp_path, monkeypatch):
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "run"
    descriptions = describe_default(output, units=16, report=False, progress=False)
    assert sorted(set(descriptions["layer"])) == sorted(DEFAULT_LAYERS)
    with open(output / "descriptions.csv", newline="") as handle:
        texts = [row["description"] for row in csv.DictReader(handle) if row["dead"] != "True"]
    assert len(texts) >= 24
    quality = description_quality(texts)
    assert quality["defect_count"] == 0, quality["defective_examples"]


def test_prefer_well_formed_takes_the_best_candidate_without_a_defect():
    import torch

    from milan_hf.inference import prefer_well_formed
    from milan_hf.processing_milan import MilanProcessor
    from tests.captioner_fixtures import tiny_captioner, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    processor = MilanProcessor.from_model_config(tiny_captioner(tokenizer).config, tokenizer)

    def ids(text: str) -> list[int]:
        return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    beams = torch.tensor([[ids("red red"), ids("red squares"), ids("blue squares")],
                          [ids("blue squares"), ids("red red"), ids("red squares")]])  # fmt: skip
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -0.5, -4.0]])
    prior = scores / 4  # fluent: above the floor of random words, -log(vocabulary size)
    output = _beam_output(beams, scores, prior)
    chosen = prefer_well_formed(output, processor)
    # Unit 0: "red red" has a doubled word; the next best, "red squares", is taken with its
    # scores. Unit 1: its choice has no defect, so it stays (a better-scored defective one
    # never replaces it).
    assert processor.batch_decode(chosen.sequences) == ["red squares", "blue squares"]
    assert chosen.scores.tolist() == [-2.0, -1.0]
    assert chosen.prior_log_probs.tolist() == [-0.5, -0.25]


def test_prefer_well_formed_refuses_word_salad_below_the_fluency_floor():
    """A defect-free choice the prior finds less likely than random words is replaced by the
    best-scoring fluent candidate."""
    import math

    import torch

    from milan_hf.inference import fluency_floor, prefer_well_formed
    from milan_hf.processing_milan import MilanProcessor
    from tests.captioner_fixtures import tiny_captioner, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    processor = MilanProcessor.from_model_config(tiny_captioner(tokenizer).config, tokenizer)
    floor = fluency_floor(len(tokenizer))
    assert floor == -math.log(len(tokenizer))

    def ids(text: str) -> list[int]:
        return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    beams = torch.tensor([[ids("blue squares"), ids("red squares")]])  # 2 tokens each
    scores = torch.tensor([[5.0, 1.0]])
    prior = torch.tensor([[4 * floor, floor / 2]])  # per token: 2x below the floor; above it
    output = _beam_output(beams, scores, prior)
    chosen = prefer_well_formed(output, processor)
    assert processor.batch_decode(chosen.sequences) == ["red squares"]
    assert chosen.prior_log_probs.tolist() == pytest.approx([floor / 2])


def test_fluent_fallback_searches_again_with_the_prior_as_a_language_model():
    """Units with nothing readable in their beam are decoded again with log p(w|E) + log p(w)
    per step; the result reads as English and carries the run's PMI score."""
    import math
    from dataclasses import replace

    import torch

    from milan_hf.inference import (
        collect_slots,
        encode_exemplar_sets,
        fluency_floor,
        fluent_fallback,
        load_captioner,
    )
    from milan_hf.probe_world.phrasing import description_defects
    from milan_hf.probe_world.synthetic_units import SyntheticUnitSettings, iter_synthetic_units

    torch.manual_seed(0)
    captioner, processor = load_captioner()
    units = list(iter_synthetic_units(4242, 3, SyntheticUnitSettings(image_size=64)))
    encoded = encode_exemplar_sets(collect_slots(units), captioner, processor)
    features, mask = encoded["exemplar_features"], encoded["exemplar_mask"]
    output = captioner.generate(exemplar_features=features, exemplar_mask=mask)
    # Make unit 1's choice unreadable to the rule: its prior far below the floor.
    prior = output.prior_log_probs.clone()
    prior[1] = 100 * fluency_floor(len(processor.tokenizer))
    broken = replace(output, prior_log_probs=prior)
    fixed = fluent_fallback(broken, features, mask, captioner, processor, {"pmi_weight": 0.5})
    texts = processor.batch_decode(fixed.sequences)
    assert texts[0] == processor.batch_decode(output.sequences)[0]  # readable: untouched
    assert texts[2] == processor.batch_decode(output.sequences)[2]
    assert description_defects(texts[1]) == []
    rescored = float(fixed.captioner_log_probs[1]) - 0.5 * float(fixed.prior_log_probs[1])
    assert math.isclose(float(fixed.scores[1]), rescored, rel_tol=1e-5)
    # The log-probabilities are those of the new string under each model.
    input_ids = processor(text=[texts[1]])["input_ids"]
    assert math.isclose(float(captioner.prior.sequence_log_probs(input_ids)[0]),
                        float(fixed.prior_log_probs[1]), abs_tol=1e-3)  # fmt: skip


def _beam_output(beams, scores, prior):
    """A generate output whose choice is each unit's first beam candidate (scores serve as
    both the PMI score and log p(d|E))."""
    from milan_hf.modeling_milan import MilanGenerationOutput

    return MilanGenerationOutput(
        sequences=beams[:, 0], scores=scores[:, 0], captioner_log_probs=scores[:, 0],
        prior_log_probs=prior[:, 0], beam_sequences=beams, beam_scores=scores,
        beam_captioner_log_probs=scores, beam_prior_log_probs=prior,
    )  # fmt: skip
