"""``MilanProcessor``: exemplar-set rows → captioner inputs, and token ids → descriptions.

A row follows the shared exemplar-set schema (``milan_hf.schema``): ``images`` (k images as the
probed model saw them) and ``masks`` (k binary H×W masks, one per image). Each image is resized
to the encoder's square input and normalised with the backbone's mean/std; each mask is resized
the same way (bilinear, antialiased, so thin regions survive shrinking). Units with fewer
exemplars than the longest in a batch are padded and flagged in ``exemplar_mask``.

The processor pairs this image handling with ``MilanTokenizer``; ``save_pretrained`` writes
``processor_config.json`` next to the tokenizer files, in the model's directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.utils import cached_file

from milan_hf import schema
from milan_hf.configuration_milan import MilanCaptionerConfig
from milan_hf.tokenization_milan import MilanTokenizer

PROCESSOR_CONFIG_NAME = "processor_config.json"


class MilanProcessor:
    """Turns exemplar-set rows into ``pixel_values``, ``masks`` and ``exemplar_mask``.

    Args:
        tokenizer: the word-level tokenizer shared by captioner and prior.
        image_size: side of the square images and masks fed to the encoder.
        image_mean, image_std: per-channel normalisation (the backbone's data config).
    """

    def __init__(
        self,
        tokenizer: MilanTokenizer | None = None,
        image_size: int = 224,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_mean = [float(value) for value in image_mean]
        self.image_std = [float(value) for value in image_std]

    @classmethod
    def from_model_config(
        cls, config: MilanCaptionerConfig, tokenizer: MilanTokenizer | None = None
    ) -> MilanProcessor:
        """The processor matching a captioner's input size and normalisation."""
        return cls(tokenizer, config.image_size, config.image_mean, config.image_std)

    # -- images and masks -------------------------------------------------------------------

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
            if isinstance(rows, Mapping):
                rows = [rows]
            if len(rows) == 0:
                raise ValueError("No exemplar-set rows given.")
            processed = [self.process_row(row) for row in rows]
            k = max(len(images) for images, _ in processed)
            size = self.image_size
            pixel_values = torch.zeros(len(processed), k, 3, size, size)
            masks = torch.zeros(len(processed), k, size, size)
            exemplar_mask = torch.zeros(len(processed), k, dtype=torch.bool)
            for index, (unit_images, unit_masks) in enumerate(processed):
                pixel_values[index, : len(unit_images)] = unit_images
                masks[index, : len(unit_masks)] = unit_masks
                exemplar_mask[index, : len(unit_images)] = True
            data.update(pixel_values=pixel_values, masks=masks, exemplar_mask=exemplar_mask)
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("This processor has no tokenizer to encode text with.")
            encoded = self.tokenizer(text, padding=True, return_tensors="pt")
            data.update(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return BatchFeature(data=data)

    def process_row(self, row: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One unit's (k, 3, S, S) normalised images and (k, S, S) masks."""
        name = _unit_name(row)
        images = row.get(schema.IMAGES)
        if images is None:
            raise ValueError(
                f"Exemplar set {name} has no {schema.IMAGES!r} column; materialise the exemplar "
                f"images (from {schema.IDS!r} and the probe dataset) before describing."
            )
        masks = row.get(schema.MASKS)
        if masks is None:
            raise ValueError(f"Exemplar set {name} has no {schema.MASKS!r} column.")
        if len(images) == 0:
            raise ValueError(f"Exemplar set {name} is empty: it has 0 images.")
        if len(images) != len(masks):
            raise ValueError(
                f"Exemplar set {name} has {len(images)} images but {len(masks)} masks; "
                "each image needs exactly one mask."
            )
        pixel_values, resized_masks = [], []
        for index, (image, mask) in enumerate(zip(images, masks)):
            image = _to_pil(image)
            mask = torch.as_tensor(np.asarray(mask)).squeeze()
            if mask.ndim != 2 or tuple(mask.shape) != (image.height, image.width):
                raise ValueError(
                    f"Exemplar set {name}: mask {index} has shape {tuple(mask.shape)} but its "
                    f"image is {image.height}×{image.width} (height×width); they must match."
                )
            pixel_values.append(self._image_to_tensor(image))
            resized_masks.append(self._resize_mask(mask))
        return torch.stack(pixel_values), torch.stack(resized_masks)

    def _image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        size = self.image_size
        resized = image.resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std

    def _resize_mask(self, mask: torch.Tensor) -> torch.Tensor:
        mask = (mask > 0).float()[None, None]
        size = (self.image_size, self.image_size)
        return F.interpolate(mask, size=size, mode="bilinear", antialias=True)[0, 0].clamp(0, 1)

    # -- text -------------------------------------------------------------------------------

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(sequences, **kwargs)

    # -- saving and loading -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "processor_class": type(self).__name__,
            "image_size": self.image_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``processor_config.json`` and the tokenizer files into ``save_directory``."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, PROCESSOR_CONFIG_NAME), "w") as file:
            json.dump(self.to_dict(), file, indent=2)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> MilanProcessor:
        """Load from a local directory or a Hub repository id (``processor_config.json`` and
        the tokenizer; a directory with only a captioner config also works)."""
        config_file = cached_file(
            pretrained_model_name_or_path,
            PROCESSOR_CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            **kwargs,
        )
        if config_file is not None:
            with open(config_file) as file:
                settings = json.load(file)
            settings.pop("processor_class", None)
        else:
            config = MilanCaptionerConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
            settings = {
                "image_size": config.image_size,
                "image_mean": config.image_mean,
                "image_std": config.image_std,
            }
        tokenizer = MilanTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(tokenizer=tokenizer, **settings)


def _unit_name(row: Mapping[str, Any]) -> str:
    layer, unit = row.get(schema.LAYER), row.get(schema.UNIT)
    return f"{layer}/{unit}" if layer is not None or unit is not None else "(unnamed unit)"


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Mapping) and image.get("bytes") is not None:  # datasets' raw Image
        import io

        return Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)  # CHW → HWC
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")
