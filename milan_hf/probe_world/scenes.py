"""Seeded scenes with a per-pixel mask for every concept they contain.

A scene is a background fill (a colour or a texture) with one to three items on top (a filled
shape, a photographic cut-out, or a word), each optionally confined to a region of the frame.
Scenes are drawn without anti-aliasing, so every pixel belongs to exactly the concepts whose
masks cover it; later items occlude earlier ones and their masks are cut accordingly.

Scene ``i`` of seed ``s`` depends only on ``(s, i)``, so any subset can be regenerated.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import concepts as C

COLOUR_JITTER = 12  # max per-channel deviation from a colour's reference RGB
# Pixels of cut-outs and photographic textures within this RGB distance of a named colour's
# reference carry that colour's concept (painted fills always do: their jitter is smaller).
COLOUR_TOLERANCE = 22.0
ITEM_KINDS = ("shape", "object", "text")
STRIPE_TEXTURES = ("horizontal stripes", "vertical stripes", "diagonal stripes")
PATTERN_TEXTURES = (*STRIPE_TEXTURES, "dots", "checkerboard")
PHOTO_TEXTURES = ("brick", "grass", "gravel")
# A photographic texture has its own natural colouring, so it carries no colour concept.
_PHOTO_TINT = {"brick": (170, 80, 60), "grass": (70, 150, 50), "gravel": (150, 140, 130)}


@dataclass
class Fill:
    """How a region is painted: a plain colour, a two-colour pattern, or a photographic texture."""

    texture: str | None = None  # None: plain colour
    colours: tuple[str, ...] = ()  # one for plain, two for patterns, none for noise/photo

    def concepts(self) -> list[str]:
        return ([self.texture] if self.texture else []) + list(self.colours)


@dataclass
class Item:
    """One foreground item: ``kind`` is shape/object/text, ``name`` the shape, stamp or word."""

    kind: str
    name: str
    fill: Fill
    centre: tuple[float, float]  # (x, y) as fractions of the image size
    radius: float  # half the item's box side, as a fraction of the image size
    stamp_index: int = -1

    def concept(self, stamps: Sequence[C.Stamp]) -> str:
        if self.kind == "shape":
            return self.name
        if self.kind == "object":
            return stamps[self.stamp_index].category
        return "text"


@dataclass
class SceneSpec:
    background: Fill
    items: list[Item] = field(default_factory=list)


@dataclass
class Scene:
    """A drawn scene: the RGB image, one boolean mask per concept present, and its recipe."""

    image: np.ndarray  # (H, W, 3) uint8
    masks: dict[str, np.ndarray]  # concept name -> (H, W) bool, only concepts with pixels
    spec: SceneSpec
    captions: list[str]  # captions of the cut-outs it contains

    def concepts(self) -> list[str]:
        return sorted(self.masks)


def region_masks(height: int, width: int) -> dict[str, np.ndarray]:
    """The five region concepts as (H, W) bool masks: halves of the frame and its centre."""
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    full = np.ones((height, width), dtype=bool)
    return {
        "top": full & (rows < height / 2),
        "bottom": full & (rows >= height / 2),
        "left": full & (cols < width / 2),
        "right": full & (cols >= width / 2),
        "centre": full
        & (rows >= height / 4)
        & (rows < 3 * height / 4)
        & (cols >= width / 4)
        & (cols < 3 * width / 4),
    }


# ----------------------------------------------------------------------------- sampling


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _sample_fill(rng: np.random.Generator, texture_probability: float, avoid=()) -> Fill:
    colours = [c for c in C.COLOUR_RGB if c not in avoid]
    if rng.random() >= texture_probability:
        return Fill(None, (_choice(rng, colours),))
    texture = _choice(rng, [t.name for t in C.texture_concepts()])
    if texture in PATTERN_TEXTURES:
        first, second = rng.choice(len(colours), size=2, replace=False)
        return Fill(texture, (colours[first], colours[second]))
    return Fill(texture, ())


def _place(rng: np.random.Generator, radius: float, region: str | None) -> tuple[float, float]:
    """A centre such that the item's box lies inside the frame and inside ``region``."""
    x_range = [radius, 1 - radius]
    y_range = [radius, 1 - radius]
    if region == "top":
        y_range[1] = 0.5 - radius
    elif region == "bottom":
        y_range[0] = 0.5 + radius
    elif region == "left":
        x_range[1] = 0.5 - radius
    elif region == "right":
        x_range[0] = 0.5 + radius
    elif region == "centre":
        x_range = [0.25 + radius, 0.75 - radius]
        y_range = [0.25 + radius, 0.75 - radius]
    x = rng.uniform(*x_range) if x_range[0] < x_range[1] else sum(x_range) / 2
    y = rng.uniform(*y_range) if y_range[0] < y_range[1] else sum(y_range) / 2
    return (float(x), float(y))


