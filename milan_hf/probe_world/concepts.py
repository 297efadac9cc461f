"""The probe world's vocabulary: concept families, concept names and the words used to say them.

Every concept has a family (colour, shape, texture, text, region, object), a canonical name
(what scene masks and annotations are keyed by, e.g. ``"red"``, ``"vertical stripes"``,
``"bird"``) and a list of surface forms the annotation grammar draws from ("circle",
"round shape", "disc"…). Object concepts come from a folder of photographic cut-outs
(Debian ``tuxpaint-stamps-default``); without it the world still has the other five families.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

COLOUR = "colour"
SHAPE = "shape"
TEXTURE = "texture"
TEXT = "text"
REGION = "region"
OBJECT = "object"
FAMILIES = (COLOUR, SHAPE, TEXTURE, TEXT, REGION, OBJECT)

#: Where Debian's ``tuxpaint-stamps-default`` puts its cut-outs; override with MILAN_HF_STAMPS.
DEFAULT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")


@dataclass(frozen=True)
class Concept:
    """One concept of the probe world.

    Attributes:
        name: canonical name, the key of its scene masks (``"red"``, ``"circle"``).
        family: one of ``FAMILIES``.
        nouns: noun phrases that name it ("circles", "round shapes"); plural, as descriptions
            of units are ("red circles", "vertical stripes").
        adjectives: adjectival forms for attribute concepts ("red", "reddish"); empty otherwise.
    """

    name: str
    family: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...] = field(default=())


# Named colours with their reference RGB; scenes jitter around these.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 165, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 180),
    "pink": (245, 140, 200),
    "brown": (115, 70, 30),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
}

_COLOUR_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (adjectives, nouns)
    "red": (("red", "bright red", "reddish", "crimson", "scarlet"), ("red", "red colour")),
    "orange": (("orange", "bright orange", "orangish", "amber"), ("orange", "orange colour")),
    "yellow": (("yellow", "bright yellow", "yellowish", "golden"), ("yellow", "yellow colour")),
    "green": (("green", "bright green", "greenish", "leafy green"), ("green", "green colour")),
    "blue": (("blue", "bright blue", "bluish", "deep blue", "cobalt"), ("blue", "blue colour")),
    "purple": (("purple", "violet", "purplish", "deep purple"), ("purple", "violet colour")),
    "pink": (("pink", "light pink", "pinkish", "rosy"), ("pink", "pink colour")),
    "brown": (("brown", "dark brown", "brownish", "chocolate"), ("brown", "brown colour")),
    "black": (("black", "dark", "jet black", "very dark"), ("black", "darkness")),
    "white": (("white", "bright white", "pale", "whitish"), ("white", "white colour")),
    "grey": (("grey", "gray", "greyish", "neutral grey"), ("grey", "gray colour")),
}

_SHAPE_NOUNS: dict[str, tuple[str, ...]] = {
    "circle": ("circles", "round shapes", "discs", "circular blobs", "round spots"),
    "square": ("squares", "square shapes", "boxes", "square blocks", "rectangles"),
    "triangle": ("triangles", "triangular shapes", "pointed triangles", "wedges"),
    "star": ("stars", "star shapes", "five pointed stars", "starry shapes"),
    "ring": ("rings", "hollow circles", "loops", "circular outlines", "donuts"),
    "cross": ("crosses", "plus signs", "cross shapes", "crossed bars"),
    "diamond": ("diamonds", "rhombuses", "diamond shapes", "tilted squares"),
    "hexagon": ("hexagons", "six sided shapes", "hexagonal shapes", "honeycomb cells"),
}

_TEXTURE_NOUNS: dict[str, tuple[str, ...]] = {
    "horizontal stripes": ("horizontal stripes", "horizontal lines", "horizontal bands"),
    "vertical stripes": ("vertical stripes", "vertical lines", "vertical bars", "upright bands"),
    "diagonal stripes": ("diagonal stripes", "slanted lines", "diagonal bands", "oblique lines"),
    "dots": ("dots", "polka dots", "spots", "dotted patterns", "speckled dots"),
    "checkerboard": ("checkerboards", "checkered patterns", "chess board patterns", "grids"),
    "noise": ("noise", "static", "grainy texture", "random speckles", "noisy patches"),
    "brick": ("bricks", "brick walls", "masonry", "brickwork"),
    "grass": ("grass", "grassy texture", "lawns", "blades of grass"),
    "gravel": ("gravel", "pebbles", "stony ground", "rough gravel"),
}

_TEXT_NOUNS: dict[str, tuple[str, ...]] = {
    "text": ("text", "letters", "words", "writing", "printed text", "lettering", "characters"),
}

#: Regions are fixed parts of the image frame (see ``region_masks``).
_REGION_PHRASES: dict[str, tuple[str, ...]] = {
    "top": ("the top of the image", "the upper half", "the top", "the upper part of the image"),
    "bottom": ("the bottom of the image", "the lower half", "the bottom", "the lower part"),
    "left": ("the left side", "the left half", "the left of the image", "the left edge"),
    "right": ("the right side", "the right half", "the right of the image", "the right edge"),
    "centre": ("the centre", "the middle of the image", "the center", "the central area"),
}

# Words the text renderer writes: real words of varied length, plus single letters.
TEXT_WORDS = (
    "stop",
    "exit",
    "open",
    "sale",
    "milk",
    "taxi",
    "hotel",
    "bank",
    "cafe",
    "bus",
    "park",
    "news",
    "shop",
    "free",
    "push",
    "pull",
    "help",
    "fire",
    "zoo",
    "gate",
    "love",
    "sun",
    "map",
    "road",
    "east",
    "west",
    "north",
    "south",
    "cat",
    "dog",
    "box",
    "jam",
    "tea",
    "ink",
) + tuple("ABCDEFGHKMNPRSTWXYZ")

# Object categories from the cut-out folder: path prefix inside the stamps folder -> category.
# Longest prefix wins; folders not listed (symbols, seasonal, people…) are not used.
_OBJECT_FOLDERS: dict[str, str] = {
    "animals/birds": "bird",
    "animals/fish": "fish",
    "animals/insects": "insect",
    "animals/mammals/bovines": "cattle",
    "animals/mammals/rodents": "rodent",
    "animals/mammals/cats": "cat",
    "animals/mammals/dogs": "dog",
    "animals/mammals/equines": "horse",
    "animals/mammals/deer": "deer",
    "animals/mammals/bears": "bear",
    "animals/mammals/apes": "ape",
    "animals/mammals/aquatic": "sea mammal",
    "animals/mammals": "mammal",
    "animals/marsupials": "marsupial",
    "animals/lizards": "reptile",
    "animals/amphibians": "amphibian",
    "animals/dinosaur": "dinosaur",
    "animals/shellfish": "shellfish",
    "food/fruit": "fruit",
    "food/vegetables": "vegetable",
    "food/dessert": "dessert",
    "food/nuts": "nut",
    "plants/flowers": "flower",
    "plants/trees": "tree",
    "plants/mushrooms": "mushroom",
    "vehicles/flight": "aircraft",
    "vehicles/ship": "boat",
    "vehicles/locomotive": "train",
    "vehicles": "vehicle",
    "town/houses": "house",
    "town/roadsigns": "road sign",
    "town/flags": "flag",
    "town/monuments": "monument",
    "household/tools": "tool",
    "household/dishes": "dishware",
    "household": "household object",
    "clothes": "clothing",
    "sports": "sports equipment",
    "hobbies/music": "musical instrument",
    "space/planets": "planet",
}

_OBJECT_NOUNS: dict[str, tuple[str, ...]] = {
    "bird": ("birds", "bird heads", "feathered birds", "perched birds"),
    "fish": ("fish", "fish bodies", "fins and scales"),
    "insect": ("insects", "bugs", "small insects", "insect bodies"),
    "cattle": ("cattle", "cows", "bulls and cows", "cow bodies"),
    "rodent": ("rodents", "mice and rats", "small furry rodents"),
    "cat": ("cats", "cat faces", "felines"),
    "dog": ("dogs", "dog faces", "puppies", "canines"),
    "horse": ("horses", "horse bodies", "ponies"),
    "deer": ("deer", "antlers", "deer bodies"),
    "bear": ("bears", "bear faces", "furry bears"),
    "ape": ("apes", "monkeys", "primates"),
    "sea mammal": ("sea mammals", "seals and dolphins", "marine mammals"),
    "mammal": ("mammals", "furry animals", "animal bodies", "four legged animals"),
    "marsupial": ("marsupials", "kangaroos and koalas", "pouched animals"),
    "reptile": ("reptiles", "lizards", "scaly reptiles"),
    "amphibian": ("amphibians", "frogs", "toads and frogs"),
    "dinosaur": ("dinosaurs", "dinosaur figures", "prehistoric reptiles"),
    "shellfish": ("shellfish", "crabs and shells", "crustaceans"),
    "fruit": ("fruit", "pieces of fruit", "apples and other fruit", "fruits"),
    "vegetable": ("vegetables", "veggies", "fresh vegetables"),
    "dessert": ("desserts", "cakes", "sweets", "pastries"),
    "nut": ("nuts", "walnuts and nuts", "nut shells"),
    "flower": ("flowers", "blossoms", "petals", "flower heads"),
    "tree": ("trees", "tree canopies", "leafy trees", "foliage"),
    "mushroom": ("mushrooms", "toadstools", "mushroom caps"),
    "aircraft": ("aircraft", "airplanes", "planes", "flying machines"),
    "boat": ("boats", "ships", "sailing boats", "hulls"),
    "train": ("trains", "locomotives", "railway engines"),
    "vehicle": ("vehicles", "cars", "wheels and cars", "motor vehicles"),
    "house": ("houses", "buildings", "homes", "roofs and windows"),
    "road sign": ("road signs", "traffic signs", "street signs", "signposts"),
    "flag": ("flags", "national flags", "banners"),
    "monument": ("monuments", "landmarks", "towers and monuments"),
    "tool": ("tools", "hand tools", "hammers and tools"),
    "dishware": ("dishes", "plates and cups", "kitchenware"),
    "household object": ("household objects", "appliances", "home appliances"),
    "clothing": ("clothing", "clothes", "garments", "hats and clothes"),
    "sports equipment": ("sports equipment", "balls and rackets", "sporting goods"),
    "musical instrument": ("musical instruments", "guitars and drums", "instruments"),
    "planet": ("planets", "globes", "celestial spheres"),
}


def colour_concepts() -> list[Concept]:
    return [
        Concept(name, COLOUR, nouns, adjectives)
        for name, (adjectives, nouns) in _COLOUR_WORDS.items()
    ]


def shape_concepts() -> list[Concept]:
    return [Concept(name, SHAPE, nouns) for name, nouns in _SHAPE_NOUNS.items()]


def texture_concepts() -> list[Concept]:
    return [Concept(name, TEXTURE, nouns) for name, nouns in _TEXTURE_NOUNS.items()]


def text_concepts() -> list[Concept]:
    return [Concept(name, TEXT, nouns) for name, nouns in _TEXT_NOUNS.items()]


def region_concepts() -> list[Concept]:
    return [Concept(name, REGION, phrases) for name, phrases in _REGION_PHRASES.items()]


@dataclass(frozen=True)
class Stamp:
    """One photographic cut-out: an RGBA PNG, its object category and its caption."""

    path: Path
    category: str
    caption: str  # lowercase noun phrase without article or full stop ("great blue heron")


def _caption_noun_phrase(caption_line: str) -> str:
    words = caption_line.strip().rstrip(".!").lower().split()
    if words and words[0] in {"a", "an", "the", "some"}:
        words = words[1:]
    return " ".join(words)


def stamps_dir() -> Path:
    """The cut-out folder: ``$MILAN_HF_STAMPS`` if set, else Debian's tuxpaint stamps folder."""
    return Path(os.environ.get("MILAN_HF_STAMPS", DEFAULT_STAMPS_DIR))


