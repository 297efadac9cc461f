"""A model whose units compute fixed, documented functions of the pixels: known ground truth.

``planted_units_model()`` builds ``PlantedUnitsNet``, a ``torch.nn.Module`` whose three
described layers output full-resolution activation maps (so masks need no upsampling):

- ``colour``: one unit per named colour, ``exp(-|rgb - c|^2 / (2 sigma^2))`` per pixel.
- ``orientation``: oriented-stripe energy. Colour differences along a direction are pooled over
  a window; a unit fires where they are strong across one orientation and weak along it
  (horizontal, vertical, diagonal stripes).
- ``logic``: compositions of the two: disjunctions ``max(red, blue)`` of per-pixel colour
  responses with local support ("red or blue"), spatial
  gates ``red * top-half`` ("red in the top half"), and conjunctions ``red * vertical`` ("red
  vertical stripes").

``planted_units()`` lists every unit with the concept expression it computes; the annotator
should recover these (see ``tests/test_probe_world_annotation.py``). Input: RGB in [0, 1],
shape (B, 3, H, W) — use ``planted_transform`` as the exemplar extractor's ``transform``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .concepts import COLOUR_RGB

ORIENTATIONS = ("horizontal stripes", "vertical stripes", "diagonal stripes")

# The compositions of the ``logic`` layer: (operator, first concept, second concept).
DISJUNCTIONS = [
    ("red", "blue"),
    ("green", "yellow"),
    ("orange", "purple"),
    ("pink", "brown"),
    ("black", "white"),
    ("blue", "yellow"),
    ("red", "green"),
    ("purple", "grey"),
]
SPATIAL_GATES = [
    ("red", "top"),
    ("blue", "bottom"),
    ("green", "left"),
    ("yellow", "right"),
    ("purple", "centre"),
    ("orange", "top"),
    ("pink", "bottom"),
    ("white", "left"),
    ("black", "right"),
    ("brown", "centre"),
]
STRIPE_CONJUNCTIONS = [
    ("red", "vertical stripes"),
    ("blue", "horizontal stripes"),
    ("yellow", "diagonal stripes"),
    ("green", "vertical stripes"),
    ("white", "horizontal stripes"),
    ("black", "diagonal stripes"),
]


@dataclass(frozen=True)
class PlantedUnit:
    """A planted unit and the concept expression it computes.

    ``expression`` is ``("concept", name)`` or ``("and" | "or", first, second)``, the same form
    the annotator returns, so recovery is an equality test.
    """

    layer: str
    unit: int
    expression: tuple[str, ...]


def planted_units() -> list[PlantedUnit]:
    """Every planted unit with its ground-truth expression, layer by layer."""
    units = [PlantedUnit("colour", i, ("concept", c)) for i, c in enumerate(COLOUR_RGB)]
    units += [PlantedUnit("orientation", i, ("concept", o)) for i, o in enumerate(ORIENTATIONS)]
    logic = [("or", a, b) for a, b in DISJUNCTIONS]
    logic += [("and", a, b) for a, b in SPATIAL_GATES]
    logic += [("and", a, b) for a, b in STRIPE_CONJUNCTIONS]
    units += [PlantedUnit("logic", i, expression) for i, expression in enumerate(logic)]
    return units


class ColourPixels(nn.Module):
    """Per-pixel colour responses: a cut-off Gaussian bump around each named colour's RGB."""

    def __init__(self, sigma: float = 0.12):
        super().__init__()
        centres = torch.tensor(list(COLOUR_RGB.values()), dtype=torch.float32) / 255.0
        self.register_buffer("centres", centres[:, :, None, None])  # (colours, 3, 1, 1) filters
        self.sigma = sigma
        self.cutoff = 0.05  # exp(-d^2 / 2 sigma^2) below this (d > 2.45 sigma) counts as 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, colours, H, W), exactly 0 far from the colour.

        The cut-off matters for rare colours: their 0.99-quantile threshold is then 0, and
        masks (activation > threshold) keep only pixels of the colour, not its faint tail.
        """
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, the cross term as a 1x1 convolution (cheap).
        cross = F.conv2d(pixels, self.centres)
        squared = (pixels**2).sum(dim=1, keepdim=True) - 2 * cross
        squared = (squared + (self.centres**2).sum(dim=(1, 2, 3))[None, :, None, None]).clamp(min=0)
        bump = torch.exp(-squared / (2 * self.sigma**2))
        return F.relu(bump - self.cutoff) / (1 - self.cutoff)


class ColourDetectors(nn.Module):
    """One unit per named colour: the per-pixel responses averaged over a small window, so that
    colour *regions* fire and isolated pixels (noise, speckles in cut-outs) do not."""

    def __init__(self, window: int = 5):
        super().__init__()
        self.window = window

    def forward(self, colour_pixels: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(
            colour_pixels, self.window, stride=1, padding=self.window // 2, count_include_pad=False
        )


class OrientedStripeEnergy(nn.Module):
    """Stripe detectors: pooled colour change across an orientation minus change along it."""

    def __init__(self, window: int = 7):
        super().__init__()
        self.window = window

    def _pooled_change(self, pixels: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        shifted = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))
        change = (pixels - shifted).abs().sum(dim=1, keepdim=True)
        # Differences that wrap around the border are not real edges.
        if dy:
            change[:, :, :dy] = 0
        if dx > 0:
            change[:, :, :, :dx] = 0
        elif dx < 0:
            change[:, :, :, dx:] = 0
        return F.avg_pool2d(change, self.window, stride=1, padding=self.window // 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        down = self._pooled_change(pixels, 1, 0)  # across horizontal stripes
        right = self._pooled_change(pixels, 0, 1)  # across vertical stripes
        anti = self._pooled_change(pixels, 1, -1)  # along diagonal stripes (rows + cols const)
        main = self._pooled_change(pixels, 1, 1)
        horizontal = F.relu(down - 2 * right)
        vertical = F.relu(right - 2 * down)
        diagonal = F.relu(torch.minimum(down, right) - 2 * anti) * (main > 2 * anti)
        return torch.cat([horizontal, vertical, diagonal], dim=1)


class PlantedLogic(nn.Module):
    """Disjunctions, spatial gates and colour-stripe conjunctions of the earlier layers."""

    def __init__(self):
        super().__init__()
        names = list(COLOUR_RGB)
        self.disjunctions = [(names.index(a), names.index(b)) for a, b in DISJUNCTIONS]
        self.gates = [(names.index(c), region) for c, region in SPATIAL_GATES]
        self.conjunctions = [
            (names.index(c), ORIENTATIONS.index(o)) for c, o in STRIPE_CONJUNCTIONS
        ]

    @staticmethod
    def region_gate(region: str, height: int, width: int, device) -> torch.Tensor:
        rows = torch.arange(height, device=device)[:, None].float()
        cols = torch.arange(width, device=device)[None, :].float()
        gates = {
            "top": rows < height / 2,
            "bottom": rows >= height / 2,
            "left": cols < width / 2,
            "right": cols >= width / 2,
            "centre": (rows >= height / 4)
            & (rows < 3 * height / 4)
            & (cols >= width / 4)
            & (cols < 3 * width / 4),
        }
        return gates[region].expand(height, width).float()

    def forward(
        self, colours: torch.Tensor, orientations: torch.Tensor, colour_pixels: torch.Tensor
    ) -> torch.Tensor:
        height, width = colours.shape[-2:]
        # Disjunctions read per-pixel colour, so that thin stripes and dots count as much as
        # plain areas (a colour concept's mask covers them too), times its local support
        # over 3x3 pixels, which silences isolated noise pixels that happen to match.
        support = F.avg_pool2d(colour_pixels, 3, stride=1, padding=1, count_include_pad=False)
        supported = colour_pixels * (2 * support).clamp(max=1.0)
        first, second = zip(*self.disjunctions)
        disjunctions = torch.maximum(supported[:, list(first)], supported[:, list(second)])
        gate_colours = [c for c, _ in self.gates]
        gate_masks = torch.stack(
            [self.region_gate(r, height, width, colours.device) for _, r in self.gates]
        )
        gates = colours[:, gate_colours] * gate_masks
        # Stripes are thinner than the colour layer's window: use the per-pixel colour response.
        # Stripe energy is normalised to about [0, 1] so the colour term sets the scale.
        energy = (orientations / 0.6).clamp(max=1.0)
        conjunction_colours, conjunction_orientations = zip(*self.conjunctions)
        conjunctions = (
            colour_pixels[:, list(conjunction_colours)] * energy[:, list(conjunction_orientations)]
        )
        return torch.cat([disjunctions, gates, conjunctions], dim=1)


class PlantedUnitsNet(nn.Module):
    """Planted units in named layers: ``colour``, ``orientation``, ``logic`` (described), and
    ``colour_pixels`` (the unsmoothed colour responses both ``colour`` and ``logic`` read)."""

    def __init__(self):
        super().__init__()
        self.colour_pixels = ColourPixels()
        self.colour = ColourDetectors()
        self.orientation = OrientedStripeEnergy()
        self.logic = PlantedLogic()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        colour_pixels = self.colour_pixels(pixels)
        colours = self.colour(colour_pixels)
        orientations = self.orientation(pixels)
        logic = self.logic(colours, orientations, colour_pixels)
        # A global max per unit: what an image-level readout of these detectors would see.
        return torch.cat([colours, orientations, logic], dim=1).amax(dim=(2, 3))


def planted_units_model() -> PlantedUnitsNet:
    """The planted-units model (no weights to load: every unit is defined by construction)."""
    return PlantedUnitsNet().eval()


def planted_transform(image) -> torch.Tensor:
    """PIL image -> (3, H, W) float tensor in [0, 1], the planted model's input."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
