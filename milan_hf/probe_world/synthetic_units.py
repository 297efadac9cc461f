"""Synthetic units of known meaning: unlimited, seeded exemplar sets cut from probe-world scenes.

A synthetic unit is what a real unit would look like if it computed a known concept
expression: ``("concept", c)``, ``("and", a, b)`` (attribute+thing such as a red circle, a
pattern on a shape, or a concept confined to a region), ``("or", a, b)`` or ``("above", a,
b)`` (a where it lies above b). Its ``k`` exemplars are scenes that contain the expression
(and a controllable share that do not, as
real units' lower exemplars often do); its masks are cut from the scenes' concept masks the
way a unit's masks look after MILAN's extraction: the concept mask pooled to a coarse feature
map (7x7 ... 28x28), made partial and noisy, upsampled bilinearly and thresholded, weaker for
lower exemplars (so some lower masks come out empty). Its three descriptions come from the
grammar (``phrasing.phrase``), so they name the expression by ``phrasing.expression_named``.

Rows follow the exemplar schema (``milan_hf.schema``) with ``images`` and ``descriptions``,
plus ``source`` ("synthetic"), ``concept`` (the expression as text, e.g. ``red AND top``) and
``family``. Units are drawn in blocks that share one pool of scenes, as the units of one
network share its probe set (scenes rendered for a rare expression join the pool for the
block's later units); a block depends only on ``(seed, block)``, so streams are reproducible
and different seeds never share scenes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import concepts as C
from .annotation import expression_text
from .phrasing import phrase
from .scenes import (
    STRIPE_TEXTURES,
    Scene,
    SceneSpec,
    draw_scene,
    generate_scene,
    region_masks,
    sample_scene_spec,
    scene_rng,
)

if TYPE_CHECKING:
    import datasets

SOURCE = "synthetic"
#: Seeds below this are for training streams; the benchmark draws from this seed on, so its
#: synthetic units are never ones a captioner trained on (``milan_hf.known_units``).
BENCHMARK_SEED = 1_000_000
COMPOSITION = "composition"
FEATURE_SIZES = (7, 14, 28)
# Scenes the fixed pattern textures can paint onto a shape (photo textures keep their colours).
_SHAPE_TEXTURES = (*STRIPE_TEXTURES, "dots", "checkerboard", "noise", "brick", "grass", "gravel")
_PAINTABLE_TEXTURES = (*STRIPE_TEXTURES, "dots", "checkerboard")


@dataclass(frozen=True)
class SyntheticUnitSettings:
    """How synthetic units are drawn.

    Attributes:
        k: exemplars per unit (MILAN: 15).
        image_size: side of the scenes and masks in pixels.
        negative_share: (low, high) share of exemplars without the expression, drawn per unit.
        composition_share: share of units with a composed expression (AND/OR/region).
        units_per_block: units that share one pool of scenes.
        scenes_per_block: scenes in that pool (positives missing from it are rendered).
        use_stamps: object concepts from the installed cut-outs (when there are any).
    """

    k: int = 15
    image_size: int = 96
    negative_share: tuple[float, float] = (0.0, 0.3)
    composition_share: float = 0.5
    units_per_block: int = 512
    scenes_per_block: int = 200
    use_stamps: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or self.image_size < 16:
            raise ValueError(f"need k >= 1 and image_size >= 16, got {self.k}, {self.image_size}")
        low, high = self.negative_share
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(f"negative_share must be 0 <= low <= high < 1, got {(low, high)}")
        if not 0.0 <= self.composition_share <= 1.0:
            raise ValueError(f"composition_share must be in [0, 1], got {self.composition_share}")


def expression_family(expression: Sequence[str]) -> str:
    """A single concept's family (colour, shape…), or "composition" for AND/OR."""
    if expression[0] == "concept":
        return C.concept_family(expression[1])
    return COMPOSITION


def _names(family: str, stamps: Sequence[C.Stamp]) -> list[str]:
    if family == C.OBJECT:
        return sorted({stamp.category for stamp in stamps})
    return [name for name in C.all_concepts() if C.concept_family(name) == family]


