"""``MilanImageProcessor``: exemplar images and masks → the captioner encoder's inputs.

A row follows the shared exemplar-set schema (``milan_hf.schema``): ``images`` (k images as the
probed model saw them) and ``masks`` (k binary H×W masks, one per image). Each image is resized
to the encoder's square input (bilinear) and normalised with the backbone's mean/std; each mask
is resized the same way (bilinear, antialiased, so thin regions survive shrinking). Units with
fewer exemplars than the longest in a batch are padded and flagged in ``exemplar_mask``.

Images and masks can also be processed separately (``images_to_pixel_values``,
``resize_masks``): the encoder then runs its backbone once per distinct image and pools it
under every mask that uses it (``milan_hf.inference``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from milan_hf import schema
from milan_hf.configuration_milan import IMAGENET_MEAN, IMAGENET_STD, MilanCaptionerConfig


class MilanImageProcessor(BaseImageProcessor):
    """Resizes and normalises exemplar images, resizes their masks, pads exemplar sets.

    Args:
        image_size: side of the square images and masks fed to the encoder.
        image_mean, image_std: per-channel normalisation (the backbone's data config).
    """

    model_input_names = ["pixel_values", "masks", "exemplar_mask"]

    def __init__(
        self,
        image_size: int = 224,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.image_mean = [float(value) for value in image_mean]
        self.image_std = [float(value) for value in image_std]

    @classmethod
    def from_model_config(cls, config: MilanCaptionerConfig) -> MilanImageProcessor:
        """The image processor matching a captioner's input size and normalisation."""
        return cls(config.image_size, config.image_mean, config.image_std)

    def __call__(self, rows: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(rows, *args, **kwargs)

    def preprocess(
        self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], return_tensors: str = "pt"
    ) -> BatchFeature:
        """One exemplar-set row or a list of rows → ``pixel_values`` (units, k, 3, S, S),
        ``masks`` (units, k, S, S) in [0, 1] and ``exemplar_mask`` (units, k)."""
        if return_tensors != "pt":
            raise ValueError(f"Only return_tensors='pt' is supported, got {return_tensors!r}.")
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
        data = {"pixel_values": pixel_values, "masks": masks, "exemplar_mask": exemplar_mask}
        return BatchFeature(data=data)

    def process_row(self, row: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One unit's (k, 3, S, S) normalised images and (k, S, S) masks."""
        images, masks = checked_row(row)
        name = unit_name(row)
        pixel_values, resized_masks = [], []
        for index, (image, mask) in enumerate(zip(images, masks)):
            image = to_pil(image)
            mask = torch.as_tensor(np.asarray(mask)).squeeze()
            check_mask_fits(mask, image, name, index)
            pixel_values.append(self.image_to_pixel_values(image))
            resized_masks.append(self.resize_mask(mask))
        return torch.stack(pixel_values), torch.stack(resized_masks)

    def image_to_pixel_values(self, image: Any) -> torch.Tensor:
        """One image (PIL, array or datasets' raw image) → normalised (3, S, S)."""
        size = self.image_size
        resized = to_pil(image).resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std

    def resize_mask(self, mask: Any) -> torch.Tensor:
        """One binary H×W mask → (S, S) in [0, 1]."""
        return self.resize_masks([mask])[0]

    def resize_masks(self, masks: Sequence[Any]) -> torch.Tensor:
        """Binary H×W masks → (n, S, S) in [0, 1]; masks of one size are resized in one call
        (15× faster than one by one, and the same numbers)."""
        arrays = [np.asarray(mask).squeeze() for mask in masks]
        size = (self.image_size, self.image_size)
        if len({array.shape for array in arrays}) > 1:
            return torch.cat([self.resize_masks([array]) for array in arrays])
        batch = (torch.from_numpy(np.stack(arrays)) > 0).float().unsqueeze(1)
        return F.interpolate(batch, size=size, mode="bilinear", antialias=True)[:, 0].clamp(0, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": type(self).__name__,
            "image_size": self.image_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
        }


def unit_name(row: Mapping[str, Any]) -> str:
    layer, unit = row.get(schema.LAYER), row.get(schema.UNIT)
    return f"{layer}/{unit}" if layer is not None or unit is not None else "(unnamed unit)"


def checked_row(row: Mapping[str, Any]) -> tuple[Sequence[Any], Sequence[Any]]:
    """The row's images and masks, after checking that they exist and pair up."""
    name = unit_name(row)
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
    return images, masks


def check_mask_fits(mask: torch.Tensor, image: Image.Image, name: str, index: int) -> None:
    if mask.ndim != 2 or tuple(mask.shape) != (image.height, image.width):
        raise ValueError(
            f"Exemplar set {name}: mask {index} has shape {tuple(mask.shape)} but its "
            f"image is {image.height}×{image.width} (height×width); they must match."
        )


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, datasets' raw ``{"bytes": ...}`` or an array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Mapping) and image.get("bytes") is not None:  # datasets' raw Image
        return Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)  # CHW → HWC
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")