@dataclass
class _Wanted:
    """The concepts the topmost item of a scene must carry, by family."""

    required: list[str]
    kind_concepts: list[str]  # at most one shape, object or text concept
    colours: list[str]
    textures: list[str]
    region: str | None


def _wanted(required: Sequence[str], stamps: Sequence[C.Stamp]) -> _Wanted:
    """Sort ``required`` by family, checking one item can carry all of it."""
    required = list(required)
    by_family: dict[str, list[str]] = {}
    for name in required:
        by_family.setdefault(C.concept_family(name), []).append(name)
    categories = sorted({s.category for s in stamps})
    for name in by_family.get(C.OBJECT, []):
        if name not in categories:
            raise ValueError(f"unknown concept {name!r} (no cut-out of that category is loaded)")
    kind_concepts = by_family.get(C.SHAPE, []) + by_family.get(C.OBJECT, [])
    kind_concepts += by_family.get(C.TEXT, [])
    if len(kind_concepts) > 1 or len(by_family.get(C.TEXTURE, [])) > 1:
        raise ValueError(f"cannot put all of {required} on one item")
    if len(by_family.get(C.COLOUR, [])) > 2 or len(by_family.get(C.REGION, [])) > 1:
        raise ValueError(f"cannot put all of {required} on one item")
    colours, textures = by_family.get(C.COLOUR, []), by_family.get(C.TEXTURE, [])
    region = (by_family.get(C.REGION) or [None])[0]
    return _Wanted(required, kind_concepts, colours, textures, region)


def sample_scene_spec(
    rng: np.random.Generator,
    stamps: Sequence[C.Stamp] = (),
    required: Sequence[str] = (),
    num_items: int | None = None,
    forbidden: Sequence[str] = (),
    plain_background: bool = False,
) -> SceneSpec:
    """Sample a scene recipe; the last (topmost) item carries every concept in ``required``.

    ``required`` may name at most one shape/object/text concept, up to two colours, one texture
    and one region: e.g. ``["red", "circle", "top"]`` gives a red circle in the top half.
    ``forbidden`` lists item kinds (shape, object, text) not to draw; ``plain_background``
    paints the background in one colour (no texture).
    """
    wanted = _wanted(required, stamps)
    kinds = ["shape", "shape", "text"] + (["object", "object"] if stamps else [])
    kinds = [kind for kind in kinds if kind not in forbidden]
    if not kinds:
        raise ValueError(f"every item kind is forbidden: {list(forbidden)}")
    count = num_items if num_items is not None else int(rng.integers(1, 4))
    background = _sample_fill(rng, 0.0 if plain_background else 0.6, avoid=wanted.colours)
    items = []
    for index in range(count):
        last = index == count - 1
        items.append(_sample_item(rng, kinds, stamps, background, wanted if last else None))
    return SceneSpec(background, items)


def _sample_item(
    rng: np.random.Generator,
    kinds: list[str],
    stamps: Sequence[C.Stamp],
    background: Fill,
    wanted: _Wanted | None,
) -> Item:
    """One item over ``background``; ``wanted`` (topmost item only) is what it must carry."""
    kind = _choice(rng, kinds)
    if wanted is not None:
        kind = _wanted_kind(wanted, kind)
    radius = float(rng.uniform(0.15, 0.25))
    # Items never take the background's colours, so that everything drawn stays visible.
    fill = _sample_fill(rng, 0.3 if kind == "shape" else 0.0, avoid=background.colours)
    if kind == "object":
        fill = Fill(None, ())  # a cut-out keeps its own pixels
    name, radius, stamp_index = _sample_name(rng, kind, radius, stamps, wanted)
    region = None
    if wanted is not None:
        fill = _wanted_fill(rng, kind, fill, background, wanted)
        region = wanted.region
        if region is not None:
            radius = min(radius, 0.24 if region != "centre" else 0.2)
    centre = _place(rng, radius, region)
    return Item(kind, name, fill, centre, radius, stamp_index)


