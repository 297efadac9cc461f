"""Load the vision model to be described, with the preprocessing it expects.

Three kinds of model are supported, each with its own preprocessing:

- a timm model by name (``resnet18``, ``hf-hub:timm/...``) or a local timm directory: the
  model's own data config (resize, crop, interpolation, normalisation);
- a transformers vision model from a local directory or hub id: its image processor;
- any ``torch.nn.Module``: Resize(256) + CenterCrop(224) + ImageNet normalisation, the
  torchvision convention of the original MILAN code (scaled for another ``input_size``).

Besides the normalising transform, a :class:`VisionModel` knows the *geometry* alone (the same
resize and crop, no normalisation), so exemplar images can be materialised later exactly as the
model saw them, aligned with their masks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VisionModel:
    """A model ready for probing, with how to feed it and how to read its token outputs."""

    module: torch.nn.Module
    #: PIL image -> normalised (3, H, W) tensor, exactly as the model expects.
    transform: Callable[[Image.Image], torch.Tensor]
    #: A JSON-serialisable description of the resize/crop, for :func:`geometry_transform`.
    geometry: dict[str, Any]
    #: (height, width) of the model input, which is also the size of the exemplar masks.
    input_size: tuple[int, int]
    name: str = "model"
    #: Tokens before the patch tokens (CLS, distillation, registers) in (B, N, C) outputs.
    num_prefix_tokens: int | None = None
    #: Patch grid (rows, cols) of (B, N, C) outputs, when known.
    token_grid: tuple[int, int] | None = None
    #: Whether the model takes ``pixel_values=`` (transformers) instead of a positional tensor.
    keyword_input: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self, pixel_values: torch.Tensor) -> Any:
        if self.keyword_input:
            return self.module(pixel_values=pixel_values)
        return self.module(pixel_values)


def load_vision_model(
    model: str | torch.nn.Module,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    input_size: int | tuple[int, int] | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> VisionModel:
    """Resolve ``model`` (a timm name, a local timm/transformers directory, a transformers hub
    id, or a ``torch.nn.Module``) into a :class:`VisionModel` in eval mode.

    Args:
        pretrained: load the timm model's pretrained weights (from the hub or the local cache).
        checkpoint: local weights to load into the model (safetensors, or a state dict that
            ``torch.load(weights_only=True)`` accepts).
        input_size: model input size for a plain module (default 224).
        transform: overrides the preprocessing (PIL image -> normalised tensor). The exemplar
            masks then take the size of the tensors it returns.
    """
    if isinstance(model, VisionModel):
        return model
    if isinstance(model, torch.nn.Module):
        loaded = _plain_module(model, input_size)
    elif isinstance(model, (str, Path)):
        loaded = _from_name(str(model), pretrained=pretrained, input_size=input_size)
    else:
        raise TypeError(
            f"model must be a timm name, a model directory or a torch.nn.Module, got {model!r}"
        )
    if checkpoint is not None:
        load_checkpoint(loaded.module, checkpoint)
    if transform is not None:
        loaded.transform = transform
        size = tuple(
            transform(Image.new("RGB", (loaded.input_size[1], loaded.input_size[0]))).shape[-2:]
        )
        loaded.input_size = size  # type: ignore[assignment]
        if loaded.geometry.get("type") != "resize":
            loaded.geometry = {"type": "resize", "size": list(size)}
        # A transform that does not resize gives tensors the size of its input: measure it on
        # a real probe image (fit_input_size) rather than trusting the blank image above.
        loaded.extra["size_from_first_image"] = input_size is None
    loaded.module.eval()
    return loaded


def fit_input_size(model: VisionModel, image: Image.Image) -> None:
    """Set the input (and mask) size of a model with a custom transform from a real image."""
    if not model.extra.pop("size_from_first_image", False):
        return
    size = tuple(model.transform(image).shape[-2:])
    model.input_size = size  # type: ignore[assignment]
    model.geometry = {"type": "resize", "size": list(size)}


def load_checkpoint(module: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load local weights into ``module``; never unpickles arbitrary objects."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses pickled code: say so plainly
            raise ValueError(
                f"cannot load {path} safely (weights_only=True): {error}. "
                "Save the weights as safetensors or a plain state dict."
            ) from error
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match the model: missing keys {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected keys "
            f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def geometry_transform(geometry: dict[str, Any]) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL transform that resizes and crops like the model's preprocessing."""
    kind = geometry.get("type")
    if kind == "resize_center_crop":
        interpolation = T.InterpolationMode(geometry.get("interpolation", "bilinear"))
        resize = geometry["resize"]
        return T.Compose(
            [
                T.Resize(resize if isinstance(resize, int) else tuple(resize), interpolation),
                T.CenterCrop(tuple(geometry["crop"])),
            ]
        )
    if kind == "resize":
        return T.Resize(tuple(geometry["size"]), T.InterpolationMode.BILINEAR)
    if kind == "image_processor":
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(geometry["model"])

        def apply_processor(image: Image.Image) -> Image.Image:
            array = processor(
                images=image.convert("RGB"),
                do_normalize=False,
                do_rescale=False,
                return_tensors="np",
            )["pixel_values"][0]
            return Image.fromarray(array.transpose(1, 2, 0).clip(0, 255).astype("uint8"))

        return apply_processor
    raise ValueError(f"unknown geometry {geometry!r}")


