"""Exemplar extraction: every unit's top-k images and the regions where it fires.

The algorithm follows the original MILAN code (see ``shared/DESIGN.md``):

1. **Pass 1** runs the whole probe set once, with forward hooks on the requested layers (all of
   them in the same forward pass). Per unit it keeps a streaming top-k of images by the spatial
   max of the unit's activation map, and a fixed-grid histogram of *all* its spatial
   activations (:mod:`milan_hf.quantile_sketch`), whose memory does not grow with the number of
   images. The forward pass stops as soon as the deepest requested layer has run.
2. The threshold of each unit is the ``quantile`` (0.99) of its activations.
3. **Pass 2** re-runs only the images that are some unit's exemplar, keeps their low-resolution
   maps, and cuts masks by bilinear upsampling (``align_corners=True``) to the model's input
   size and thresholding.

Under ``accelerate launch`` / ``torchrun`` each process takes a shard of the images; the top-k
lists and histograms merge exactly at the end, so the result equals the single-process one.

Layer outputs become maps of shape (batch, units, height, width): convolutional outputs as they
are, transformer token outputs (batch, tokens, units) by dropping the prefix tokens (CLS,
registers) from the front and folding the rest into the patch grid, and vector outputs
(batch, units) as 1×1 maps.
"""

from __future__ import annotations

import difflib
import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets.arrow_writer import ArrowWriter
from PIL import Image
from tqdm.auto import tqdm

from . import schema
from .probe_images import (
    ProbeImages,
    ProbeTensorDataset,
    load_probe_images,
    probe_images_from_source,
)
from .quantile_sketch import UnitHistogram
from .vision_models import (
    DEFAULT_SEED,
    VisionModel,
    fit_input_size,
    geometry_transform,
    load_vision_model,
)

logger = logging.getLogger(__name__)

# Sorts after every real image id, so padding never wins a tie.
_NO_IMAGE = torch.iinfo(torch.int64).max
METADATA_KEY = schema.EXEMPLAR_METADATA_KEY


class _StopForward(Exception):
    """Raised by the last hook: the rest of the network is not needed."""