def sample_expression(
    rng: np.random.Generator, stamps: Sequence[C.Stamp] = (), composed: bool | None = None
) -> tuple:
    """A concept expression the scenes can show, from every family and composition.

    Compositions (``composed``; None: a single concept one time in six): colour+shape,
    colour+text, pattern+shape, colour+stripes (attribute+thing, on one item), any single
    concept + a region, OR of two singles, and one single above another (``("above", a,
    b)``: a on an item in the top half, b on one in the bottom half).
    """
    singles = [C.COLOUR, C.SHAPE, C.TEXTURE, C.TEXT] + ([C.OBJECT] if stamps else [])

    def pick(family: str) -> str:
        names = _names(family, stamps)
        return names[int(rng.integers(len(names)))]

    def single() -> str:
        return pick(singles[int(rng.integers(len(singles)))])

    if composed is None:
        composed = rng.random() >= 1 / 6
    if not composed:
        return ("concept", single())
    kind = int(rng.integers(6))
    if kind == 0:  # attribute + thing
        options = [
            (pick(C.COLOUR), pick(C.SHAPE)),
            (pick(C.COLOUR), "text"),
            (str(rng.choice(_SHAPE_TEXTURES)), pick(C.SHAPE)),
            (pick(C.COLOUR), str(rng.choice(_PAINTABLE_TEXTURES))),
        ]
        return ("and", *options[int(rng.integers(len(options)))])
    if kind in (1, 2):  # concept + region
        return ("and", single(), pick(C.REGION))
    first, second = single(), single()
    while second == first:
        second = single()
    return ("or" if kind < 5 else "above", first, second)


def expression_mask(expression: Sequence[str], scene: Scene) -> np.ndarray:
    """Where ``expression`` holds in ``scene``: (H, W) bool from its concept and region masks."""
    height, width = scene.image.shape[:2]
    regions = None

    def mask(name: str) -> np.ndarray:
        nonlocal regions
        if C.concept_family(name) == C.REGION:
            regions = regions or region_masks(height, width)
            return regions[name]
        return scene.masks.get(name, np.zeros((height, width), dtype=bool))

    operator, operands = expression[0], expression[1:]
    if operator == "concept":
        return mask(operands[0])
    if operator == "and":
        return mask(operands[0]) & mask(operands[1])
    if operator == "or":
        return mask(operands[0]) | mask(operands[1])
    if operator == "above":
        upper, lower = mask(operands[0]), mask(operands[1])
        if not upper.any() or not lower.any():
            return np.zeros((height, width), dtype=bool)
        rows = np.arange(height)
        gap = rows @ lower.sum(axis=1) / lower.sum() - rows @ upper.sum(axis=1) / upper.sum()
        return upper if gap > 0.1 * height else np.zeros((height, width), dtype=bool)
    raise ValueError(f"cannot draw a mask for expression {tuple(expression)!r}")


def relation_scene(
    seed: int, index: int, size: int, stamps: Sequence[C.Stamp], upper: str, lower: str
) -> Scene:
    """A scene with ``upper`` on an item in the top half above ``lower`` in the bottom half."""
    rng = scene_rng(seed, index)
    below = sample_scene_spec(rng, stamps, [lower, "bottom"], num_items=1)
    for _ in range(8):  # the upper item must not take the background's colour (invisible)
        above = sample_scene_spec(rng, stamps, [upper, "top"], num_items=1)
        if not set(above.items[0].fill.colours) & set(below.background.colours):
            break
    spec = SceneSpec(below.background, below.items + above.items)
    return draw_scene(spec, size, rng, stamps)


def _render_positive(expression, seed, index, size, stamps, extra: int) -> Scene:
    if expression[0] == "above":
        return relation_scene(seed, index, size, stamps, expression[1], expression[2])
    return generate_scene(seed, index, size, stamps, _required(expression, extra))


def _required(expression: Sequence[str], index: int) -> list[str]:
    """The concepts one rendered positive carries (OR alternates between its operands)."""
    if expression[0] == "or":
        return [expression[1 + index % 2]]
    return list(expression[1:])


@dataclass
class _Block:
    seed: int
    scenes: list[Scene]
    first_id: int  # ids of this block's scenes start here


def _block(seed: int, block: int, settings: SyntheticUnitSettings, stamps) -> _Block:
    block_seed = zlib.crc32(f"synthetic-units/{seed}/{block}".encode())
    scenes = [
        generate_scene(block_seed, index, settings.image_size, stamps)
        for index in range(settings.scenes_per_block)
    ]
    return _Block(block_seed, scenes, first_id=block * 1_000_000)