@lru_cache(maxsize=8)
def load_stamps(folder: str | os.PathLike | None = None, min_per_category: int = 3) -> tuple:
    """Index the cut-outs of a tuxpaint-style stamps folder (sorted, so seeds stay meaningful).

    Each ``<name>.png`` with a sibling ``<name>.txt`` whose first line is an English caption
    becomes a ``Stamp`` whose category comes from its folder (see ``_OBJECT_FOLDERS``).
    Categories with fewer than ``min_per_category`` stamps are dropped. Returns an empty tuple
    when the folder does not exist, so the world works without it.
    """
    root = Path(folder) if folder is not None else stamps_dir()
    if not root.is_dir():
        return ()
    prefixes = sorted(_OBJECT_FOLDERS, key=len, reverse=True)
    stamps = []
    for png in sorted(root.rglob("*.png")):
        relative = png.relative_to(root).parent.as_posix()
        category = next(
            (_OBJECT_FOLDERS[p] for p in prefixes if relative == p or relative.startswith(p + "/")),
            None,
        )
        caption_file = png.with_suffix(".txt")
        if category is None or not caption_file.is_file():
            continue
        first_line = caption_file.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = _caption_noun_phrase(first_line[0]) if first_line else ""
        if caption:
            stamps.append(Stamp(png, category, caption))
    counts: dict[str, int] = {}
    for stamp in stamps:
        counts[stamp.category] = counts.get(stamp.category, 0) + 1
    return tuple(s for s in stamps if counts[s.category] >= min_per_category)


def object_concepts(stamps: tuple | list = ()) -> list[Concept]:
    categories = sorted({stamp.category for stamp in stamps})
    return [Concept(name, OBJECT, _OBJECT_NOUNS.get(name, (name + "s",))) for name in categories]


def all_concepts(stamps: tuple | list = ()) -> dict[str, Concept]:
    """Every concept of the world, keyed by canonical name (objects only if stamps are given)."""
    concepts = (
        colour_concepts()
        + shape_concepts()
        + texture_concepts()
        + text_concepts()
        + region_concepts()
        + object_concepts(stamps)
    )
    return {concept.name: concept for concept in concepts}


def concept_family(name: str) -> str:
    """The family of a canonical concept name (objects: any name not in the fixed families)."""
    for family, table in (
        (COLOUR, _COLOUR_WORDS),
        (SHAPE, _SHAPE_NOUNS),
        (TEXTURE, _TEXTURE_NOUNS),
        (TEXT, _TEXT_NOUNS),
        (REGION, _REGION_PHRASES),
    ):
        if name in table:
            return family
    return OBJECT
