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

import hashlib
import json
import logging
import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Seed of random-initialised models, so that two runs (and every process of one) probe the
#: same network.
DEFAULT_SEED = 0

logger = logging.getLogger(__name__)
_warned_untrained: set[tuple[str, int]] = set()


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
    seed: int = DEFAULT_SEED,
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
        seed: seeds the random initialisation of a timm model built without pretrained weights
            or a checkpoint (the global torch RNG is left as it was). In a distributed run every
            process then takes rank 0's weights.
    """
    if isinstance(model, VisionModel):
        return model
    if isinstance(model, torch.nn.Module):
        loaded = _plain_module(model, input_size)
    elif isinstance(model, (str, Path)):
        untrained = checkpoint is None and not pretrained
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # with a transform, input_size is the size of its tensors (below), not timm's
            model_size = input_size if transform is None else None
            loaded = _from_name(str(model), pretrained=pretrained, input_size=model_size)
        if untrained and loaded.extra.get("random_weights"):
            _warn_untrained(loaded.name, seed)
            share_rank_zero_weights(loaded.module)
    else:
        raise TypeError(
            f"model must be a timm name, a model directory or a torch.nn.Module, got {model!r}"
        )
    if (
        input_size is not None
        and transform is None
        and loaded.geometry["type"] == "image_processor"
    ):
        raise ValueError(
            f"input_size={input_size} cannot be applied to {loaded.name}: its image processor "
            "sets the size; save the processor with another size, or pass a transform"
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
    """Load local weights into ``module``; never unpickles arbitrary objects.

    Every failure is one line naming the file and what would load: an unreadable safetensors
    file, pickled code, keys or shapes that do not match the model.
    """
    path = Path(checkpoint)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors")) or ["model.safetensors"]
        raise ValueError(
            f"checkpoint {path} is a directory: pass the weights file in it (e.g. "
            f"{path / inside[0]}), or the directory itself as the model"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = read_state_dict(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = module.state_dict()
    wrong_shapes = [
        f"{key} {tuple(value.shape)} (model {tuple(expected[key].shape)})"
        for key, value in state.items()
        if key in expected and hasattr(value, "shape") and value.shape != expected[key].shape
    ]
    if wrong_shapes:
        raise ValueError(
            f"{path} does not match the model: wrong shapes for {wrong_shapes[:3]}"
            f"{'...' if len(wrong_shapes) > 3 else ''}; is it a checkpoint of another "
            "architecture or number of classes?"
        )
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match the model: missing keys {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected keys "
            f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def read_state_dict(path: Path) -> Any:
    """The tensors of a safetensors file or a ``torch.save`` file (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path} is not a readable safetensors file ({error}); it may be truncated: "
                "save it again with safetensors.torch.save_file(state_dict, path)"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickled code: say so plainly
        raise ValueError(refused_pickle_message(path, error)) from None


def refused_pickle_message(path: Path | str, error: BaseException) -> str:
    """One line for a file ``torch.load(weights_only=True)`` refused, without torch's advice to
    retry with ``weights_only=False`` (that would run whatever code the pickle holds)."""
    text = str(error)
    found = re.search(r"(unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
    if found:
        reason = f"it holds pickled Python objects (GLOBAL {found.group(2)})"
    else:
        # torch's lines other than its advice to turn weights_only off
        lines = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and "weights_only" not in line and "documentation" not in line
        ]
        detail = lines[0][:160] if lines else type(error).__name__
        reason = f"it is not a weights-only torch file ({detail})"
    return (
        f"refused to load {path}: {reason}, and milan_hf never unpickles code. Pass the weights "
        "as safetensors (safetensors.torch.save_file(model.state_dict(), 'model.safetensors'))"
        " or a plain state dict of tensors"
    )


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of ``module``'s class and every tensor of its state dict (names, bytes):
    the identity of the weights in run fingerprints."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]


