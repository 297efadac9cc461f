"""Units of known meaning planted into the weights of real timm architectures.

Planting overwrites some channels' weights so that they compute a documented function; the
rest of the network is left as it is (random for ResNet-18 and the ViT, the real ImageNet
weights for EfficientNet-Lite0). The planted model is saved as a safetensors checkpoint and
described through the same path a user takes (``milan-hf describe --model NAME --checkpoint
FILE --layers LAYER --max-units N``), so the planted units are units ``0..N-1`` of ``LAYER``.

- **Colour** (red, yellow, green, blue, black, white: the colours a linear unit can separate
  from the others): a stem channel whose kernel averages the pixels' RGB along the direction
  that separates the colour from every other named colour by the widest margin (a small
  linear program), thresholded by its bias.
- **Region-gated colour** (ResNet, ViT): the colour where it lies in one half of the frame.
  ResNet: the colour channel travels through every residual block unchanged (identity
  shortcuts, its block convolutions zeroed); in ``layer4`` (7x7) a constant channel is shifted
  three times by zero-padded 3x3 convolutions, which leaves 1 only on the rows (columns) of
  one half, and the unit is ``relu(colour + M·gate - M)``. ViT: the position embedding carries
  the token's row/column, the first block's MLP computes ``gelu(colour) - M·gelu(k·outside)``.
- **OR of two colours** (ResNet, ViT): the sum of the two colour units after their ReLU/GELU.
- Not planted: orientation (an edge-energy stem channel pooled over two 3x3 stages reached an
  AUC of only 0.55-0.64 for stripes against shape edges, text and grass), AND of a colour and
  a shape.

``plant_units(name)`` returns the model and its ``PlantedTimmUnit`` list; ``check_planted_units``
measures each unit's AUC on probe-world renders of its concept against scenes without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import concepts as C

PLANTABLE_COLOURS = ("red", "yellow", "green", "blue", "black", "white")
GATED_REGIONS = ("top", "bottom", "left", "right")
DISJUNCTIONS = (("red", "blue"), ("green", "yellow"))
ARCHITECTURES = {
    # timm name: (layer described, whether region gating is planted)
    "resnet18": ("layer4", True),
    "tf_efficientnet_lite0": ("bn1", False),
    "vit_tiny_patch16_224": ("blocks.0.mlp.fc2", True),
}
_GATE = 10.0  # M: how far the gate pushes a unit below zero outside its region
_PEAK = 2.0  # a planted colour unit's response to its reference colour (below ReLU6's cap)


@dataclass(frozen=True)
class PlantedTimmUnit:
    """A planted unit: where it is and the expression it computes (annotator form)."""

    model: str
    layer: str
    unit: int
    expression: tuple[str, ...]


@cache
def colour_direction(colour: str) -> tuple[np.ndarray, float]:
    """(u, t): ``u·rgb - t`` is positive on ``colour`` (0-255 RGB) and negative on the other
    named colours, with the widest margin a direction of unit max-norm allows."""
    from scipy.optimize import linprog

    if colour not in C.COLOUR_RGB:
        raise ValueError(f"unknown colour {colour!r}; colours: {sorted(C.COLOUR_RGB)}")
    reference = np.array(C.COLOUR_RGB[colour], dtype=float)
    others = np.array([rgb for name, rgb in C.COLOUR_RGB.items() if name != colour], float)
    gaps = reference - others
    # maximise m subject to u·(reference - other) >= m, -1 <= u <= 1
    result = linprog(
        [0, 0, 0, -1],
        A_ub=np.hstack([-gaps, np.ones((len(others), 1))]),
        b_ub=np.zeros(len(others)),
        bounds=[(-1, 1)] * 3 + [(None, None)],
    )
    direction = result.x[:3]
    margin = -result.fun
    if margin <= 0:
        raise ValueError(f"no linear unit separates {colour!r} from the other colours")
    return direction, float(direction @ reference - margin / 2)


def _colour_kernel(colour: str, kernel: tuple[int, int], mean, std) -> tuple[torch.Tensor, float]:
    """Stem weights (3, kh, kw) and bias of a unit that gives ``_PEAK`` on ``colour``.

    The input is normalised, ``x = (rgb/255 - mean)/std``, so ``u·rgb`` is
    ``sum_c 255·u_c·(std_c·x_c + mean_c)``, averaged over the kernel's pixels.
    """
    direction, threshold = colour_direction(colour)
    scale = _PEAK / (direction @ np.array(C.COLOUR_RGB[colour], float) - threshold)
    height, width = kernel
    weight = torch.zeros(3, height, width)
    for channel in range(3):
        weight[channel] = float(255 * direction[channel] * std[channel] * scale) / (height * width)
    bias = float(scale * (255 * sum(direction[c] * mean[c] for c in range(3)) - threshold))
    return weight, bias


def _identity_norm(norm: nn.Module, channel: int, bias: float = 0.0) -> None:
    """Make a BatchNorm pass ``channel`` through unchanged (eval mode), plus ``bias``."""
    norm.weight.data[channel] = 1.0
    norm.bias.data[channel] = bias
    norm.running_mean[channel] = 0.0
    norm.running_var[channel] = 1.0 - norm.eps


def _shift_kernel(region: str) -> tuple[int, int]:
    """3x3 tap that reads the neighbour away from ``region``: zero padding then clears the
    far edge, so three shifts leave the half of a 7x7 map nearest ``region``."""
    return {"top": (2, 1), "bottom": (0, 1), "left": (1, 2), "right": (1, 0)}[region]


def _pass_through_block(block: nn.Module, channels: Sequence[int]) -> None:
    """A BasicBlock whose output keeps ``channels`` of its input (the shortcut carries them;
    the block's own contribution to them is zero; a downsampling shortcut picks them)."""
    for channel in channels:
        block.conv2.weight.data[channel] = 0.0
        _identity_norm(block.bn2, channel)
        if block.downsample is not None:
            conv, norm = block.downsample[0], block.downsample[1]
            conv.weight.data[channel] = 0.0
            conv.weight.data[channel, channel] = 1.0
            _identity_norm(norm, channel)


def plant_resnet(model: nn.Module, mean, std) -> list[tuple[int, tuple[str, ...]]]:
    """Colour units 0..5 and region-gated colour units after them, in ``layer4``'s output."""
    colours = list(PLANTABLE_COLOURS)
    for channel, colour in enumerate(colours):
        weight, bias = _colour_kernel(colour, model.conv1.weight.shape[-2:], mean, std)
        model.conv1.weight.data[channel] = weight
        _identity_norm(model.bn1, channel, bias)
    carried = list(range(len(colours)))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            _pass_through_block(block, carried)
    units = [(channel, ("concept", colour)) for channel, colour in enumerate(colours)]
    first, second = model.layer4[0], model.layer4[1]
    constant = first.conv1.weight.shape[0] - 1  # a block-internal channel that is always 1
    first.conv1.weight.data[constant] = 0.0
    _identity_norm(first.bn1, constant, bias=1.0)
    gated = [(colour, region) for region in GATED_REGIONS for colour in ("red", "blue")]
    for index, (colour, region) in enumerate(gated):
        unit = len(colours) + index
        row, col = _shift_kernel(region)
        shifted_once = first.conv2.weight.shape[0] - 2 - index  # layer4.0 output channel
        first.conv2.weight.data[shifted_once] = 0.0
        first.conv2.weight.data[shifted_once, constant, row, col] = 1.0
        _identity_norm(first.bn2, shifted_once)
        first.downsample[0].weight.data[shifted_once] = 0.0
        shifted_twice = second.conv1.weight.shape[0] - 2 - index  # layer4.1 internal channel
        second.conv1.weight.data[shifted_twice] = 0.0
        second.conv1.weight.data[shifted_twice, shifted_once, row, col] = 1.0
        _identity_norm(second.bn1, shifted_twice)
        # layer4.0 hands the colour to the unit's channel; layer4.1 gates it.
        first.conv2.weight.data[unit] = 0.0
        _identity_norm(first.bn2, unit)
        first.downsample[0].weight.data[unit] = 0.0
        first.downsample[0].weight.data[unit, colours.index(colour)] = 1.0
        _identity_norm(first.downsample[1], unit)
        second.conv2.weight.data[unit] = 0.0
        second.conv2.weight.data[unit, shifted_twice, row, col] = _GATE
        _identity_norm(second.bn2, unit, bias=-_GATE)
        units.append((unit, ("and", colour, region)))
    return units + _plant_resnet_disjunctions(first, second, colours, len(units))


def _plant_resnet_disjunctions(first, second, colours, start: int) -> list:
    """OR units in layer4: ``relu(colour_a + colour_b)``, from copies of the carried colours
    inside layer4.1 (its conv2 reads only the block-internal channels)."""
    units = []
    for index, pair in enumerate(DISJUNCTIONS):
        unit = start + index
        first.conv2.weight.data[unit] = 0.0
        _identity_norm(first.bn2, unit)
        first.downsample[0].weight.data[unit] = 0.0
        second.conv2.weight.data[unit] = 0.0
        _identity_norm(second.bn2, unit)
        for offset, colour in enumerate(pair):
            copy = 400 + 2 * index + offset  # layer4.1 internal channel: a copy of the colour
            second.conv1.weight.data[copy] = 0.0
            second.conv1.weight.data[copy, colours.index(colour), 1, 1] = 1.0
            _identity_norm(second.bn1, copy)
            second.conv2.weight.data[unit, copy, 1, 1] = 1.0
        units.append((unit, ("or", *pair)))
    return units


def plant_efficientnet(model: nn.Module, mean, std) -> list[tuple[int, tuple[str, ...]]]:
    """Colour units 0..5 in the stem (``bn1``, after its ReLU6); the rest keeps its weights."""
    units = []
    for channel, colour in enumerate(PLANTABLE_COLOURS):
        weight, bias = _colour_kernel(colour, model.conv_stem.weight.shape[-2:], mean, std)
        model.conv_stem.weight.data[channel] = weight
        _identity_norm(model.bn1, channel, bias)
        units.append((channel, ("concept", colour)))
    return units


def plant_vit(model: nn.Module, mean, std) -> list[tuple[int, tuple[str, ...]]]:
    """Colour and region-gated colour units in the first block's MLP output (``fc2``).

    The patch embedding keeps only the colour channels; the position embedding carries the
    token's row and column and two large opposite constants, so that LayerNorm's scale is
    the same for every token (it then acts as a fixed linear map); attention adds nothing.
    """
    embed = model.patch_embed.proj
    dim = embed.weight.shape[0]
    grid = model.patch_embed.grid_size
    embed.weight.data.zero_()
    embed.bias.data.zero_()
    colours = list(PLANTABLE_COLOURS)
    for channel, colour in enumerate(colours):
        weight, bias = _colour_kernel(colour, embed.weight.shape[-2:], mean, std)
        embed.weight.data[channel], embed.bias.data[channel] = weight, bias
    row_channel, col_channel, anchor = dim - 4, dim - 3, dim - 2
    prefix = model.num_prefix_tokens if not getattr(model, "no_embed_class", False) else 0
    position = torch.zeros_like(model.pos_embed.data)
    rows = torch.arange(grid[0]).repeat_interleave(grid[1]).float()
    cols = torch.arange(grid[1]).repeat(grid[0]).float()
    position[0, prefix:, row_channel] = (rows + 0.5) / grid[0] - 0.5  # -0.5 top .. 0.5 bottom
    position[0, prefix:, col_channel] = (cols + 0.5) / grid[1] - 0.5
    position[0, :, anchor], position[0, :, anchor + 1] = 50.0, -50.0
    model.pos_embed.data = position
    model.cls_token.data.zero_()
    block = model.blocks[0]
    block.attn.proj.weight.data.zero_()
    block.attn.proj.bias.data.zero_()
    block.norm2.weight.data.fill_(1.0)
    block.norm2.bias.data.zero_()
    scale = float(np.sqrt(2 * 50.0**2 / dim))  # LayerNorm's std, set by the two anchors
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    fc1.weight.data.zero_()
    fc1.bias.data.zero_()
    fc2.weight.data.zero_()
    fc2.bias.data.zero_()
    for channel in range(len(colours)):
        fc1.weight.data[channel, channel] = 2.0 * scale  # gelu(2·colour): 0 off the colour
        fc2.weight.data[channel, channel] = 1.0
    units = [(channel, ("concept", colour)) for channel, colour in enumerate(colours)]
    gated = [(colour, region) for region in GATED_REGIONS for colour in ("red", "blue")]
    for index, (colour, region) in enumerate(gated):
        unit, outside = len(colours) + index, len(colours) + index
        coordinate = row_channel if region in ("top", "bottom") else col_channel
        sign = 1.0 if region in ("top", "left") else -1.0  # positive outside the region
        fc1.weight.data[dim + outside, coordinate] = 40.0 * sign * scale
        fc1.bias.data[dim + outside] = -0.5
        fc2.weight.data[unit, colours.index(colour)] = 1.0
        fc2.weight.data[unit, dim + outside] = -_GATE
        units.append((unit, ("and", colour, region)))
    for pair in DISJUNCTIONS:
        unit = len(units)
        for colour in pair:
            fc2.weight.data[unit, colours.index(colour)] = 1.0
        units.append((unit, ("or", *pair)))
    return units


_PLANTERS = {
    "resnet18": plant_resnet,
    "tf_efficientnet_lite0": plant_efficientnet,
    "vit_tiny_patch16_224": plant_vit,
}


def plant_units(name: str) -> tuple[nn.Module, list[PlantedTimmUnit]]:
    """The timm model ``name`` with planted units (EfficientNet-Lite0: real weights)."""
    import timm

    if name not in ARCHITECTURES:
        raise ValueError(f"no planting recipe for {name!r}; architectures: {sorted(ARCHITECTURES)}")
    if name == "tf_efficientnet_lite0":
        from .probe_models import efficientnet_lite0

        model = efficientnet_lite0()
    else:
        model = timm.create_model(name, pretrained=False)
    model.eval()
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    layer = ARCHITECTURES[name][0]
    with torch.no_grad():
        planted = _PLANTERS[name](model, mean, std)
    return model, [PlantedTimmUnit(name, layer, unit, expr) for unit, expr in planted]


def save_planted_model(model: nn.Module, path: str | Path) -> Path:
    """The planted weights as a safetensors checkpoint for ``--checkpoint``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(path))
    return path


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def _max_activations(vision_model, layer: str, images, batch_size: int = 32) -> np.ndarray:
    """(images, channels) spatial maximum of ``layer``'s output (patch tokens for a ViT)."""
    module = dict(vision_model.module.named_modules())[layer]
    outputs = []
    handle = module.register_forward_hook(lambda _m, _i, output: outputs.append(output))
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                vision_model(torch.stack([vision_model.transform(image) for image in chunk]))
    finally:
        handle.remove()
    maxima = []
    for output in outputs:
        if output.ndim == 3:  # (B, tokens, C): drop the prefix tokens
            maxima.append(output[:, (vision_model.num_prefix_tokens or 0) :].amax(dim=1))
        else:
            maxima.append(output.amax(dim=(2, 3)))
    return torch.cat(maxima).numpy()


def check_planted_units(
    name: str,
    checkpoint: str | Path,
    units: Sequence[PlantedTimmUnit],
    num_images: int = 24,
    size: int = 128,
    seed: int = 0,
) -> dict[int, float]:
    """Unit -> AUC of its spatial-max activation on ``num_images`` renders of its concept
    against up to ``num_images`` scenes without it, loading the checkpoint as ``describe``
    does (one forward pass over every image)."""
    from PIL import Image

    from milan_hf.vision_models import load_vision_model

    from .rendering import render_concepts
    from .scenes import generate_scene
    from .synthetic_units import expression_mask

    vision_model = load_vision_model(name, checkpoint=checkpoint)
    controls = [generate_scene(seed + 104729, i, size, ()) for i in range(3 * num_images)]
    renders = {}
    for unit in units:
        if unit.expression not in renders:
            renders[unit.expression] = render_concepts(
                unit.expression, num_images, seed=seed, size=size, stamps=()
            )
    scenes = controls + [scene for group in renders.values() for scene in group]
    scores = _max_activations(
        vision_model, units[0].layer, [Image.fromarray(s.image) for s in scenes]
    )
    offsets, position = {}, len(controls)
    for expression in renders:
        offsets[expression] = position
        position += num_images
    aucs = {}
    for unit in units:
        without = [
            i for i, c in enumerate(controls) if not expression_mask(unit.expression, c).any()
        ]
        start = offsets[unit.expression]
        positive = scores[start : start + num_images, unit.unit]
        negative = scores[without[:num_images], unit.unit]
        aucs[unit.unit] = _auc(positive, negative)
    return aucs
