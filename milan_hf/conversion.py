"""Convert an original MILAN release checkpoint (``milan-<key>.pth`` / ``<grouping>.pth``) into a
``MilanCaptionerModel`` directory (captioner + prior + tokenizer + processor config).

The library code of ``scripts/convert_original_checkpoint.py`` (whose CLI is :func:`main`).

The original (github.com/evandez/neuron-descriptions, ``src/milan/decoders.py``) saves a
``Decoder`` with its ``serialize`` format: ``{"properties", "children", "state_dict"}``, where
``properties`` holds the decoder's constructor arguments, the ``indexer`` (vocabulary), the
``encoder`` (``PyramidConvEncoder`` config) and the ``lm`` (the prior), and ``state_dict`` holds
every tensor, the encoder's (``encoder.encoder.model.*``) and the LM's (``lm.*``) included.

The file is read with ``torch.load(weights_only=True)``. The only non-tensor object the format
carries is spaCy's pipeline config (a ``thinc.config.Config`` dict, part of the pickled
tokenizer); it is received into a plain dict and discarded. Anything else the safe unpickler
does not know is refused, as are unknown properties and tensors.

Known differences from the original: the backbone is timm's (same weights, same names), whose
first feature stage is the stem *after* batch norm and ReLU where the original pooled the raw
``conv1`` output; masks are resized with antialiasing. Only the ResNet encoders convert
(``resnet18``/``50``/``101``); the AlexNet encoder has no timm counterpart.

    python scripts/convert_original_checkpoint.py milan-base.pth --output-dir milan-base
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from milan_hf.configuration_milan import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MilanCaptionerConfig,
    MilanPriorConfig,
)
from milan_hf.modeling_milan import (
    MilanCaptionerModel,
    NoRepeatWordsLogitsProcessor,
    weights_only_refusal_reason,
)
from milan_hf.processing_milan import MilanProcessor
from milan_hf.staged_output import staged_directory
from milan_hf.tokenization_milan import SPECIAL_TOKENS, MilanTokenizer

DECODER_PROPERTIES = {
    "indexer", "encoder", "lm", "embedding_size", "hidden_size", "attention_hidden_size",
    "dropout", "length", "strategy", "temperature", "beam_size",
}  # fmt: skip
LM_PROPERTIES = {"indexer", "embedding_size", "hidden_size", "layers", "dropout"}
# Original encoder configs whose torchvision backbone has a timm twin with identical names.
ENCODERS = {"resnet18": "resnet18", "resnet50": "resnet50", "resnet101": "resnet101"}
# Original decoder module → ours (the original wraps layers in nn.Sequential with activations).
DECODER_RENAMES = {
    "init_h.0.": "init_h.",
    "init_c.0.": "init_c.",
    "attend.query_to_hidden.": "attention.query_to_hidden.",
    "attend.key_to_hidden.": "attention.key_to_hidden.",
    "attend.output.0.": "attention.output.",
    "feature_gate.0.": "feature_gate.",
    "lstm.": "lstm.",
    "embedding.": "embedding.",
    "output.1.": "output.",
    "lm.embedding.": "prior.embedding.",
    "lm.lstm.": "prior.lstm.",
    "lm.output.0.": "prior.output.",
    "encoder.encoder.model.": "encoder.backbone.",
}
# Tensors indexed by token id, whose rows follow the vocabulary order.
VOCABULARY_ROWS = {"embedding.weight", "output.weight", "output.bias", "prior.embedding.weight",
                   "prior.output.weight", "prior.output.bias"}  # fmt: skip


# spaCy's pickled tokenizer config (a ``thinc.config.Config``, a dict subclass) is received as
# an OrderedDict: the safe unpickler fills only plain dict types. It is discarded afterwards.
SAFE_GLOBALS = [(OrderedDict, "thinc.config.Config"), frozenset, set]


def load_original_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The serialized decoder, read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"Refusing {path}: it holds objects a MILAN decoder checkpoint does not "
            f"({weights_only_refusal_reason(error)}); it is not loaded, as that could run code"
        ) from None
    if not isinstance(payload, Mapping):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a serialized decoder.")
    return dict(payload)


def _properties(serialized: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(serialized, Mapping) or "properties" not in serialized:
        raise ValueError(f"{where}: expected a serialized object with 'properties'.")
    properties = dict(serialized["properties"])
    unexpected = sorted(set(properties) - allowed)
    if unexpected:
        raise ValueError(f"{where}: unexpected properties {unexpected}.")
    return properties


def _vocabulary(indexer: Any, where: str) -> list[str]:
    try:
        tokens = indexer["properties"]["vocab"]["properties"]["tokens"]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{where}: no vocabulary at indexer.properties.vocab.properties.tokens"
        ) from error
    if not all(isinstance(token, str) for token in tokens):
        raise ValueError(f"{where}: vocabulary tokens must be strings.")
    return list(tokens)


def _old_ids_of_new(tokenizer: MilanTokenizer, words: list[str]) -> torch.Tensor:
    """For each new token id, the original id. The original indexer puts words first, then
    <start>, <stop>, <pad>, <unk> (ids n..n+3); ours puts <pad>, <bos>, <eos>, <unk> first."""
    n = len(words)
    old_special = {"<pad>": n + 2, "<bos>": n, "<eos>": n + 1, "<unk>": n + 3}
    old_word = {word: index for index, word in enumerate(words)}
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor(
        [old_special[t] if t in SPECIAL_TOKENS else old_word[t] for t in vocabulary]
    )


def convert(payload: Mapping[str, Any]) -> tuple[MilanCaptionerModel, MilanTokenizer]:
    """Build the captioner (with its prior) and tokenizer from a serialized original decoder."""
    unexpected = sorted(set(payload) - {"properties", "children", "state_dict"})
    if unexpected or "state_dict" not in payload:
        raise ValueError(f"Not a serialized MILAN decoder: top-level keys {sorted(payload)}.")
    children = dict(payload.get("children") or {})
    if children.get("encoder") != "PyramidConvEncoder":
        raise ValueError(f"Only PyramidConvEncoder decoders convert, got children {children}.")
    properties = _properties(payload, "decoder", DECODER_PROPERTIES)
    encoder_properties = _properties(properties["encoder"], "encoder", {"config", "pretrained"})
    encoder_name = encoder_properties.get("config")
    if encoder_name not in ENCODERS:
        raise ValueError(
            f"Encoder config {encoder_name!r} has no timm counterpart; "
            f"convertible: {sorted(ENCODERS)}."
        )
    words = _vocabulary(properties["indexer"], "decoder indexer")
    tokenizer = MilanTokenizer.from_words(words)

    prior_config = None
    lm_words = None
    if properties.get("lm") is not None:
        lm = _properties(properties["lm"], "lm", LM_PROPERTIES)
        lm_words = _vocabulary(lm["indexer"], "lm indexer")
        if set(lm_words) != set(words):
            raise ValueError("The LM's vocabulary differs from the decoder's.")
        prior_config = MilanPriorConfig(
            vocab_size=len(tokenizer),
            embedding_size=lm["embedding_size"],
            hidden_size=lm["hidden_size"],
            num_layers=lm["layers"],
            dropout=lm["dropout"],
        )
    config = MilanCaptionerConfig(
        vocab_size=len(tokenizer),
        backbone=ENCODERS[encoder_name],
        backbone_pretrained=False,  # the checkpoint carries the encoder's weights
        image_size=224,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        embedding_size=properties["embedding_size"],
        hidden_size=properties["hidden_size"],
        attention_hidden_size=properties.get("attention_hidden_size"),
        dropout=properties["dropout"],
        max_description_length=properties.get("length", 15),
        prior_config=prior_config,
    )
    model = MilanCaptionerModel(config)
    # The release's decoding settings become the converted captioner's defaults.
    model.generation_config.num_beams = properties.get("beam_size", 50)
    model.generation_config.pmi_weight = properties.get("temperature", 0.2)
    # The ids the no-repeated-words rule needs (the model itself is text-free).
    model.generation_config.word_roles = NoRepeatWordsLogitsProcessor.word_roles(tokenizer)

    decoder_rows = _old_ids_of_new(tokenizer, words)
    prior_rows = _old_ids_of_new(tokenizer, lm_words) if lm_words is not None else None
    model.load_state_dict(_converted_state_dict(model, payload, decoder_rows, prior_rows))
    return model.eval(), tokenizer


def _converted_state_dict(model, payload, decoder_rows, prior_rows) -> dict[str, torch.Tensor]:
    """The original state dict under our names, vocabulary rows reordered, checked to fill
    ``model`` exactly."""
    converted, unexpected = {}, []
    for key, tensor in payload["state_dict"].items():
        if key in ("encoder.mean", "encoder.std") or key.startswith("encoder.encoder.model.fc."):
            continue  # normalisation lives in the processor; the classifier head is unused
        prefix = next((p for p in DECODER_RENAMES if key.startswith(p)), None)
        if prefix is None or not isinstance(tensor, torch.Tensor):
            unexpected.append(key)
            continue
        new_key = DECODER_RENAMES[prefix] + key[len(prefix) :]
        if new_key in VOCABULARY_ROWS:
            tensor = tensor[prior_rows if new_key.startswith("prior.") else decoder_rows]
        converted[new_key] = tensor
    if unexpected:
        raise ValueError(f"Unexpected entries in the checkpoint's state_dict: {unexpected[:10]}")
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    if missing:
        raise ValueError(f"The checkpoint lacks tensors for {missing[:10]}")
    for key, tensor in converted.items():
        if key not in own:
            raise ValueError(f"Checkpoint tensor {key} has no place in the converted model.")
        if own[key].shape != tensor.shape:
            raise ValueError(
                f"{key}: checkpoint shape {tuple(tensor.shape)}, model {tuple(own[key].shape)}"
            )
    return converted


def save_atomically(
    model: MilanCaptionerModel, tokenizer: MilanTokenizer, output_dir: Path
) -> None:
    """Write into a temporary folder beside ``output_dir``, then move it into place."""
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} exists; choose another --output-dir.")
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        MilanProcessor.from_model_config(model.config, tokenizer).save_pretrained(staging)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="original milan-<key>.pth file")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload to this model repo")
    args = parser.parse_args(argv)
    model, tokenizer = convert(load_original_checkpoint(args.checkpoint))
    output_dir = Path(args.output_dir)
    save_atomically(model, tokenizer, output_dir)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(output_dir), repo_id=args.push_to_hub, repo_type="model")
    print(f"Converted {args.checkpoint} → {output_dir} ({len(tokenizer)} tokens)")
    return output_dir