def share_rank_zero_weights(module: torch.nn.Module) -> None:
    """In a distributed run (``torchrun`` / ``accelerate launch``), give every process rank 0's
    weights, so that the processes' shards are probed on one and the same network."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # joins the process group the Accelerator will use later
    if not dist.is_initialized() or dist.get_world_size() <= 1:
        return
    # NCCL broadcasts GPU tensors only; gloo (CPU runs) the tensors where they are
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    with torch.no_grad():
        for tensor in module.state_dict().values():
            shared = tensor.to(device)
            dist.broadcast(shared, src=0)
            tensor.copy_(shared)


def _warn_untrained(name: str, seed: int) -> None:
    if (name, seed) in _warned_untrained:
        return
    _warned_untrained.add((name, seed))
    logger.warning(
        "%s has random weights (seed %d): no pretrained weights nor checkpoint were given, so "
        "its units are those of an untrained network. Pass --pretrained or --checkpoint for a "
        "trained one.",
        name,
        seed,
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
            return _timm_model(
                name, pretrained=True, local_dir=path, config=config, input_size=input_size
            )
        return _transformers_model(name)
    if name.startswith("hf-hub:") or timm.is_model(name):
        return _timm_model(name, pretrained=pretrained, input_size=input_size)
    if "/" in name:  # a hub id: transformers model (timm hub ids use the hf-hub: prefix)
        return _transformers_model(name)
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean one of {close}?" if close else ""
    raise ValueError(f"unknown model {name!r}: not a timm model name nor a local directory{hint}")


def _timm_model(
    name: str,
    *,
    pretrained: bool,
    local_dir: Path | None = None,
    config: dict | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> VisionModel:
    import timm
    from timm.data import create_transform, resolve_data_config

    random_weights = False
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
            config["architecture"], pretrained=False, num_classes=config.get("num_classes", 1000)
        )
        if weights is not None:  # our loader: one-line errors, never unpickles code
            load_checkpoint(module, weights)
        random_weights = weights is None
        if "pretrained_cfg" in config:
            module.pretrained_cfg.update(config["pretrained_cfg"])
    else:
        if name.startswith("hf-hub:"):
            _require_cached_hub_file(name.removeprefix("hf-hub:"), "config.json", name)
        overlay = _cached_pretrained_weights(name) if pretrained else None
        try:
            module = timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay)
        except RuntimeError as error:
            if "weights_only" not in str(error):
                raise
            raise ValueError(refused_pickle_message(f"the weights of {name}", error)) from None
        random_weights = not pretrained
    data_config = resolve_data_config(_input_size_override(name, module, input_size), model=module)
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
        extra={"random_weights": random_weights, "output_fmt": getattr(module, "output_fmt", None)},
    )


def _input_size_override(name: str, module: torch.nn.Module, input_size: Any) -> dict[str, Any]:
    """timm's data-config override for a requested input size (ignored before: masks and
    images silently kept the model's default size)."""
    if input_size is None:
        return {}
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    default = tuple(module.pretrained_cfg.get("input_size", (3, *size))[1:])
    if module.pretrained_cfg.get("fixed_input_size") and size != default:
        raise ValueError(
            f"{name} only takes {default[0]}x{default[1]} inputs, not input_size={input_size}: "
            "drop input_size, or pass a transform and a model built for that size"
        )
    return {"input_size": (3, *size)}


def _cached_pretrained_weights(name: str) -> dict[str, str] | None:
    """``{"file": path}`` of the pretrained weights of timm model ``name`` when they are in the
    local cache; otherwise fail at once when the Hub cannot be reached (instead of retrying for
    a minute), saying how to pass local weights."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    if name.startswith("hf-hub:"):
        hub_id, url = name.removeprefix("hf-hub:"), None
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            return None
        hub_id, url = cfg.hf_hub_id, cfg.url
    filenames = ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")
    for filename in filenames if hub_id else ():
        cached = try_to_load_from_cache(hub_id.split("@")[0], filename)
        if isinstance(cached, str):
            return {"file": cached, "source": ""}  # load that file, ask the Hub nothing
    if url:
        cached_url = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if cached_url.is_file():
            return {"file": str(cached_url), "source": ""}
    reason = _hub_unreachable_reason()
    if reason:
        raise FileNotFoundError(
            f"the pretrained weights of {name!r} are not in the local cache and {reason}: "
            "download them once online, or pass local weights with --checkpoint FILE "
            "(checkpoint= in Python; safetensors or a state dict) instead of --pretrained"
        )
    return None


def _require_cached_hub_file(repo_id: str, filename: str, name: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        return
    reason = _hub_unreachable_reason()
    if reason:
        raise FileNotFoundError(
            f"{name!r} is not in the local Hugging Face cache and {reason}: download it once "
            "online, or pass a local timm model directory or a timm model name with --checkpoint"
        )


def _hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be asked right now (offline mode, no connection), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    ):
        return "HF_HUB_OFFLINE is set"
    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0]
    hostname, _, port = host.partition(":")
    try:
        socket.create_connection((hostname, int(port or 443)), timeout=3).close()
    except OSError as error:
        return f"the Hub ({hostname}) cannot be reached ({error})"
    return None


def _transformers_model(name: str) -> VisionModel:
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoImageProcessor, AutoModel

    try:
        module, loading = AutoModel.from_pretrained(name, output_loading_info=True)
    except SafetensorError as error:
        raise ValueError(
            f"the safetensors weights in {name} are not readable ({error}); they may be "
            "truncated: save the model again with save_pretrained"
        ) from None
    except (pickle.UnpicklingError, OSError, RuntimeError, ValueError) as error:
        if "weights_only" not in str(error) and "nsupported GLOBAL" not in str(error):
            raise
        raise ValueError(refused_pickle_message(f"the weights in {name}", error)) from None
    _check_loading_info(name, module, loading)
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


def _check_loading_info(name: str, module: torch.nn.Module, loading: dict[str, Any]) -> None:
    """Refuse weights that are mostly not this model's (transformers would initialise the rest
    at random and carry on); a few missing keys (a pooler absent from a classification
    checkpoint) are only a warning."""
    missing, mismatched = loading.get("missing_keys", []), loading.get("mismatched_keys", [])
    if mismatched or len(missing) > len(module.state_dict()) / 2:
        raise ValueError(
            f"the weights in {name} do not fit its config: {len(missing)} missing keys "
            f"{sorted(missing)[:4]}, wrong shapes {[key for key, *_ in mismatched][:4]}; are "
            "they another model's?"
        )
    if missing:
        logger.warning("%s: keys %s are not in its weights: initialised at random", name, missing)


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
