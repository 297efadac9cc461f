"""Decoding that does not degenerate: ``no_repeat_words`` (NoRepeatWordsLogitsProcessor)."""

from __future__ import annotations

import pytest
import torch

from milan_hf.modeling_milan import (
    FUNCTION_WORDS,
    NO_START_WORDS,
    MilanCaptionerModel,
    NoRepeatWordsLogitsProcessor,
)
from milan_hf.probe_world import phrasing
from tests.captioner_fixtures import single_thread, tiny_captioner, tiny_tokenizer  # noqa: F401

# Words of the probe-world grammar: content words (one with its singular), function words, and
# punctuation. No vowel-initial word, so "a" + vowel cannot occur.
WORDS = (
    "red", "blue", "green", "circles", "circle", "stripes", "vertical", "parts", "part", "top",
    "bottom", "either", "or", "and", "the", "of", "in", "as", "well", "with", ",",
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(WORDS)


@pytest.fixture(scope="module")
def roles(tokenizer):
    return NoRepeatWordsLogitsProcessor.word_roles(tokenizer)


def ids(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer.convert_tokens_to_ids(text.split())]


def forbidden_after(tokenizer, roles, *texts: str, max_new_tokens: int | None = None):
    """For each prefix, the set of words the processor forbids next (``<eos>`` included)."""
    processor = NoRepeatWordsLogitsProcessor(
        roles, len(tokenizer), tokenizer.eos_token_id, max_new_tokens
    )
    prefixes = [ids(tokenizer, text) for text in texts]
    assert len({len(prefix) for prefix in prefixes}) == 1, "one length per call"
    scores = processor(torch.tensor(prefixes), torch.zeros(len(prefixes), len(tokenizer)))
    return [
        set(tokenizer.convert_ids_to_tokens(row.isinf().nonzero().squeeze(1).tolist()))
        for row in scores
    ]


def test_the_stop_lists_are_the_grammars():
    """The processor avoids exactly what the defect checker flags."""
    assert FUNCTION_WORDS == phrasing.FUNCTION_WORDS
    assert NO_START_WORDS == phrasing._BAD_STARTS
    assert FUNCTION_WORDS - {"well"} == phrasing._DANGLING_ENDS


def test_word_roles_come_from_the_vocabulary(tokenizer, roles):
    words = tokenizer.convert_ids_to_tokens
    assert set(words(roles["function_word_ids"])) == {
        "either", "or", "and", "the", "of", "in", "as", "well", "with", ",",
    }  # fmt: skip
    function_words = set(words(roles["function_word_ids"]))
    assert set(words(roles["content_word_ids"])) == set(WORDS) - function_words
    assert "well" not in words(roles["no_end_ids"]) and "," in words(roles["no_end_ids"])
    assert set(words(roles["no_start_ids"])) == {"or", "and", "of", "as", "with", ","}
    assert sorted(map(sorted, map(words, roles["same_word_ids"]))) == [
        ["circle", "circles"], ["part", "parts"]
    ]  # fmt: skip
    assert words([roles["either_id"], roles["or_id"]]) == ["either", "or"]
    assert NoRepeatWordsLogitsProcessor.word_roles(tokenizer.get_vocab()) == roles


def test_content_words_and_doubled_tokens_are_forbidden(tokenizer, roles):
    red, plural, function, doubled = forbidden_after(
        tokenizer, roles, "red circles in", "blue circle , ", "the top of", "green stripes ,"
    )
    assert {"red", "circles", "circle"} <= red and "blue" not in red and "the" not in red
    assert {"circle", "circles", ","} <= plural  # "circle" counts as "circles"
    assert "the" not in function and {"top", "of"} <= function  # "the top of the image"
    assert "," in doubled


def test_a_phrase_is_not_copied_across_or_and(tokenizer, roles):
    # "in the top or in the top": the function-word start is free, the copy's end is not.
    (after_or_in,) = forbidden_after(tokenizer, roles, "green in the or in")
    assert "the" in after_or_in and "top" not in after_or_in
    (after_and,) = forbidden_after(tokenizer, roles, "green of and")
    assert "of" in after_and
    (different,) = forbidden_after(tokenizer, roles, "green in the or of")
    assert "the" not in different


def test_no_dangling_either_function_word_end_or_bad_start(tokenizer, roles):
    either, either_closed, function_end, start = (
        forbidden_after(tokenizer, roles, "either red"),
        forbidden_after(tokenizer, roles, "either red or blue"),
        forbidden_after(tokenizer, roles, "red in the"),
        forbidden_after(tokenizer, roles, ""),
    )
    assert "<eos>" in either[0] and "either" in either[0]
    assert "<eos>" not in either_closed[0] and "either" in either_closed[0]
    assert "<eos>" in function_end[0]
    (well,) = forbidden_after(tokenizer, roles, "red as well")
    assert "<eos>" not in well
    assert {"<eos>", "and", "or", "of", ","} <= start[0] and "either" not in start[0]
    (no_content,) = forbidden_after(tokenizer, roles, "the")
    assert "<eos>" in no_content


def test_no_description_is_cut_off_at_the_length_limit(tokenizer, roles):
    last, two_left, four_left = (
        forbidden_after(tokenizer, roles, "red circles", max_new_tokens=3)[0],
        forbidden_after(tokenizer, roles, "red circles", max_new_tokens=4)[0],
        forbidden_after(tokenizer, roles, "either red", max_new_tokens=5)[0],
    )
    assert last == set(tokenizer.get_vocab()) - {"<eos>"}
    assert {"in", "the", "either"} <= two_left and "<eos>" not in two_left
    assert "blue" in four_left and "or" not in four_left  # "either red blue or ..." too long


@pytest.fixture(scope="module")
def degenerate_captioner(tokenizer):
    """A tiny captioner pushed toward the commonest failures: repeating a colour and "either"."""
    model = tiny_captioner(tokenizer, seed=3)
    with torch.no_grad():
        for word, boost in (("red", 2.0), ("either", 1.5), ("the", 1.0), ("circles", 1.0)):
            model.output.bias[tokenizer.convert_tokens_to_ids(word)] += boost
    return model


def random_features(model: MilanCaptionerModel, units: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(units, 3, model.config.feature_size, generator=generator)


def test_option_off_is_plain_decoding(degenerate_captioner, roles, single_thread):  # noqa: F811
    """With word_roles set but the option off, decoding is what it was without them."""
    features = random_features(degenerate_captioner, 8, seed=0)
    plain = degenerate_captioner.generate(exemplar_features=features, num_beams=4, pmi_weight=0)
    degenerate_captioner.generation_config.word_roles = roles
    try:
        off = degenerate_captioner.generate(
            exemplar_features=features, num_beams=4, pmi_weight=0, no_repeat_words=False
        )
        on = degenerate_captioner.generate(exemplar_features=features, num_beams=4, pmi_weight=0)
    finally:
        del degenerate_captioner.generation_config.word_roles
    assert torch.equal(plain.beam_sequences, off.beam_sequences)
    assert torch.equal(plain.beam_captioner_log_probs, off.beam_captioner_log_probs)
    assert not torch.equal(plain.sequences, on.sequences)  # the default is on


@pytest.mark.parametrize("pmi_weight, pmi_strategy", [(0.0, "rerank"), (0.5, "rerank"),
                                                      (0.5, "token")])  # fmt: skip
def test_no_defects_over_many_random_units(
    degenerate_captioner,
    tokenizer,
    roles,
    pmi_weight,
    pmi_strategy,
    single_thread,  # noqa: F811
):
    features = random_features(degenerate_captioner, 64, seed=1)
    settings = dict(exemplar_features=features, num_beams=5, pmi_weight=pmi_weight,
                    pmi_strategy=pmi_strategy, max_length=10)  # fmt: skip
    off = degenerate_captioner.generate(**settings, no_repeat_words=False)
    defective = [t for t in tokenizer.batch_decode(off.sequences, skip_special_tokens=True)
                 if phrasing.description_defects(t)]  # fmt: skip
    assert len(defective) > 10  # the captioner does degenerate without the option
    degenerate_captioner.generation_config.word_roles = roles
    try:
        on = degenerate_captioner.generate(**settings)
    finally:
        del degenerate_captioner.generation_config.word_roles
    assert bool(on.captioner_log_probs.isfinite().all())  # every unit ended well
    finished = (on.sequences == tokenizer.eos_token_id).any(1)
    assert bool(finished.all())  # nothing cut off at max_length
    for text in tokenizer.batch_decode(on.sequences, skip_special_tokens=True):
        assert _token_level_defects(text) == [], text


# Rules over a whole finished phrase, which no token-level rule can see coming; decode_units
# enforces them by choosing among the final beam (prefer_well_formed).
_WHOLE_PHRASE_RULES = ("an operand names nothing", "'the colour' names no colour",
                       "says there is nothing", "a quantifier before an article")  # fmt: skip


def _token_level_defects(text: str) -> list[str]:
    return [d for d in phrasing.description_defects(text)
            if not any(rule in d for rule in _WHOLE_PHRASE_RULES)]  # fmt: skip


def test_without_word_roles_the_option_warns_and_decodes_plainly(degenerate_captioner):
    features = random_features(degenerate_captioner, 2, seed=2)
    on = degenerate_captioner.generate(exemplar_features=features, num_beams=3, pmi_weight=0)
    off = degenerate_captioner.generate(
        exemplar_features=features, num_beams=3, pmi_weight=0, no_repeat_words=False
    )
    assert degenerate_captioner.generation_config.no_repeat_words is True  # the default
    assert torch.equal(on.beam_sequences, off.beam_sequences)


def test_embedded_captioner_writes_no_defects_on_probe_world_units(single_thread):  # noqa: F811
    from datasets import Dataset

    from milan_hf.describer import describe_exemplars, load_captioner
    from milan_hf.probe_world.synthetic_units import (
        SyntheticUnitSettings,
        iter_synthetic_units,
        synthetic_unit_features,
    )

    model, processor = load_captioner()
    settings = model.generation_config
    assert settings.no_repeat_words is True
    assert settings.word_roles == NoRepeatWordsLogitsProcessor.word_roles(processor.tokenizer)
    # Seeds >= 1,000,000 are never used in training (see milan_hf.known_units).
    units = list(iter_synthetic_units(1_000_077, 12, SyntheticUnitSettings(image_size=64)))
    dataset = Dataset.from_list(units, features=synthetic_unit_features(64))
    described = describe_exemplars(dataset, model, processor, progress=False)
    defects = {text: phrasing.description_defects(text) for text in described["description"]}
    assert not {text: found for text, found in defects.items() if found}
