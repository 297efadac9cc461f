"""milan_hf.conversion (scripts/convert_original_checkpoint.py) on checkpoints built with the
original's format."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch

from milan_hf import conversion
from tests.captioner_fixtures import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
WORDS = ("red", "stripes", "dog", "faces", "the", ",")
EMBEDDING, HIDDEN, FEATURES = 8, 16, 64 + 64 + 128 + 256 + 512  # resnet18 pyramid: 1024


def serialized_indexer(words, spacy_config):
    """``lang.Indexer.serialize()`` of the original: vocab, spaCy tokenizer, flags."""
    tokenizer = {
        "properties": {
            "nlp": (spacy_config, b"spacy-bytes"),
            "lemmatize": False,
            "lowercase": True,
            "ignore_stop": False,
            "ignore_punct": False,
        },
        "children": {},
    }
    vocab = {"properties": {"tokens": tuple(words)}, "children": {}}
    properties = {"vocab": vocab, "tokenize": tokenizer, "start": True, "stop": True}
    properties.update(pad=True, unk=True, length=None)
    return {"properties": properties, "children": {}}


def original_payload(spacy_config, lm_words):
    """A ``Decoder.serialize()`` payload with the original's key names and shapes."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    vocab = len(WORDS) + 4
    state = OrderedDict()
    state["encoder.mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    state["encoder.std"] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for key, value in timm.create_model("resnet18", pretrained=False).state_dict().items():
        state[f"encoder.encoder.model.{key}"] = value  # torchvision's names, fc included
    for name, (rows, columns) in {
        "init_h.0": (HIDDEN, FEATURES),
        "init_c.0": (HIDDEN, FEATURES),
        "attend.query_to_hidden": (HIDDEN, HIDDEN),
        "attend.key_to_hidden": (HIDDEN, FEATURES),
        "attend.output.0": (1, HIDDEN),
        "feature_gate.0": (FEATURES, HIDDEN),
        "output.1": (vocab, HIDDEN),
        "lm.output.0": (vocab, HIDDEN),
    }.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = randn(rows, columns), randn(rows)
    state["embedding.weight"] = randn(vocab, EMBEDDING)
    state["lstm.weight_ih"] = randn(4 * HIDDEN, EMBEDDING + FEATURES)
    state["lstm.weight_hh"] = randn(4 * HIDDEN, HIDDEN)
    state["lstm.bias_ih"], state["lstm.bias_hh"] = randn(4 * HIDDEN), randn(4 * HIDDEN)
    state["lm.embedding.weight"] = randn(vocab, EMBEDDING)
    for layer, inputs in ((0, EMBEDDING), (1, HIDDEN)):
        state[f"lm.lstm.weight_ih_l{layer}"] = randn(4 * HIDDEN, inputs)
        state[f"lm.lstm.weight_hh_l{layer}"] = randn(4 * HIDDEN, HIDDEN)
        state[f"lm.lstm.bias_ih_l{layer}"] = randn(4 * HIDDEN)
        state[f"lm.lstm.bias_hh_l{layer}"] = randn(4 * HIDDEN)
    lm = {
        "properties": {
            "indexer": serialized_indexer(lm_words, spacy_config),
            "embedding_size": EMBEDDING,
            "hidden_size": HIDDEN,
            "layers": 2,
            "dropout": 0.5,
        },
        "children": {},
    }
    properties = {
        "indexer": serialized_indexer(WORDS, spacy_config),
        "encoder": {"properties": {"config": "resnet18", "pretrained": True}, "children": {}},
        "lm": lm,
        "embedding_size": EMBEDDING,
        "hidden_size": HIDDEN,
        "attention_hidden_size": None,
        "dropout": 0.5,
        "length": 15,
        "strategy": "rerank",
        "temperature": 0.2,
        "beam_size": 50,
    }
    return {
        "properties": properties,
        "children": {"encoder": "PyramidConvEncoder"},
        "state_dict": state,
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An original checkpoint on disk. spaCy's config pickles as ``thinc.config.Config``; a
    module of that name exists only while saving, as on the original authors' machines."""
    thinc, thinc_config = types.ModuleType("thinc"), types.ModuleType("thinc.config")
    config_class = type("Config", (dict,), {"__module__": "thinc.config"})
    thinc_config.Config = config_class
    saved = {name: sys.modules.get(name) for name in ("thinc", "thinc.config")}
    sys.modules.update({"thinc": thinc, "thinc.config": thinc_config})
    try:
        spacy_config = config_class({"nlp": {"lang": "en"}})
        payload = original_payload(spacy_config, lm_words=tuple(reversed(WORDS)))
        path = tmp_path_factory.mktemp("original") / "milan-base.pth"
        torch.save(payload, path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path, payload


def original_log_probs(state, features, old_ids):
    """The original ``Decoder.step`` math, teacher-forced, on the original's tensors."""

    def linear(name, x):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    pooled = features.mean(1)
    h, c = torch.tanh(linear("init_h.0", pooled)), torch.tanh(linear("init_c.0", pooled))
    cell = torch.nn.LSTMCell(EMBEDDING + FEATURES, HIDDEN)
    cell.load_state_dict({k[len("lstm.") :]: v for k, v in state.items() if k.startswith("lstm.")})
    total = torch.zeros(len(features))
    for t in range(old_ids.shape[1] - 1):
        hidden = torch.tanh(
            linear("attend.query_to_hidden", h).unsqueeze(1)
            + linear("attend.key_to_hidden", features)
        )
        attention = linear("attend.output.0", hidden).squeeze(-1).softmax(dim=1)
        attended = (attention.unsqueeze(-1) * features).sum(1)
        gated = attended * torch.sigmoid(linear("feature_gate.0", h))
        inputs = torch.cat([state["embedding.weight"][old_ids[:, t]], gated], dim=-1)
        h, c = cell(inputs, (h, c))
        log_probs = linear("output.1", h).log_softmax(-1)
        total += log_probs.gather(1, old_ids[:, t + 1 : t + 2]).squeeze(1)
    return total


def test_converts_original_checkpoint(checkpoint, tmp_path):
    path, payload = checkpoint
    output_dir = conversion.main([str(path), "--output-dir", str(tmp_path / "converted")])

    from milan_hf.modeling_milan import MilanCaptionerModel
    from milan_hf.processing_milan import MilanProcessor

    model = MilanCaptionerModel.from_pretrained(output_dir).eval()
    processor = MilanProcessor.from_pretrained(output_dir)
    tokenizer = processor.tokenizer
    state = payload["state_dict"]
    assert tokenizer.convert_ids_to_tokens(list(range(4, 10))) == list(WORDS)
    assert model.config.backbone == "resnet18" and model.config.feature_size == FEATURES
    settings = model.generation_config
    assert settings.pmi_weight == 0.2 and settings.num_beams == 50
    assert model.prior.config.num_layers == 2
    torch.testing.assert_close(
        model.encoder.backbone.layer4[1].conv2.weight,
        state["encoder.encoder.model.layer4.1.conv2.weight"],
    )
    # Vocabulary rows move: original <start>=n, <stop>=n+1, words 0..n-1; the LM's vocabulary
    # is in another order than the decoder's.
    n = len(WORDS)
    torch.testing.assert_close(model.embedding.weight[1], state["embedding.weight"][n])
    torch.testing.assert_close(model.output.bias[2], state["output.1.bias"][n + 1])
    red = tokenizer.convert_tokens_to_ids("red")
    torch.testing.assert_close(
        model.prior.embedding.weight[red], state["lm.embedding.weight"][n - 1]
    )

    # The converted captioner computes what the original's decoder computes.
    features = torch.randn(2, 5, FEATURES, generator=torch.Generator().manual_seed(2))
    text = ["red stripes", "the dog faces ,"]
    new_ids = tokenizer(text, padding=True, return_tensors="pt")["input_ids"][:, :4]
    old_of_new = {0: n + 2, 1: n, 2: n + 1, 3: n + 3} | {4 + i: i for i in range(n)}
    old_ids = new_ids.clone().apply_(lambda i: old_of_new[i])
    expected = original_log_probs(state, features, old_ids)
    torch.testing.assert_close(model.sequence_log_probs(new_ids[:, :4], features), expected)
    output = model.generate(exemplar_features=features, num_beams=4)
    assert len(processor.batch_decode(output.sequences)) == 2


def test_conversion_refuses_unexpected_contents(checkpoint, tmp_path):
    _, payload = checkpoint
    with pytest.raises(ValueError, match="top-level keys"):
        conversion.convert({**payload, "optimizer": {}})
    extra_tensor = {
        **payload,
        "state_dict": {**payload["state_dict"], "extra.weight": torch.ones(1)},
    }
    with pytest.raises(ValueError, match="Unexpected entries.*extra.weight"):
        conversion.convert(extra_tensor)
    alexnet = {
        **payload,
        "properties": {
            **payload["properties"],
            "encoder": {"properties": {"config": "alexnet"}, "children": {}},
        },
    }
    with pytest.raises(ValueError, match="'alexnet' has no timm counterpart"):
        conversion.convert(alexnet)
    with pytest.raises(ValueError, match=r"unexpected properties \['optimizer_state'\]"):
        conversion.convert(
            {**payload, "properties": {**payload["properties"], "optimizer_state": 1}}
        )

    # Arbitrary pickled objects are refused by the weights-only loader.
    smuggled = tmp_path / "smuggled.pth"
    torch.save({"properties": {}, "state_dict": {}, "children": {"x": Path("/etc")}}, smuggled)
    with pytest.raises(ValueError, match="Refusing.*pathlib.PosixPath") as refused:
        conversion.load_original_checkpoint(smuggled)
    assert "weights_only=False" not in str(refused.value)
    assert "likely succeed" not in str(refused.value)
    with pytest.raises(FileNotFoundError):
        conversion.load_original_checkpoint(tmp_path / "missing.pth")