class LayerTaps:
    """Forward hooks on named layers that turn their outputs into (B, C, H, W) maps."""

    def __init__(self, model: VisionModel, layers: Sequence[str]):
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise ValueError("no layers given: name at least one module of the model")
        modules = dict(model.module.named_modules())
        for layer in self.layers:
            if layer not in modules or layer == "":
                raise ValueError(_unknown_layer_message(layer, list(modules)))
        self._modules = {layer: modules[layer] for layer in self.layers}
        self._captured: dict[str, torch.Tensor] = {}
        self._batch: int | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> LayerTaps:
        for layer, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: str) -> Callable[..., None]:
        def capture(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if layer in self._captured:  # a module run twice per forward: keep the first call
                return
            self._captured[layer] = output_to_maps(output, layer, self.model, self._batch)
            if len(self._captured) == len(self.layers):
                raise _StopForward

        return capture

    def run(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``pixels`` and return each layer's maps."""
        self._captured = {}
        self._batch = pixels.shape[0]
        try:
            self.model(pixels)
        except _StopForward:
            pass
        missing = [layer for layer in self.layers if layer not in self._captured]
        if missing:
            raise ValueError(f"layers {missing} did not run during the model's forward pass")
        captured, self._captured = self._captured, {}
        return captured


def layer_output_tensor(output: Any, layer: str) -> torch.Tensor:
    """The tensor of a layer's output: the first of a tuple/list or of a transformers
    ``ModelOutput``; anything else is a one-line error naming the layer."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif not isinstance(output, torch.Tensor) and hasattr(output, "to_tuple"):
        output = output.to_tuple()[0]  # a transformers ModelOutput
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer {layer!r} returned {type(output).__name__}, not a tensor")
    return output


def output_to_maps(
    output: Any, layer: str, model: VisionModel, batch_size: int | None = None
) -> torch.Tensor:
    """Turn a layer's output into activation maps of shape (batch, units, height, width).

    ``batch_size``, the number of images fed, guards against outputs whose first axis is not
    the images (windowed attention folds windows into it: (B * windows, tokens, C)).
    """
    output = layer_output_tensor(output, layer)
    if batch_size is not None and output.dim() >= 2 and output.shape[0] != batch_size:
        raise ValueError(
            f"layer {layer!r} outputs shape {tuple(output.shape)} for a batch of {batch_size} "
            "images: its first axis is not the images (windows of a windowed attention?); "
            "choose a layer whose output has one row per image, e.g. a whole block or stage"
        )
    if output.dim() == 4:
        return _channels_first(output, layer, model)
    if output.dim() == 2:
        return output[:, :, None, None]
    if output.dim() == 3:
        batch, tokens, units = output.shape
        prefix, (rows, cols) = _token_layout(tokens, model)
        if prefix is None:
            raise ValueError(
                f"layer {layer!r} outputs {tuple(output.shape)}: cannot fold {tokens} tokens "
                "into a square patch grid; set num_prefix_tokens/token_grid on the VisionModel"
            )
        grid = output[:, prefix:, :].transpose(1, 2)
        return grid.reshape(batch, units, rows, cols)
    raise ValueError(
        f"layer {layer!r} outputs shape {tuple(output.shape)}: supported are (B, C, H, W), "
        "(B, tokens, C) and (B, C)"
    )


def _channels_first(output: torch.Tensor, layer: str, model: VisionModel) -> torch.Tensor:
    """A 4-D output as (B, C, H, W): NCHW as it is, NHWC (timm Swin stages) transposed; one
    whose two last or two middle axes are no spatial grid of the input (an attention tensor
    (B, heads, tokens, d)) is refused."""
    _, second, third, fourth = output.shape
    as_nchw = _grid_mismatch(third, fourth, model)
    as_nhwc = _grid_mismatch(second, third, model)
    if as_nchw is not None and as_nhwc is not None:
        # Both could be: the reading whose two strides agree better, and on a tie, such as
        # (B, 7, 7, 7), the model's own format (timm's output_fmt).
        if as_nchw == as_nhwc:
            as_nchw = None if model.extra.get("output_fmt") == "NHWC" else as_nchw
        elif as_nhwc < as_nchw:
            as_nchw = None
    if as_nchw is not None:
        return output
    if as_nhwc is not None:
        return output.permute(0, 3, 1, 2)
    raise ValueError(
        f"layer {layer!r} outputs shape {tuple(output.shape)}, which is no (B, C, H, W) nor "
        f"(B, H, W, C) map of the {model.input_size[0]}x{model.input_size[1]} input (an "
        "attention tensor?): choose a layer whose output is a feature map or (B, tokens, C)"
    )


def _grid_mismatch(height: int, width: int, model: VisionModel) -> float | None:
    """How far apart the row and column strides of a (height, width) map of the model's input
    are (|log ratio|); None when it cannot be a feature map: larger than the input, strides
    too different, or a token count of a ViT."""
    input_height, input_width = model.input_size
    if not (0 < height <= input_height and 0 < width <= input_width):
        return None
    # The strides that give each side, allowing one row/column of padding either way and 10%:
    # they must overlap (a 1x1 pooled map of a 224x320 input passes, 197x64 of 224x224 not).
    rows_low, rows_high = input_height / (height + 1) / 1.1, input_height / max(height - 1, 0.5)
    cols_low, cols_high = input_width / (width + 1) / 1.1, input_width / max(width - 1, 0.5)
    if rows_low > cols_high * 1.1 or cols_low > rows_high * 1.1:
        return None
    if model.token_grid is not None:
        rows, cols = model.token_grid
        token_counts = range(rows * cols, rows * cols + 17)  # patches plus prefix tokens
        if (height, width) != (rows, cols) and (height in token_counts or width in token_counts):
            return None
    return abs(math.log((input_height / height) / (input_width / width)))


def _token_layout(tokens: int, model: VisionModel) -> tuple[int | None, tuple[int, int]]:
    if model.token_grid is not None:
        rows, cols = model.token_grid
        if 0 <= tokens - rows * cols <= 16:
            return tokens - rows * cols, (rows, cols)
    candidates = [model.num_prefix_tokens] if model.num_prefix_tokens is not None else [0, 1]
    for prefix in candidates:
        side = math.isqrt(tokens - prefix)
        if side * side == tokens - prefix and side > 0:
            return prefix, (side, side)
    return None, (0, 0)


def _unknown_layer_message(layer: str, names: list[str]) -> str:
    names = [name for name in names if name]
    close = difflib.get_close_matches(layer, names, n=8, cutoff=0.5)
    close += [name for name in names if layer and layer in name and name not in close][:8]
    if not close:
        close = [name for name in names if "." not in name][:12]
    return f"unknown layer {layer!r}; closest module names: {close[:10]}"


class _TopK:
    """Streaming top-k per unit by score, ties broken by the smaller image id."""

    def __init__(self, num_units: int, k: int, device: torch.device):
        self.scores = torch.full((num_units, k), float("-inf"), device=device)
        self.ids = torch.full((num_units, k), _NO_IMAGE, dtype=torch.int64, device=device)
        self.k = k

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """``scores`` (units, batch) for images ``ids`` (batch,)."""
        scores = torch.cat([self.scores, scores], dim=1)
        ids = torch.cat([self.ids, ids.view(1, -1).expand(scores.shape[0], -1)], dim=1)
        self.scores, self.ids = _select_top(scores, ids, self.k)


def _select_top(
    scores: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Two stable sorts: by id ascending, then by score descending, keep the first k.
    order = torch.argsort(ids, dim=1, stable=True)
    scores, ids = scores.gather(1, order), ids.gather(1, order)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), ids.gather(1, order)


@dataclass
class ExtractionInputs:
    """What an extraction runs on, checked and resolved once (see :func:`prepare_extraction`)."""

    model: VisionModel
    layers: list[str]
    probe: ProbeImages


def layer_list(layers: Sequence[str] | str) -> list[str]:
    """Layer names from a list or a comma-separated string; at least one, none twice."""
    if isinstance(layers, str):
        layers = layers.split(",")
    names = [name.strip() for name in layers if name and name.strip()]
    if not names:
        raise ValueError(f"no layers given ({layers!r}): name at least one module of the model")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"layers {duplicates} are given more than once")
    return names


def prepare_extraction(
    model: str | torch.nn.Module | VisionModel,
    layers: Sequence[str] | str,
    images: str | Path | datasets.Dataset | ProbeImages,
    *,
    k: int = schema.DEFAULT_K,
    quantile: float = schema.DEFAULT_QUANTILE,
    batch_size: int = 32,
    model_options: dict[str, Any] | None = None,
    probe_options: dict[str, Any] | None = None,
) -> ExtractionInputs:
    """The one preparation step of extraction and description: check the settings, resolve
    the model and its layers and the probe images, before any expensive work.

    ``model_options`` go to :func:`~milan_hf.vision_models.load_vision_model` (``pretrained``,
    ``checkpoint``, ``input_size``, ``transform``), ``probe_options`` to
    :func:`~milan_hf.probe_images.load_probe_images` (``split``, ``image_column``). Resolved
    inputs (a ``VisionModel``, a ``ProbeImages``) pass through, so calling it twice is cheap.
    """
    layers = layer_list(layers)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be strictly between 0 and 1, got {quantile!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    vision_model = load_vision_model(model, **(model_options or {}))
    LayerTaps(vision_model, layers)  # validates every layer name
    probe = load_probe_images(images, **(probe_options or {}))
    if k > len(probe):
        raise ValueError(f"k={k} is larger than the number of probe images ({len(probe)})")
    _fit_custom_transform_size(vision_model, probe)
    return ExtractionInputs(model=vision_model, layers=layers, probe=probe)


def extract_exemplars(
    model: str | torch.nn.Module | VisionModel,
    layers: Sequence[str] | str,
    images: str | Path | datasets.Dataset | ProbeImages,
    *,
    k: int = schema.DEFAULT_K,
    quantile: float = schema.DEFAULT_QUANTILE,
    batch_size: int = 32,
    num_workers: int = 0,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    input_size: int | tuple[int, int] | None = None,
    image_column: str | None = None,
    split: str | None = None,
    materialize: bool = False,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    seed: int = DEFAULT_SEED,
) -> datasets.Dataset | None:
    """Find every unit's top-``k`` exemplar images and the regions where it fires.

    Args:
        model: a timm model name, a local timm/transformers directory, a transformers hub id,
            a ``torch.nn.Module`` or a :class:`~milan_hf.vision_models.VisionModel`.
        layers: module names as in ``model.named_modules()`` (a list, or comma-separated).
        images: the probe set: a ``datasets.Dataset`` with an image column, a path (image
            folder, ``save_to_disk`` directory, parquet) or a hub dataset id.
        k: exemplars per unit.
        quantile: the quantile of a unit's activations over the whole probe set that becomes
            its mask threshold.
        transform: preprocessing override (PIL -> normalised tensor); masks take the size of
            its output on the first probe image (or ``input_size``). Its geometry cannot be
            read from a callable, so materialised images are resized to the mask size: pass
            ``geometry=`` to :func:`materialize_images` if the transform crops.
        materialize: embed the exemplar images (``images`` column) instead of ids alone.
        accelerator: an existing ``Accelerator``; one is created (on the CPU when no GPU is
            present) otherwise.
        seed: seed of a timm model's random initialisation (no ``pretrained``/``checkpoint``).

    Returns:
        The exemplar set (one row per unit, schema in :mod:`milan_hf.schema`) on the main
        process; ``None`` on the other processes of a distributed run. Unreadable probe images
        are skipped; their names are in the metadata (:func:`exemplar_metadata`).
    """
    inputs = prepare_extraction(
        model,
        layers,
        images,
        k=k,
        quantile=quantile,
        batch_size=batch_size,
        model_options=dict(
            pretrained=pretrained,
            checkpoint=checkpoint,
            transform=transform,
            input_size=input_size,
            seed=seed,
        ),
        probe_options=dict(split=split, image_column=image_column),
    )
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    show = progress and accelerator.is_local_main_process
    found = _search_probe_set(inputs, accelerator, k, quantile, batch_size, num_workers, show)
    if not accelerator.is_main_process:
        return None
    exemplars = _exemplar_set(found, inputs, k, quantile, accelerator.num_processes)
    if materialize:
        exemplars = materialize_images(exemplars, probe_images=inputs.probe, progress=progress)
    return exemplars


@dataclass
class _ProbeSearch:
    """What the two passes over the probe set found, merged across processes."""

    layers: list[str]
    top: dict[str, _TopK]
    thresholds: dict[str, torch.Tensor]
    dead: dict[str, torch.Tensor]
    exemplar_maps: dict[str, torch.Tensor]
    skipped: list[str]


def _search_probe_set(
    inputs: ExtractionInputs,
    accelerator: Accelerator,
    k: int,
    quantile: float,
    batch_size: int,
    num_workers: int,
    show: bool,
) -> _ProbeSearch:
    """Pass 1 ranks every image and thresholds every unit; pass 2 maps the exemplars only."""
    vision_model, probe, device = inputs.model, inputs.probe, accelerator.device
    vision_model.module.to(device)
    with LayerTaps(vision_model, inputs.layers) as taps, torch.inference_mode():
        # Pass 1: top-k and activation histograms over this process's shard of the images.
        own_images = _shard(list(range(len(probe))), accelerator)
        batches = _loader(probe, vision_model, own_images, batch_size, num_workers, device)
        top, histograms, skipped = pass_one(taps, batches, k, device, show)
        skipped = _gather_list(skipped, accelerator)
        _check_enough_readable(len(probe), skipped, k)
        for layer in taps.layers:
            if layer not in top:  # this process saw no image at all: learn the shapes
                _init_empty_state(taps, probe, vision_model, layer, k, device, top, histograms)
            _merge_across_processes(top[layer], histograms[layer], accelerator)
        thresholds = {layer: histograms[layer].quantile(quantile) for layer in taps.layers}
        dead = {layer: histogram.dead_units() for layer, histogram in histograms.items()}

        # Pass 2: only the images that are somebody's exemplar, for their full maps.
        needed = torch.unique(torch.cat([t.ids.flatten() for t in top.values()])).tolist()
        needed = _shard([i for i in needed if i != _NO_IMAGE], accelerator)
        exemplar_maps = _exemplar_maps(
            taps, probe, vision_model, top, needed, batch_size, num_workers, device, show
        )
        for layer in exemplar_maps:
            exemplar_maps[layer] = _reduce_sum(exemplar_maps[layer], accelerator)
    if skipped and accelerator.is_main_process:
        logger.warning(
            "skipped %d unreadable probe image(s): %s%s",
            len(skipped),
            skipped[:5],
            " ..." if len(skipped) > 5 else "",
        )
    return _ProbeSearch(taps.layers, top, thresholds, dead, exemplar_maps, skipped)


def _check_enough_readable(num_images: int, skipped: list[str], k: int) -> None:
    readable = num_images - len(skipped)
    if readable < k:
        raise ValueError(
            f"only {readable} of {num_images} probe images are readable, fewer than k={k}"
            + (f"; unreadable: {skipped[:5]}" if skipped else "")
        )


def _exemplar_set(
    found: _ProbeSearch, inputs: ExtractionInputs, k: int, quantile: float, num_processes: int
) -> datasets.Dataset:
    """The exemplar set of what the search found, with how it was extracted as metadata."""
    vision_model = inputs.model
    metadata = {
        "model": vision_model.name,
        "layers": found.layers,
        "k": k,
        "quantile": quantile,
        "input_size": list(vision_model.input_size),
        "geometry": vision_model.geometry,
        "probe_source": inputs.probe.source,
        "num_images": len(inputs.probe),
        "skipped_images": found.skipped,
        "num_processes": num_processes,
    }
    return _write_dataset(
        found.top, found.thresholds, found.dead, found.exemplar_maps, vision_model, metadata
    )


def pass_one(
    taps: LayerTaps,
    batches: Any,
    k: int,
    device: torch.device,
    show: bool = False,
) -> tuple[dict[str, _TopK], dict[str, UnitHistogram], list[str]]:
    """Stream ``batches`` of (pixels, ids, ok, errors) through the hooked model, keeping each
    unit's top-k images and activation histogram. Returns them and the unreadable images."""
    top: dict[str, _TopK] = {}
    histograms: dict[str, UnitHistogram] = {}
    skipped: list[str] = []
    for pixels, ids, ok, errors in tqdm(
        batches, desc="exemplars pass 1/2 (all images)", disable=not show
    ):
        if not bool(ok.all()):
            skipped += [error for error, good in zip(errors, ok.tolist()) if not good]
            pixels, ids = pixels[ok], ids[ok]
            if len(ids) == 0:
                continue
        maps = taps.run(pixels.to(device, non_blocking=True))
        ids = ids.to(device)
        for layer, layer_maps in maps.items():
            layer_maps = layer_maps.float()
            if layer not in top:
                top[layer] = _TopK(layer_maps.shape[1], k, device)
                histograms[layer] = UnitHistogram(layer_maps.shape[1], device)
            histograms[layer].update(layer_maps)
            scores = layer_maps.amax(dim=(2, 3))
            if bool(torch.isnan(scores).any()):
                # NaN ranks last; infinities stay infinite (nan_to_num's default would turn
                # them into ±3.4e38, which reads as a real activation).
                scores = torch.where(torch.isnan(layer_maps), float("-inf"), layer_maps)
                scores = scores.amax(dim=(2, 3))
            top[layer].update(scores.T.contiguous(), ids)
    return top, histograms, skipped


def _fit_custom_transform_size(model: VisionModel, probe: ProbeImages) -> None:
    for index in range(min(len(probe), 16)):  # the first readable image
        try:
            image = probe.open_image(index)
        except OSError:
            continue
        fit_input_size(model, image)
        return


def _shard(indices: list[int], accelerator: Accelerator) -> list[int]:
    # Contiguous shards: neighbouring images often live in the same file or parquet row group.
    parts = np.array_split(np.asarray(indices, dtype=np.int64), accelerator.num_processes)
    return parts[accelerator.process_index].tolist()


def _loader(
    probe: ProbeImages,
    model: VisionModel,
    indices: list[int],
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    dataset = ProbeTensorDataset(probe, model.transform, indices, model.input_size)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _init_empty_state(taps, probe, model, layer, k, device, top, histograms) -> None:
    pixels = model.transform(Image.new("RGB", (model.input_size[1], model.input_size[0])))
    units = taps.run(pixels[None].to(device))[layer].shape[1]
    top[layer] = _TopK(units, k, device)
    histograms[layer] = UnitHistogram(units, device)


def _merge_across_processes(top: _TopK, histogram: UnitHistogram, accelerator: Accelerator):
    if accelerator.num_processes == 1:
        return
    world = accelerator.num_processes
    scores = accelerator.gather(top.scores[None]).view(world, *top.scores.shape)
    ids = accelerator.gather(top.ids[None]).view(world, *top.ids.shape)
    top.scores, top.ids = _select_top(
        torch.cat(list(scores), dim=1), torch.cat(list(ids), dim=1), top.k
    )
    histogram.merge_across_processes(accelerator)


def _reduce_sum(tensor: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.gather(tensor[None]).sum(dim=0)


def _gather_list(items: list[str], accelerator: Accelerator) -> list[str]:
    if accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return sorted(gather_object(items))


def _exemplar_maps(
    taps: LayerTaps,
    probe: ProbeImages,
    model: VisionModel,
    top: dict[str, _TopK],
    indices: list[int],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    show: bool,
) -> dict[str, torch.Tensor]:
    """Low-resolution maps of every (unit, exemplar) slot whose image is in ``indices``."""
    maps: dict[str, torch.Tensor] = {}
    for pixels, ids, _ok, _error in tqdm(
        _loader(probe, model, indices, batch_size, num_workers, device),
        desc="exemplars pass 2/2 (exemplar images)",
        disable=not show,
    ):
        batch_maps = taps.run(pixels.to(device))
        ids = ids.to(device)
        for layer, layer_maps in batch_maps.items():
            layer_maps = layer_maps.float()
            if layer not in maps:
                units, _, height, width = layer_maps.transpose(0, 1).shape
                maps[layer] = torch.zeros(units, top[layer].k, height, width, device=device)
            unit, slot, image = torch.nonzero(
                top[layer].ids.unsqueeze(-1) == ids.view(1, 1, -1), as_tuple=True
            )
            maps[layer][unit, slot] = layer_maps[image, unit]
    for layer, t in top.items():  # a process with no pass-2 images still contributes zeros
        if layer not in maps:
            probe_maps = taps.run(
                model.transform(Image.new("RGB", model.input_size[::-1]))[None].to(device)
            )[layer]
            maps[layer] = torch.zeros(t.scores.shape[0], t.k, *probe_maps.shape[2:], device=device)
    return maps


def masks_from_maps(
    maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Binary masks from low-resolution maps (units, k, h, w) and per-unit thresholds:
    bilinear upsampling with ``align_corners=True`` to ``size``, then ``map > threshold``."""
    units, k = maps.shape[:2]
    upsampled = F.interpolate(
        maps.reshape(units * k, 1, *maps.shape[2:]).float(),
        size=tuple(size),
        mode="bilinear",
        align_corners=True,
    ).view(units, k, *size)
    return upsampled > thresholds.view(units, 1, 1, 1).to(upsampled.device)


def _write_dataset(
    top: dict[str, _TopK],
    thresholds: dict[str, torch.Tensor],
    dead: dict[str, torch.Tensor],
    exemplar_maps: dict[str, torch.Tensor],
    model: VisionModel,
    metadata: dict[str, Any],
) -> datasets.Dataset:
    features = schema.exemplar_features(model.input_size)

    def rows() -> Iterator[dict[str, Any]]:
        for layer in metadata["layers"]:
            ids = top[layer].ids.cpu()
            ids = torch.where(ids == _NO_IMAGE, torch.full_like(ids, -1), ids)
            scores = top[layer].scores.cpu()
            for start in range(0, ids.shape[0], 32):  # bound memory: 32 units' masks at a time
                stop = min(start + 32, ids.shape[0])
                masks = masks_from_maps(
                    exemplar_maps[layer][start:stop].cpu(),
                    thresholds[layer][start:stop],
                    model.input_size,
                )
                # No threshold describes a dead unit: whatever rounding leaves above it is noise.
                masks[dead[layer][start:stop]] = False
                masks = masks.to(torch.uint8).numpy()
                for unit in range(start, stop):
                    yield {
                        schema.LAYER: layer,
                        schema.UNIT: unit,
                        schema.IDS: ids[unit].tolist(),
                        schema.ACTIVATIONS: scores[unit].tolist(),
                        schema.MASKS: masks[unit - start],
                        schema.THRESHOLD: float(thresholds[layer][unit]),
                        schema.DEAD: bool(dead[layer][unit]),
                    }

    return write_rows(rows(), features, metadata)


def write_rows(
    rows: Iterator[dict[str, Any]],
    features: datasets.Features,
    metadata: dict[str, Any],
    directory: str | Path | None = None,
) -> datasets.Dataset:
    """Stream rows into an Arrow file (memory stays bounded) and open it as a Dataset whose
    ``info.description`` carries the extraction metadata."""
    directory = Path(directory or tempfile.mkdtemp(prefix="milan_hf_exemplars_"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "exemplars.arrow"
    info = datasets.DatasetInfo(
        description=schema.metadata_description(metadata), features=features
    )
    # Small writer batches: a row holds k full-size masks (750 kB at 224 px, k=15).
    with ArrowWriter(features=features, path=str(path), writer_batch_size=16) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()
    dataset = datasets.Dataset.from_file(str(path), info=info)
    return dataset


def exemplar_metadata(exemplars: datasets.Dataset) -> dict[str, Any]:
    """The extraction metadata (model, layers, k, quantile, geometry, probe source...)."""
    return schema.exemplar_metadata(exemplars)


def materialize_images(
    exemplars: datasets.Dataset,
    probe_images: str | Path | datasets.Dataset | ProbeImages | None = None,
    *,
    geometry: dict[str, Any] | None = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Add the ``images`` column: each unit's exemplar images, resized and cropped exactly as
    the model saw them (so they align with the masks).

    ``probe_images`` defaults to the source recorded at extraction time; ``geometry`` to the
    recorded preprocessing geometry.
    """
    metadata = exemplar_metadata(exemplars)
    if probe_images is None:
        if "probe_source" not in metadata:
            raise ValueError("no probe source recorded with these exemplars: pass probe_images")
        probe = probe_images_from_source(metadata["probe_source"])
    else:
        probe = load_probe_images(
            probe_images, image_column=metadata.get("probe_source", {}).get("image_column")
        )
    geometry = geometry or metadata.get("geometry")
    if geometry is None:
        raise ValueError("no preprocessing geometry recorded with these exemplars: pass geometry")
    reshape = geometry_transform(geometry)
    features = exemplars.features.copy()
    features[schema.IMAGES] = datasets.List(datasets.Image())

    def add_images(row: dict[str, Any]) -> dict[str, Any]:
        row[schema.IMAGES] = [
            reshape(probe.open_image(i)) if i >= 0 else Image.new("RGB", (1, 1))
            for i in row[schema.IDS]
        ]
        return row

    materialized = (
        exemplars.map(
            add_images,
            features=features,
            desc="materialising exemplar images",
            load_from_cache_file=False,
        )
        if progress
        else exemplars.map(add_images, features=features, load_from_cache_file=False)
    )
    materialized.info.description = exemplars.info.description
    return materialized