# -- resolution of names ---------------------------------------------------------------------


def _from_name(name: str, *, pretrained: bool, input_size: Any) -> VisionModel:
    import timm

    path = Path(name)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a timm or transformers model")
        config = json.loads(config_file.read_text())
        if "architecture" in config and "model_type" not in config:
            return _timm_model(name, pretrained=True, local_dir=path, config=config)
        return _transformers_model(name)
    if name.startswith("hf-hub:") or timm.is_model(name):
        return _timm_model(name, pretrained=pretrained)
    if "/" in name:  # a hub id: transformers model (timm hub ids use the hf-hub: prefix)
        return _transformers_model(name)
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean one of {close}?" if close else ""
    raise ValueError(f"unknown model {name!r}: not a timm model name nor a local directory{hint}")


def _timm_model(
    name: str, *, pretrained: bool, local_dir: Path | None = None, config: dict | None = None
) -> VisionModel:
    import timm
    from timm.data import create_transform, resolve_data_config

    if local_dir is not None:
        weights = next(
            (
                local_dir / f
                for f in ("model.safetensors", "pytorch_model.bin")
                if (local_dir / f).is_file()
            ),
            None,
        )
        module = timm.create_model(
            config["architecture"],
            pretrained=weights is not None,
            pretrained_cfg_overlay={"file": str(weights)} if weights else None,
            num_classes=config.get("num_classes", 1000),
        )
        if "pretrained_cfg" in config:
            module.pretrained_cfg.update(config["pretrained_cfg"])
    else:
        module = timm.create_model(name, pretrained=pretrained)
    data_config = resolve_data_config({}, model=module)
    transform = create_transform(**data_config, is_training=False)
    height, width = data_config["input_size"][1:]
    crop_pct = data_config.get("crop_pct") or 1.0
    scale_size = math.floor(height / crop_pct), math.floor(width / crop_pct)
    geometry = {
        "type": "resize_center_crop",
        # timm resizes the shorter side when the crop is square, like torchvision's Resize(int)
        "resize": scale_size[0] if height == width else list(scale_size),
        "crop": [height, width],
        "interpolation": data_config.get("interpolation", "bilinear"),
    }
    grid = None
    patch_embed = getattr(module, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "grid_size", None) is not None:
        grid = tuple(patch_embed.grid_size)
    return VisionModel(
        module=module,
        transform=transform,
        geometry=geometry,
        input_size=(height, width),
        name=name,
        num_prefix_tokens=getattr(module, "num_prefix_tokens", None),
        token_grid=grid,
    )


def _transformers_model(name: str) -> VisionModel:
    from transformers import AutoImageProcessor, AutoModel

    module = AutoModel.from_pretrained(name)
    processor = AutoImageProcessor.from_pretrained(name)

    def transform(image: Image.Image) -> torch.Tensor:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    height, width = transform(Image.new("RGB", (256, 256))).shape[-2:]
    config = module.config
    grid = None
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, int):
        grid = (height // patch, width // patch)
    return VisionModel(
        module=module,
        transform=transform,
        geometry={"type": "image_processor", "model": name},
        input_size=(height, width),
        name=name,
        token_grid=grid,
        keyword_input=True,
    )


def _plain_module(module: torch.nn.Module, input_size: Any) -> VisionModel:
    size = input_size or 224
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    # Resize(256) + CenterCrop(224) for 224 inputs, scaled proportionally for others.
    resize = round(min(height, width) * 256 / 224)
    transform = T.Compose(
        [
            T.Resize(resize, T.InterpolationMode.BILINEAR),
            T.CenterCrop((height, width)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return VisionModel(
        module=module,
        transform=transform,
        geometry={
            "type": "resize_center_crop",
            "resize": resize,
            "crop": [height, width],
            "interpolation": "bilinear",
        },
        input_size=(height, width),
        name=type(module).__name__,
        num_prefix_tokens=getattr(module, "num_prefix_tokens", None),
    )
