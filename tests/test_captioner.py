"""The captioner p(d|E), the prior p(d), PMI generation, processor and pipeline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoModel, pipeline

import milan_hf.pipeline_milan  # noqa: F401  (registers the "neuron-description" task)
from milan_hf.configuration_milan import MilanCaptionerConfig
from milan_hf.image_processing_milan import MilanImageProcessor
from milan_hf.inference import fluent_fallback, prefer_well_formed
from milan_hf.modeling_milan import (
    MilanCaptionerModel,
    PriorLogitsProcessor,
    _efficientnet_lite0_state_dict,
)
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import (
    random_rows,
    single_thread,  # noqa: F401  (fixture)
    tiny_captioner,
    tiny_tokenizer,
)

pytestmark = pytest.mark.usefixtures("single_thread")

MAX_LENGTH = 3


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def features():
    return torch.randn(3, 4, 184, generator=torch.Generator().manual_seed(1))


def all_descriptions(vocab_size: int, max_length: int) -> torch.Tensor:
    """Every sequence beam search can produce: up to ``max_length`` generated tokens from
    {<unk>, words}, then <eos> if it fits; ``<bos>`` first, padded to 1 + max_length."""
    tokens = [3, *range(4, vocab_size)]
    sequences = []
    for length in range(max_length + 1):
        for words in itertools.product(tokens, repeat=length):
            ending = [2] if length < max_length else []
            sequence = [1, *words, *ending]
            sequences.append(sequence + [0] * (1 + max_length - len(sequence)))
    return torch.tensor(sequences)


def prior_log_probs_by_hand(prior, sequences: torch.Tensor) -> torch.Tensor:
    log_probs = prior(sequences).logits.log_softmax(-1)
    total = torch.zeros(len(sequences))
    for row, sequence in enumerate(sequences.tolist()):
        for t in range(1, len(sequence)):
            if sequence[t] == 0:
                break
            total[row] += log_probs[row, t - 1, sequence[t]]
    return total


def exhaustive_pmi_argmax(model, features, pmi_weight: float):
    """argmax over every possible description of log p(d|E) − λ·log p(d), by brute force."""
    candidates = all_descriptions(model.config.vocab_size, MAX_LENGTH)
    best = []
    with torch.no_grad():
        prior = prior_log_probs_by_hand(model.prior, candidates)
        for unit in range(len(features)):
            unit_features = features[unit : unit + 1].expand(len(candidates), -1, -1)
            captioner = model.sequence_log_probs(candidates, unit_features)
            scores = captioner - pmi_weight * prior
            best.append((candidates[scores.argmax()], captioner[scores.argmax()]))
    return torch.stack([b[0] for b in best]), torch.stack([b[1] for b in best])


# A beam of 100 keeps every prefix of every description (85 of them at 3 tokens), so beam
# search is exact here and its result can be checked against brute force.
FULL_BEAM = 100


def test_lambda_zero_is_exact_plain_beam_search(tokenizer, features):
    model = tiny_captioner(tokenizer)
    expected, expected_log_probs = exhaustive_pmi_argmax(model, features, pmi_weight=0.0)
    for strategy in ("rerank", "token"):
        output = model.generate(
            exemplar_features=features,
            pmi_weight=0.0,
            pmi_strategy=strategy,
            num_beams=FULL_BEAM,
            max_length=MAX_LENGTH,
        )
        assert torch.equal(output.sequences, expected)
        torch.testing.assert_close(output.captioner_log_probs, expected_log_probs)

    # λ = 0 with a prior equals decoding with no prior at all, at an ordinary beam width.
    with_prior = model.generate(exemplar_features=features, pmi_weight=0.0, num_beams=4)
    model.prior = None
    without_prior = model.generate(exemplar_features=features, pmi_weight=0.0, num_beams=4)
    assert torch.equal(with_prior.sequences, without_prior.sequences)
    assert without_prior.prior_log_probs is None
    with pytest.raises(ValueError, match="pmi_weight=0.2 needs a prior"):
        model.generate(exemplar_features=features)


def test_rerank_returns_the_pmi_argmax_on_a_crafted_prior(tokenizer, features):
    model = tiny_captioner(tokenizer)
    plain = model.generate(
        exemplar_features=features, pmi_weight=0.0, num_beams=FULL_BEAM, max_length=MAX_LENGTH
    )
    # Craft the prior to find the captioner's favourite first words very likely, so that PMI
    # (which divides by p(d)) must move away from them.
    with torch.no_grad():
        model.prior.output.bias[plain.sequences[:, 1]] += 8.0
    expected, _ = exhaustive_pmi_argmax(model, features, pmi_weight=1.0)
    output = model.generate(
        exemplar_features=features,
        pmi_weight=1.0,
        pmi_strategy="rerank",
        num_beams=FULL_BEAM,
        max_length=MAX_LENGTH,
    )
    assert torch.equal(output.sequences, expected)
    assert not torch.equal(output.sequences, plain.sequences)
    # Both log-probabilities come back, and the score is the PMI formula.
    torch.testing.assert_close(
        output.scores, output.captioner_log_probs - 1.0 * output.prior_log_probs
    )
    token_level = model.generate(
        exemplar_features=features,
        pmi_weight=1.0,
        pmi_strategy="token",
        num_beams=FULL_BEAM,
        max_length=MAX_LENGTH,
    )
    # With an exhaustive beam, token-level PMI reaches the same optimum.
    assert torch.equal(token_level.sequences, expected)


def test_rerank_picks_best_pmi_candidate_of_an_ordinary_beam(tokenizer, features):
    model = tiny_captioner(tokenizer, seed=3)
    output = model.generate(exemplar_features=features, pmi_weight=0.7, num_beams=5)
    units, beams, _ = output.beam_sequences.shape
    for unit in range(units):
        candidates = output.beam_sequences[unit]
        captioner = model.sequence_log_probs(
            candidates, features[unit : unit + 1].expand(beams, -1, -1)
        )
        prior = prior_log_probs_by_hand(model.prior, candidates)
        torch.testing.assert_close(captioner, output.beam_captioner_log_probs[unit])
        best = (captioner - 0.7 * prior).argmax()
        assert torch.equal(output.sequences[unit], candidates[best])


def test_token_level_processor_subtracts_exactly_lambda_log_prior(tokenizer):
    model = tiny_captioner(tokenizer)
    prior = model.prior
    processor = PriorLogitsProcessor(prior, pmi_weight=0.3)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (6, 3), generator=generator)
    ids[:, 0] = 1
    for _ in range(3):
        scores = torch.randn(len(ids), vocab, generator=generator).log_softmax(-1)
        expected = scores - 0.3 * prior(ids).logits[:, -1].log_softmax(-1)
        torch.testing.assert_close(processor(ids, scores.clone()), expected)
        # Next step: beams reordered (and duplicated) then extended, as beam search does.
        parents = torch.randint(0, len(ids), (len(ids),), generator=generator)
        next_tokens = torch.randint(2, vocab, (len(ids), 1), generator=generator)
        ids = torch.cat([ids[parents], next_tokens], dim=1)


def test_generate_batches_units_like_one_at_a_time(tokenizer, features):
    model = tiny_captioner(tokenizer, seed=5)
    batched = model.generate(exemplar_features=features, num_beams=6, pmi_strategy="token")
    for unit in range(len(features)):
        single = model.generate(
            exemplar_features=features[unit : unit + 1], num_beams=6, pmi_strategy="token"
        )
        length = single.sequences.shape[1]
        assert torch.equal(batched.sequences[unit, :length], single.sequences[0])
        torch.testing.assert_close(batched.scores[unit], single.scores[0])


def test_save_load_round_trip_identical_outputs_and_descriptions(tokenizer, tmp_path):
    model = tiny_captioner(tokenizer)
    processor = MilanProcessor.from_model_config(model.config, tokenizer)
    rows = random_rows(units=3)
    inputs = processor(rows)
    ids = processor(text=["red squares", "blue"])["input_ids"]
    before = model.generate(**inputs, num_beams=5)
    before_descriptions = processor.batch_decode(before.sequences)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()

    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, MilanCaptionerModel) and loaded.prior is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    loaded_processor = MilanProcessor.from_pretrained(tmp_path)
    after = loaded.generate(**loaded_processor(rows), num_beams=5)
    # decoded with the saved tokenizer
    assert loaded_processor.batch_decode(after.sequences) == before_descriptions
    assert torch.equal(after.sequences, before.sequences)
    torch.testing.assert_close(after.scores, before.scores, rtol=0, atol=0)
    features = inputs["pixel_values"][:2], inputs["masks"][:2]
    torch.testing.assert_close(
        model(*features, input_ids=ids).logits, loaded(*features, input_ids=ids).logits
    )

    describer = pipeline("neuron-description", model=str(tmp_path))
    results = describer(rows, batch_size=2, num_beams=5)
    # Text entry points keep the best defect-free candidate of the beam (an untrained
    # captioner's empty string is a defect) and search again where there is none, the steps
    # ids-only generate leaves out.
    encoded = model.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    readable = fluent_fallback(prefer_well_formed(before, processor), encoded, None, model,
                               processor, {"num_beams": 5})  # fmt: skip
    well_formed = processor.batch_decode(readable.sequences)
    assert [r["description"] for r in results] == well_formed
    assert results[1]["unit"] == 1 and results[1]["layer"] == "layer1"
    assert set(results[0]) >= {"score", "captioner_log_prob", "prior_log_prob"}
    assert describer(rows[0], num_beams=5)["description"] == well_formed[0]
    in_memory = pipeline("neuron-description", model=loaded)  # processor from its directory
    assert in_memory(rows, num_beams=5)[2]["description"] == well_formed[2]


def test_pretrained_backbone_survives_post_init_and_round_trip(tokenizer, tmp_path):
    expected = _efficientnet_lite0_state_dict()
    config = MilanCaptionerConfig(
        vocab_size=len(tokenizer), image_size=32, embedding_size=8, hidden_size=16
    )
    model = MilanCaptionerModel(config)  # default backbone with its ImageNet weights
    assert config.feature_size == 16 + 24 + 40 + 112 + 320
    backbone = model.encoder.backbone.state_dict()
    for key in ("conv_stem.weight", "bn1.running_var", "blocks.6.0.conv_pwl.weight"):
        assert torch.equal(backbone[key], expected[key]), key
    model.save_pretrained(tmp_path)
    loaded = MilanCaptionerModel.from_pretrained(tmp_path)
    for key, value in loaded.encoder.backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    loaded.train()
    assert not loaded.encoder.backbone.training  # frozen batch-norm statistics


def test_processor_resizes_and_pads_exemplar_sets(tokenizer):
    processor = MilanProcessor(MilanImageProcessor(16, [0.5] * 3, [0.5] * 3), tokenizer)
    rows = random_rows(units=2, k=3)
    rows[1] = {**rows[1], "images": rows[1]["images"][:2], "masks": rows[1]["masks"][:2]}
    rows[0]["masks"][0] = np.ones((40, 48), np.uint8)
    batch = processor(rows)
    assert batch["pixel_values"].shape == (2, 3, 3, 16, 16)
    assert batch["masks"].shape == (2, 3, 16, 16)
    assert batch["exemplar_mask"].tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(batch["masks"][0, 0], torch.ones(16, 16))
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    model = tiny_captioner(tokenizer)
    padded = model.generate(**batch, num_beams=3)
    alone = model.generate(**processor(rows[1]), num_beams=3)
    assert padded.sequences.shape[0] == 2
    length = alone.sequences.shape[1]
    assert torch.equal(padded.sequences[1, :length], alone.sequences[0])


def test_bad_inputs_give_clear_errors(tokenizer):
    processor = MilanProcessor(MilanImageProcessor(image_size=16), tokenizer)
    row = random_rows(units=1, k=3)[0]
    with pytest.raises(ValueError, match="3 images but 2 masks"):
        processor({**row, "masks": row["masks"][:2]})
    with pytest.raises(ValueError, match=r"mask 1 has shape \(20, 48\).*40×48"):
        processor(
            {**row, "masks": [row["masks"][0], np.zeros((20, 48), np.uint8), row["masks"][2]]}
        )
    with pytest.raises(ValueError, match="layer1/0 is empty"):
        processor({**row, "images": [], "masks": []})
    with pytest.raises(ValueError, match="has no 'images' column"):
        processor({"layer": "conv1", "unit": 7, "masks": row["masks"]})
    with pytest.raises(ValueError, match="No exemplar-set rows"):
        processor([])
    with pytest.raises(ValueError, match="'resnet_does_not_exist'"):
        MilanCaptionerConfig(backbone="resnet_does_not_exist")
    with pytest.raises(ValueError, match="'beam'"):
        MilanCaptionerConfig(backbone="test_efficientnet", pmi_strategy="beam")
    model = tiny_captioner(tokenizer)
    with pytest.raises(ValueError, match="Empty exemplar set"):
        model.generate(exemplar_features=torch.zeros(2, 0, 184))
    with pytest.raises(ValueError, match="pixel_values and masks"):
        model.generate(pmi_weight=0.0)


def test_push_to_hub_sends_a_complete_describer(tokenizer, fake_hub):
    model = tiny_captioner(tokenizer)
    model.push_to_hub("someone/milan-captioner")
    MilanProcessor.from_model_config(model.config, tokenizer).push_to_hub("someone/milan-captioner")
    commits = fake_hub.calls_to("create_commit")
    assert {commit["repo_id"] for commit in commits} == {"someone/milan-captioner"}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
    } <= set(fake_hub.sent["someone/milan-captioner"])


def test_checkpoint_can_leave_the_pretrained_backbone_out(tokenizer, tmp_path):
    config = MilanCaptionerConfig(
        vocab_size=len(tokenizer),
        image_size=32,
        embedding_size=8,
        hidden_size=16,
        save_backbone_weights=False,
    )
    model = MilanCaptionerModel(config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 1_000_000  # backbone: ~12 MB
    loaded = MilanCaptionerModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with pytest.raises(ValueError, match="needs backbone_pretrained=True"):
        MilanCaptionerConfig(backbone_pretrained=False, save_backbone_weights=False)


def test_prior_scores_shared_prefixes_exactly(tokenizer):
    prior = tiny_captioner(tokenizer).prior
    sequences = torch.tensor(
        [
            [1, 4, 5, 6, 2],
            [1, 4, 5, 2, 0],  # shares a prefix with the first
            [1, 4, 5, 6, 2],  # duplicate
            [1, 6, 2, 0, 0],
            [1, 2, 0, 0, 0],  # empty description
            [1, 3, 6, 4, 5],  # unfinished
        ]
    )
    torch.testing.assert_close(
        prior.sequence_log_probs(sequences), prior_log_probs_by_hand(prior, sequences)
    )


def test_no_repeat_ngram_size_forbids_repeats(tokenizer, features):
    model = tiny_captioner(tokenizer)
    red, eos = tokenizer.convert_tokens_to_ids("red"), model.config.eos_token_id
    with torch.no_grad():  # a decoder that wants "red" forever and never to stop
        model.output.weight.zero_()
        model.output.bias.zero_()
        model.output.bias[red], model.output.bias[eos] = 5.0, -5.0
    plain = model.generate(
        exemplar_features=features,
        pmi_weight=0.0,
        num_beams=4,
        max_length=6,
        no_repeat_ngram_size=0,
    )
    assert plain.sequences[0].tolist()[1:] == [red] * 6
    for size in (1, 2):
        output = model.generate(
            exemplar_features=features,
            pmi_weight=0.0,
            num_beams=4,
            max_length=6,
            no_repeat_ngram_size=size,
        )
        for sequence in output.sequences.tolist():
            tokens = [t for t in sequence if t not in (model.config.pad_token_id,)]
            grams = [tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
            assert len(grams) == len(set(grams)), (size, tokens)
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be >= 0"):
        model.generate(exemplar_features=features, no_repeat_ngram_size=-1)


def test_rerank_of_one_beam_is_generate_at_each_lambda(tokenizer, features):
    model = tiny_captioner(tokenizer, seed=4)
    searched = model.generate(exemplar_features=features, pmi_weight=0.0, num_beams=6)
    for weight in (0.0, 0.3, 1.5):
        direct = model.generate(exemplar_features=features, pmi_weight=weight, num_beams=6)
        reranked = searched.rerank(weight)
        assert torch.equal(reranked.sequences, direct.sequences)
        torch.testing.assert_close(reranked.scores, direct.scores)
        torch.testing.assert_close(reranked.prior_log_probs, direct.prior_log_probs)
    model.prior = None
    without_prior = model.generate(exemplar_features=features, pmi_weight=0.0, num_beams=6)
    with pytest.raises(ValueError, match="pmi_weight=0.5 needs a prior"):
        without_prior.rerank(0.5)


def test_decoding_defaults_live_in_the_generation_config(tokenizer, features, tmp_path):
    model = tiny_captioner(tokenizer)
    settings = model.generation_config
    assert (settings.num_beams, settings.pmi_weight, settings.pmi_strategy) == (50, 0.2, "rerank")
    assert (settings.max_new_tokens, settings.no_repeat_ngram_size) == (15, 3)
    assert not hasattr(model.config, "beam_size") and not hasattr(model.config, "pmi_weight")
    explicit = model.generate(
        exemplar_features=features,
        num_beams=50,
        pmi_weight=0.2,
        pmi_strategy="rerank",
        max_length=15,
        no_repeat_ngram_size=3,
    )
    assert torch.equal(model.generate(exemplar_features=features).sequences, explicit.sequences)
    # Changing the generation config changes what generate does by default.
    model.generation_config.num_beams = 3
    model.save_pretrained(tmp_path)
    loaded = MilanCaptionerModel.from_pretrained(tmp_path)
    assert loaded.generation_config.num_beams == 3 and loaded.generation_config.pmi_weight == 0.2
    three_beams = loaded.generate(exemplar_features=features)
    assert three_beams.beam_sequences.shape[1] == 3
    with pytest.raises(TypeError, match="decode with MilanProcessor.batch_decode"):
        loaded.generate(exemplar_features=features, tokenizer=tokenizer)


def test_checkpoints_with_decoding_settings_in_config_json_still_load(tokenizer, tmp_path):
    """Checkpoints written before generation_config.json held the defaults carried them in
    config.json (and a generation_config.json without them, or none at all)."""
    import json

    model = tiny_captioner(tokenizer)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(beam_size=7, pmi_weight=0.4, pmi_strategy="token", max_description_length=9)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "bos_token_id": 1, "use_cache": False})
    )
    for with_generation_file in (True, False):
        if not with_generation_file:
            (tmp_path / "generation_config.json").unlink()
        loaded = MilanCaptionerModel.from_pretrained(tmp_path)
        settings = loaded.generation_config
        assert (settings.num_beams, settings.pmi_weight, settings.pmi_strategy) == (7, 0.4, "token")
        assert (settings.max_new_tokens, settings.no_repeat_ngram_size) == (9, 3)
        assert not hasattr(loaded.config, "beam_size")  # moved, not duplicated
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
    # A processor_config.json of the older flat layout still loads.
    (tmp_path / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "MilanProcessor",
                "image_size": 32,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            }
        )  # fmt: skip
    )
    tokenizer.save_pretrained(tmp_path)
    processor = MilanProcessor.from_pretrained(tmp_path)
    assert processor.image_size == 32 and processor.image_processor.image_mean == [0.5] * 3