def _wanted_kind(wanted: _Wanted, kind: str) -> str:
    """The kind of item that can carry ``wanted`` (``kind`` where it already can)."""
    if wanted.kind_concepts:
        family = C.concept_family(wanted.kind_concepts[0])
        return {C.SHAPE: "shape", C.OBJECT: "object", C.TEXT: "text"}[family]
    if wanted.textures or len(wanted.colours) == 2:
        return "shape"  # a pattern needs an area to show on
    if wanted.colours and kind == "object":
        return "shape"  # a cut-out keeps its own colours
    return kind


def _sample_name(
    rng: np.random.Generator,
    kind: str,
    radius: float,
    stamps: Sequence[C.Stamp],
    wanted: _Wanted | None,
) -> tuple[str, float, int]:
    """The item's shape, cut-out or word, its radius (words get their own) and stamp index."""
    wanted_kind = wanted.kind_concepts[0] if wanted is not None and wanted.kind_concepts else None
    stamp_index = -1
    if kind == "shape":
        name = _choice(rng, [s.name for s in C.shape_concepts()])
        if wanted_kind is not None:
            name = wanted_kind
    elif kind == "object":
        pool = [i for i, s in enumerate(stamps) if wanted_kind in (None, s.category)]
        stamp_index = _choice(rng, pool)
        name = stamps[stamp_index].caption
    else:
        name = _choice(rng, C.TEXT_WORDS)
        radius = float(rng.uniform(0.18, 0.25))
    return name, radius, stamp_index


def _wanted_fill(
    rng: np.random.Generator, kind: str, fill: Fill, background: Fill, wanted: _Wanted
) -> Fill:
    """The fill showing ``wanted``'s colours and texture (``fill`` where it wants neither)."""
    colours, textures = wanted.colours, wanted.textures
    if kind == "object" and (colours or textures):
        raise ValueError(f"a cut-out keeps its own pixels; cannot make {wanted.required}")
    if textures:
        texture = textures[0]
        if texture in PATTERN_TEXTURES:
            others = [c for c in C.COLOUR_RGB if c not in colours + list(background.colours)]
            picks = list(colours)
            while len(picks) < 2:
                picks.append(others.pop(int(rng.integers(len(others)))))
            return Fill(texture, tuple(picks))
        if colours:
            raise ValueError(f"{texture!r} has its own colours; cannot make {wanted.required}")
        return Fill(texture, ())
    if len(colours) == 2:
        return Fill(_choice(rng, STRIPE_TEXTURES), tuple(colours))
    if colours:
        return Fill(None, (colours[0],))
    return fill


# ----------------------------------------------------------------------------- drawing


def _jittered(rng: np.random.Generator, colour: str) -> np.ndarray:
    base = np.array(C.COLOUR_RGB[colour], dtype=np.int16)
    return np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)


@lru_cache(maxsize=4)
def _photo_texture(name: str, size: int) -> np.ndarray:
    import skimage.data

    gray = getattr(skimage.data, name)()
    tile = np.asarray(Image.fromarray(gray).resize((size * 2, size * 2), Image.BILINEAR))
    return tile.astype(np.float32) / 255.0