def _exemplar_scenes(
    expression, block: _Block, unit: int, settings, stamps, rng
) -> tuple[list[int], list[Scene], int]:
    """Ids and scenes for a unit's exemplars, positives first; how many are positives."""
    k = settings.k
    low, high = settings.negative_share
    negatives = int(round(k * rng.uniform(low, high)))
    positives = k - negatives
    min_pixels = max(4, settings.image_size**2 // 200)
    areas = [int(expression_mask(expression, scene).sum()) for scene in block.scenes]
    without = [i for i, area in enumerate(areas) if area == 0]
    negatives = min(negatives, len(without))  # a concept in almost every scene
    positives = k - negatives
    if expression[0] == "or":
        # Each operand shows in half the positives: the top exemplars of an OR unit show both
        # (drawn from the pool at random, a common operand such as text filled all of them,
        # and a unit whose exemplars never show b is, by what it shows, an "a" unit).
        first = (positives + 1) // 2
        parts = [
            (("concept", expression[1]), first),
            (("concept", expression[2]), positives - first),
        ]
    else:
        parts = [(tuple(expression), positives)]
    indices: list[int] = []
    for part, count in parts:
        # One part: the whole expression, whose areas are measured above already.
        part_areas = areas if len(parts) == 1 else [
            int(expression_mask(part, scene).sum()) for scene in block.scenes
        ]  # fmt: skip
        taken = set(indices)
        with_it = [i for i, area in enumerate(part_areas) if area >= min_pixels and i not in taken]
        chosen = [int(i) for i in rng.permutation(with_it)[:count]]
        for extra in range(count - len(chosen)):
            # A rare expression: render the rest, and keep them in the pool for later units.
            index = len(block.scenes)
            block.scenes.append(
                _render_positive(part, block.seed, index, settings.image_size, stamps, extra)
            )
            chosen.append(index)
        indices += chosen
    if len(parts) > 1:
        indices = [indices[i] for i in rng.permutation(len(indices))]
    ids = [block.first_id + i for i in indices]
    scenes = [block.scenes[i] for i in indices]
    chosen = [int(i) for i in rng.permutation(without)[:negatives]]
    ids += [block.first_id + i for i in chosen]
    scenes += [block.scenes[i] for i in chosen]
    return ids, scenes, positives


def unit_feature_map(
    target: np.ndarray, strength: float, resolution: int, rng: np.random.Generator
) -> np.ndarray:
    """A coarse (resolution, resolution) activation map of a unit that detects ``target``.

    The target mask is area-pooled to the feature grid, made partial (some cells respond
    weakly or not at all) and noisy, and scaled by the exemplar's ``strength``.
    """
    pooled = Image.fromarray(target.astype(np.float32)).resize((resolution, resolution), Image.BOX)
    cells = np.asarray(pooled, dtype=np.float32)
    partial = rng.uniform(0.55, 1.0, cells.shape) * (rng.random(cells.shape) > 0.15)
    noise = rng.normal(0.0, 0.06, cells.shape)
    return np.clip(strength * cells * partial + noise, 0.0, None).astype(np.float32)


def unit_masks(
    targets: Sequence[np.ndarray], strengths: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """(k, H, W) uint8 masks, k activations and the threshold of one synthetic unit.

    Like MILAN's extraction: activation = the feature map's maximum; mask = the feature map
    upsampled bilinearly to the image and thresholded at one level for the whole unit.
    """
    height, width = targets[0].shape
    resolution = int(rng.choice(FEATURE_SIZES))
    maps = [unit_feature_map(t, s, resolution, rng) for t, s in zip(targets, strengths)]
    threshold = float(rng.uniform(0.3, 0.5) * max(float(m.max()) for m in maps) + 1e-3)
    masks, activations = [], []
    for feature_map in maps:
        upsampled = Image.fromarray(feature_map).resize((width, height), Image.BILINEAR)
        masks.append((np.asarray(upsampled) > threshold).astype(np.uint8))
        activations.append(float(feature_map.max()))
    return np.stack(masks), np.asarray(activations, dtype=np.float32), threshold


def _dominant_caption(expression, scenes: Sequence[Scene], positives: int) -> list[str]:
    if not any(C.concept_family(n) == C.OBJECT for n in expression[1:]):
        return []
    captions = [scene.captions[-1] for scene in scenes[:positives] if scene.captions]
    if not captions:
        return []
    # Ties to the first in sorted order: set order changes with PYTHONHASHSEED, and two
    # processes streaming one seed must write the same descriptions.
    best = max(sorted(set(captions)), key=captions.count)
    return [best] if captions.count(best) >= max(2, len(scenes) // 4) else []


def synthetic_unit(
    expression: Sequence[str],
    ids: Sequence[int],
    scenes: Sequence[Scene],
    positives: int,
    rng: np.random.Generator,
    unit: int = 0,
    num_descriptions: int = 3,
) -> dict:
    """One exemplar-schema row for a unit computing ``expression`` on these scenes."""
    k = len(scenes)
    # Positives fire strongly and fade down the ranking; negatives barely fire.
    strengths = [1.0 - 0.5 * j / max(1, k - 1) for j in range(positives)]
    strengths += [float(rng.uniform(0.0, 0.3)) for _ in range(k - positives)]
    targets = [expression_mask(expression, scene) for scene in scenes[:positives]]
    # What a negative exemplar responds to: a little of whatever the scene has.
    for scene in scenes[positives:]:
        names = sorted(scene.masks)
        targets.append(scene.masks[names[int(rng.integers(len(names)))]])
    masks, activations, threshold = unit_masks(targets, strengths, rng)
    order = np.argsort(-activations, kind="stable")
    captions = _dominant_caption(expression, scenes, positives)
    family = expression_family(expression)
    return {
        "layer": f"synthetic-{family}",
        "unit": int(unit),
        "ids": [int(ids[i]) for i in order],
        "activations": [float(activations[i]) for i in order],
        "masks": [masks[i] for i in order],
        "threshold": threshold,
        "dead": False,
        "images": [Image.fromarray(scenes[i].image) for i in order],
        "descriptions": phrase(expression, num_descriptions, rng, captions=captions),
        "source": SOURCE,
        "concept": expression_text(expression),
        "family": family,
    }


def iter_synthetic_units(
    seed: int = 0,
    num_units: int | None = None,
    settings: SyntheticUnitSettings | None = None,
    num_descriptions: int = 3,
) -> Iterator[dict]:
    """Synthetic units of seed ``seed``, without end when ``num_units`` is None.

    Two streams with the same seed and settings agree unit for unit; different seeds give
    different units and scenes.
    """
    settings = settings or SyntheticUnitSettings()
    if num_units is not None and num_units < 0:
        raise ValueError(f"num_units must be >= 0, got {num_units}")
    stamps = C.load_stamps() if settings.use_stamps else ()
    unit = 0
    while num_units is None or unit < num_units:
        block_index = unit // settings.units_per_block
        block = _block(seed, block_index, settings, stamps)
        block_end = (block_index + 1) * settings.units_per_block
        while unit < block_end and (num_units is None or unit < num_units):
            rng = np.random.default_rng([seed, unit, 0x5EED])
            composed = bool(rng.random() < settings.composition_share)
            expression = sample_expression(rng, stamps, composed)
            ids, scenes, positives = _exemplar_scenes(
                expression, block, unit, settings, stamps, rng
            )
            yield synthetic_unit(expression, ids, scenes, positives, rng, unit, num_descriptions)
            unit += 1


def synthetic_unit_features(image_size: int) -> datasets.Features:
    """The ``datasets.Features`` of synthetic-unit rows (exemplar schema + known meaning)."""
    from datasets import Value

    from milan_hf.schema import exemplar_features

    features = exemplar_features(image_size, with_images=True, with_descriptions=True)
    for column in ("source", "concept", "family"):
        features[column] = Value("string")
    return features


def synthetic_unit_dataset(
    num_units: int | None,
    seed: int = 0,
    settings: SyntheticUnitSettings | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Synthetic units as a ``datasets.Dataset`` (``num_units`` rows), or as an endless
    ``datasets.IterableDataset`` when ``streaming`` (``num_units`` None: without end)."""
    from datasets import Dataset, IterableDataset

    settings = settings or SyntheticUnitSettings()
    if not streaming and num_units is None:
        raise ValueError("a materialised synthetic-unit dataset needs num_units")
    # The code version keys the datasets cache: a changed grammar or world must not reuse it.
    kwargs = {"seed": seed, "num_units": num_units, "settings": settings, "code": code_version()}
    features = synthetic_unit_features(settings.image_size)
    if streaming:
        return IterableDataset.from_generator(_generate_rows, features=features, gen_kwargs=kwargs)
    return Dataset.from_generator(
        _generate_rows, features=features, gen_kwargs=kwargs, cache_dir=cache_dir
    )


def code_version() -> str:
    """A hash of the code that makes synthetic units (world, grammar and this module)."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for module in ("concepts.py", "scenes.py", "phrasing.py", "synthetic_units.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()[:12]


def _generate_rows(seed: int, num_units: int | None, settings: SyntheticUnitSettings, code: str):
    yield from iter_synthetic_units(seed, num_units, settings)
