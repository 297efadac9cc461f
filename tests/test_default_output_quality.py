"""The default run's descriptions are well-formed English: the defect check on real output.

Runs the README's main job (``milan-hf describe`` on the embedded default, with its default
decoding) on a sample of units of both default layers and asserts that not one description has
a defect (``phrasing.description_defects``: doubled words or phrases, "parts of parts", a
dangling "either", a cut-off or over-long string). The filler share of the full run is measured
by ``scripts/default_run_quality.py`` (README, "Known-unit benchmark").
"""

from __future__ import annotations

import csv

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
    from milan_hf.modeling_milan import MilanGenerationOutput
    from milan_hf.processing_milan import MilanProcessor
    from tests.captioner_fixtures import tiny_captioner, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    processor = MilanProcessor.from_model_config(tiny_captioner(tokenizer).config, tokenizer)

    def ids(text: str) -> list[int]:
        return [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    beams = torch.tensor([[ids("red red"), ids("red squares"), ids("blue squares")],
                          [ids("blue squares"), ids("red red"), ids("red squares")]])  # fmt: skip
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -0.5, -4.0]])
    output = MilanGenerationOutput(
        sequences=beams[:, 0], scores=scores[:, 0], captioner_log_probs=scores[:, 0],
        prior_log_probs=scores[:, 0] * 2, beam_sequences=beams, beam_scores=scores,
        beam_captioner_log_probs=scores, beam_prior_log_probs=scores * 2,
    )  # fmt: skip
    chosen = prefer_well_formed(output, processor)
    # Unit 0: "red red" has a doubled word; the next best, "red squares", is taken with its
    # scores. Unit 1: its choice has no defect, so it stays (a better-scored defective one
    # never replaces it).
    assert processor.batch_decode(chosen.sequences) == ["red squares", "blue squares"]
    assert chosen.scores.tolist() == [-2.0, -1.0]
    assert chosen.prior_log_probs.tolist() == [-4.0, -2.0]