def _pattern(texture: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (H, W) map: True where a two-colour pattern takes its first colour."""
    period = max(4, round(min(height, width) / 10))
    phase = int(rng.integers(period))
    rows = np.arange(height)[:, None] + phase
    cols = np.arange(width)[None, :] + phase
    half = period / 2
    if texture == "horizontal stripes":
        return np.broadcast_to((rows % period) < half, (height, width))
    if texture == "vertical stripes":
        return np.broadcast_to((cols % period) < half, (height, width))
    if texture == "diagonal stripes":
        return ((rows + cols) % period) < half
    if texture == "checkerboard":
        cell = max(3, period)
        return ((rows // cell) + (cols // cell)) % 2 == 0
    if texture == "dots":
        cell = max(5, period + 1)
        dy = (rows % cell) - (cell - 1) / 2
        dx = (cols % cell) - (cell - 1) / 2
        return dx**2 + dy**2 <= (cell * 0.3) ** 2
    raise ValueError(f"unknown pattern texture {texture!r}")


def _paint_fill(
    fill: Fill, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paint ``fill`` over a whole canvas: (H, W, 3) uint8 pixels and its concepts' masks."""
    full = np.ones((height, width), dtype=bool)
    if fill.texture is None:
        pixels = np.broadcast_to(_jittered(rng, fill.colours[0]), (height, width, 3))
        return pixels.astype(np.uint8), {fill.colours[0]: full}
    if fill.texture in PATTERN_TEXTURES:
        first = _pattern(fill.texture, height, width, rng)
        a, b = (_jittered(rng, c) for c in fill.colours)
        pixels = np.where(first[..., None], a, b).astype(np.uint8)
        return pixels, {fill.texture: full, fill.colours[0]: first, fill.colours[1]: ~first}
    if fill.texture == "noise":
        pixels = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        return pixels, {"noise": full}
    tile = _photo_texture(fill.texture, max(height, width))
    y, x = rng.integers(0, tile.shape[0] - height + 1), rng.integers(0, tile.shape[1] - width + 1)
    crop = tile[y : y + height, x : x + width, None] * 1.6
    tint = np.array(_PHOTO_TINT[fill.texture], dtype=np.float32)
    pixels = np.clip(crop * tint, 0, 255).astype(np.uint8)
    return pixels, {fill.texture: full, **named_colour_masks(pixels, full)}


def named_colour_masks(pixels: np.ndarray, where: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the pixels under ``where`` whose RGB lies within tolerance of a named colour."""
    references = np.array(list(C.COLOUR_RGB.values()), dtype=np.float32)
    distances = np.linalg.norm(pixels[..., None, :].astype(np.float32) - references, axis=-1)
    nearest = distances.argmin(axis=-1)
    close = (distances.min(axis=-1) <= COLOUR_TOLERANCE) & where
    masks = {}
    for index, name in enumerate(C.COLOUR_RGB):
        mask = close & (nearest == index)
        if mask.any():
            masks[name] = mask
    return masks


def _regular_polygon(cx, cy, r, sides, rotation=-math.pi / 2, inner=None):
    points = []
    steps = sides * (2 if inner else 1)
    for k in range(steps):
        radius = inner if inner and k % 2 else r
        angle = rotation + 2 * math.pi * k / steps
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a shape centred at pixel (cx, cy) with half-size r."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=1)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + 0.2 * r, 1.1 * r, 3), fill=1)
    elif shape == "star":
        draw.polygon(_regular_polygon(cx, cy, r, 5, inner=0.42 * r), fill=1)
    elif shape == "ring":
        draw.ellipse(box, fill=1)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "cross":
        bar = 0.32 * r
        draw.rectangle((cx - r, cy - bar, cx + r, cy + bar), fill=1)
        draw.rectangle((cx - bar, cy - r, cx + bar, cy + r), fill=1)
    elif shape == "diamond":
        draw.polygon(_regular_polygon(cx, cy, r, 4), fill=1)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, rotation=0.0), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas, dtype=bool)


@lru_cache(maxsize=1024)
def _stamp_rgba(path: Path) -> np.ndarray:
    """A cut-out cropped to its opaque pixels and shrunk to at most 160 px, as RGBA uint8."""
    with Image.open(path) as image:
        image = image.convert("RGBA")
        bbox = image.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
        if bbox:
            image = image.crop(bbox)
        image.thumbnail((160, 160), Image.BILINEAR)
        return np.asarray(image).copy()


def _item_pixels(item: Item, size: tuple[int, int], rng, stamps):
    """Rasterise an item: its (H, W) footprint, (H, W, 3) pixels and the concepts' masks."""
    height, width = size
    scale = min(height, width)
    cx, cy, r = item.centre[0] * width, item.centre[1] * height, item.radius * scale
    if item.kind == "shape":
        footprint = shape_mask(item.name, cx, cy, r, height, width)
        pixels, fill_masks = _paint_fill(item.fill, height, width, rng)
        masks = {name: mask & footprint for name, mask in fill_masks.items()}
        masks[item.name] = footprint
        return footprint, pixels, masks
    if item.kind == "object":
        stamp = stamps[item.stamp_index]
        rgba = Image.fromarray(_stamp_rgba(stamp.path))
        side = max(2, round(2 * r))
        rgba.thumbnail((side, side), Image.BILINEAR)
        rgba_pixels = np.asarray(rgba)
        h, w = rgba_pixels.shape[:2]
        top = min(max(0, round(cy - h / 2)), height - h)
        left = min(max(0, round(cx - w / 2)), width - w)
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        footprint = np.zeros((height, width), dtype=bool)
        pixels[top : top + h, left : left + w] = rgba_pixels[..., :3]
        footprint[top : top + h, left : left + w] = rgba_pixels[..., 3] > 127
        return (
            footprint,
            pixels,
            {stamp.category: footprint, **named_colour_masks(pixels, footprint)},
        )
    # text: the glyphs take the fill colour; the concept "text" covers the word's bounding box
    word = item.name
    font = ImageFont.load_default(size=max(6, round(2 * r / max(1, len(word)) * 1.5)))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text((cx - (left + right) / 2, cy - (top + bottom) / 2), word, fill=255, font=font)
    glyphs = np.asarray(canvas) > 127
    box = np.zeros_like(glyphs)
    if glyphs.any():
        ys, xs = np.nonzero(glyphs)
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    pixels, _ = _paint_fill(item.fill, height, width, rng)
    return glyphs, pixels, {"text": box, item.fill.colours[0]: glyphs}


def draw_scene(
    spec: SceneSpec,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    stamps: Sequence[C.Stamp] = (),
) -> Scene:
    """Rasterise a recipe: pixels and per-concept masks, with later items occluding earlier."""
    height, width = (size, size) if isinstance(size, int) else size
    image, masks = _paint_fill(spec.background, height, width, rng)
    image = image.copy()
    captions = []
    for item in spec.items:
        footprint, pixels, item_masks = _item_pixels(item, (height, width), rng, stamps)
        if item.kind == "object":
            captions.append(stamps[item.stamp_index].caption)
        image[footprint] = pixels[footprint]
        # What the item covers no longer shows the concepts below, except a text's box, which
        # is a region concept that keeps the background visible between the glyphs.
        masks = {name: mask & ~footprint for name, mask in masks.items()}
        for name, mask in item_masks.items():
            masks[name] = masks.get(name, np.zeros_like(mask)) | mask
    masks = {name: mask for name, mask in masks.items() if mask.any()}
    return Scene(image, masks, spec, captions)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``seed``: independent of every other scene."""
    return np.random.default_rng([seed, index])


def generate_scene(
    seed: int,
    index: int,
    size: int | tuple[int, int] = 224,
    stamps: Sequence[C.Stamp] = (),
    required: Sequence[str] = (),
    num_items: int | None = None,
    forbidden: Sequence[str] = (),
    plain_background: bool = False,
) -> Scene:
    """Scene ``index`` of ``seed`` (see ``sample_scene_spec`` for the constraints)."""
    rng = scene_rng(seed, index)
    spec = sample_scene_spec(
        rng, stamps, required, num_items, forbidden=forbidden, plain_background=plain_background
    )
    return draw_scene(spec, size, rng, stamps)


def world_version() -> str:
    """A hash of the code that draws scenes: cached scene sets and models are keyed by it."""
    digest = hashlib.sha256()
    for module in ("concepts.py", "scenes.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()[:12]


def generate_scenes(
    num_images: int,
    seed: int = 0,
    size: int | tuple[int, int] = 224,
    stamps: Sequence[C.Stamp] = (),
) -> Iterator[Scene]:
    for index in range(num_images):
        yield generate_scene(seed, index, size, stamps)


# ----------------------------------------------------------------------------- datasets


def scene_features(size: int | tuple[int, int]):
    from datasets import Array2D, Features, Image, List, Value

    height, width = (size, size) if isinstance(size, int) else size
    return Features(
        {
            "image": Image(),
            "concepts": List(Value("string")),
            "masks": List(Array2D((height, width), "uint8")),
            "objects": List(Value("string")),
        }
    )


def _scene_rows(num_images, seed, size, stamps_folder, use_stamps, world):
    stamps = C.load_stamps(stamps_folder) if use_stamps else ()
    for scene in generate_scenes(num_images, seed, size, stamps):
        names = scene.concepts()
        yield {
            "image": Image.fromarray(scene.image),
            "concepts": names,
            "masks": [scene.masks[name].astype(np.uint8) for name in names],
            "objects": scene.captions,
        }


def build_scene_dataset(
    num_images: int,
    seed: int = 0,
    size: int | tuple[int, int] = 224,
    stamps_folder: str | Path | None = None,
    use_stamps: bool = True,
    cache_dir: str | None = None,
):
    """The probe world as a ``datasets.Dataset``: columns image, concepts, masks, objects.

    ``masks[j]`` is the (H, W) uint8 mask of ``concepts[j]``; region concepts (top, bottom,
    left, right, centre) are implied by the frame and not stored (see ``region_masks``).
    ``objects`` lists the captions of the cut-outs in the scene. Usable directly as probe
    images for ``milan_hf.exemplars.extract_exemplars``.
    """
    from datasets import Dataset

    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    folder = None if stamps_folder is None else str(stamps_folder)
    return Dataset.from_generator(
        _scene_rows,
        features=scene_features(size),
        gen_kwargs={
            "num_images": num_images,
            "seed": seed,
            "size": size,
            "stamps_folder": folder,
            "use_stamps": use_stamps,
            "world": world_version(),  # a code change must not reuse a cached scene set
        },
        cache_dir=cache_dir,
    )
