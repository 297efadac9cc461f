"""``MilanProcessor``: exemplar-set rows → captioner inputs, and token ids → descriptions.

A ``ProcessorMixin`` pairing ``MilanImageProcessor`` (images and masks, see
``milan_hf.image_processing_milan``) with ``MilanTokenizer``. The captioner itself is text-free
(token ids in, token ids and scores out); strings are encoded and decoded here.
``save_pretrained`` writes ``processor_config.json`` (with the image processor's settings
nested) and the tokenizer files into the model's directory; ``from_pretrained`` also reads the
layouts written before (a flat ``processor_config.json``, or only the captioner's config).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import cached_file

from milan_hf.configuration_milan import MilanCaptionerConfig
from milan_hf.image_processing_milan import MilanImageProcessor
from milan_hf.tokenization_milan import MilanTokenizer

PROCESSOR_CONFIG_NAME = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder")


class MilanProcessor(ProcessorMixin):
    """Turns exemplar-set rows into ``pixel_values``, ``masks`` and ``exemplar_mask``, and
    token ids into descriptions.

    Args:
        image_processor: resizes/normalises exemplar images and resizes their masks.
        tokenizer: the word-level tokenizer shared by captioner and prior.
    """

    def __init__(self, image_processor: MilanImageProcessor, tokenizer: MilanTokenizer, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_model_config(
        cls, config: MilanCaptionerConfig, tokenizer: MilanTokenizer
    ) -> MilanProcessor:
        """The processor matching a captioner's input size and normalisation."""
        return cls(MilanImageProcessor.from_model_config(config), tokenizer)

    @property
    def image_size(self) -> int:
        return self.image_processor.image_size

    def __call__(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Process one row or a list of rows (and/or descriptions ``text``).

        Returns ``pixel_values`` (units, k, 3, S, S), ``masks`` (units, k, S, S) in [0, 1] and
        ``exemplar_mask`` (units, k), plus ``input_ids``/``attention_mask`` for ``text``.
        """
        if return_tensors != "pt":
            raise ValueError(f"Only return_tensors='pt' is supported, got {return_tensors!r}.")
        data: dict[str, torch.Tensor] = {}
        if rows is not None:
            data.update(self.image_processor(rows, return_tensors=return_tensors))
        if text is not None:
            encoded = self.tokenizer(text, padding=True, return_tensors="pt")
            data.update(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return BatchFeature(data=data)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """Descriptions of token-id rows (special tokens dropped, spaces trimmed)."""
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        kwargs.setdefault("skip_special_tokens", True)
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, **kwargs)]

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> MilanProcessor:
        """Load from a local directory or a Hub repository id: the tokenizer files and
        ``processor_config.json`` (nested or the older flat layout), or the captioner's
        config when there is no processor config."""
        location = str(pretrained_model_name_or_path)
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        settings = _image_processor_settings(location, hub_kwargs)
        tokenizer_file = cached_file(
            location, TOKENIZER_FILE, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if tokenizer_file is None:
            raise ValueError(
                f"{location!r} has no {TOKENIZER_FILE}: it is not a MILAN captioner directory "
                "(one written by save_pretrained holds config.json, model.safetensors, "
                f"{TOKENIZER_FILE} and {PROCESSOR_CONFIG_NAME})"
            )
        tokenizer = MilanTokenizer.from_pretrained(location, **hub_kwargs)
        return cls(MilanImageProcessor(**settings), tokenizer)


def _image_processor_settings(location: str, hub_kwargs: dict) -> dict[str, Any]:
    config_file = cached_file(
        location, PROCESSOR_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if config_file is not None:
        try:
            settings = json.loads(Path(config_file).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_file} is not valid JSON ({error})") from error
        # Written by ProcessorMixin: the image processor's settings are nested.
        settings = settings.get("image_processor", settings)
        return {key: settings[key] for key in ("image_size", "image_mean", "image_std")
                if key in settings}  # fmt: skip
    try:
        config = MilanCaptionerConfig.from_pretrained(location, **hub_kwargs)
    except OSError as error:
        raise ValueError(
            f"{location!r} has neither {PROCESSOR_CONFIG_NAME} nor a captioner config.json: "
            "it is not a MILAN captioner directory"
        ) from error
    return {"image_size": config.image_size, "image_mean": config.image_mean,
            "image_std": config.image_std}  # fmt: skip
