"""The grammar that turns a concept expression into short, varied unit descriptions.

An expression is what the annotator found a unit to detect (see ``annotation.py``):
``("concept", c)``, ``("and", a, b)``, ``("or", a, b)`` or ``("none",)``. Descriptions are
lowercase noun phrases in the style of MILANNOTATIONS ("red circles", "vertical stripes in the
top half"). The grammar, with ``N(c)`` a noun phrase of concept ``c``, ``A(c)`` an adjective of
an attribute concept (colour or pattern) and ``R(r)`` a phrase for region ``r``::

    description  := single | attributed | located | disjunction | conjunction | nothing
    single       := F(N(c)) | Q N(c)                  -- Q: QUANTIFIERS (some, many, a few…)
                  | A(colour) AREA | "the colour" colour  -- AREA: AREAS (regions, patches…)
                    (F: FRAMES, e.g. "{} in the image", "regions with {}", "parts of {}")
    attributed   := A(a) N(x) | N(x) "that are" A(a) | N(x) "in" a | N(x) "filled with" N(a)
                    (a: a colour or pattern; x: a shape, object, text or texture)
    located      := P(x) L R(r)          -- L: LOCATORS (in, at, near, located in, along…)
                    (P: a single phrase; regions never stand alone: "things at the top" says
                    nothing about what the unit detects)
    disjunction  := N(a) "or" N(b) | "either" N(a) "or" N(b) | N(a) "and" N(b)
                  | N(a) "as well as" N(b)
    conjunction  := N(a) "with" N(b) | N(a) "on" N(b) | N(a) "overlapping" N(b)
    nothing      := one of NOTHING_PHRASES

``phrase(expression, count, rng)`` samples ``count`` distinct descriptions; for objects, a
caption shared by most of the unit's exemplars ("great blue heron") may replace the category.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import concepts as C

QUANTIFIERS = (
    "some",
    "many",
    "small",
    "large",
    "bright",
    "clusters of",
    "several",
    "a few",
    "lots of",
    "groups of",
    "tiny",
    "big",
    "bold",
    "distinct",
)
AREAS = (
    "regions",
    "areas",
    "patches",
    "things",
    "surfaces",
    "objects",
    "parts",
    "spots",
    "blobs",
    "sections",
    "zones",
    "shapes",
)
LOCATORS = ("in", "at", "near", "located in", "along", "toward", "on", "around", "across")
# Frames around a noun phrase for single concepts: "{}" is the phrase.
FRAMES = (
    "{}",
    "{} in the image",
    "{} in the picture",
    "regions with {}",
    "areas containing {}",
    "parts of {}",
    "{} in the scene",
    "images of {}",
)
NOTHING_PHRASES = (
    "no clear concept",
    "nothing in particular",
    "scattered patches with no clear pattern",
    "random bits of the image",
    "no consistent object or texture",
    "mixed regions without a common theme",
    "unclear, varied content",
    "assorted parts of different scenes",
)
PATTERN_ADJECTIVES = {
    "horizontal stripes": ("horizontally striped", "horizontal striped"),
    "vertical stripes": ("vertically striped", "vertical striped"),
    "diagonal stripes": ("diagonally striped", "slanted striped"),
    "dots": ("dotted", "polka dot", "spotted"),
    "checkerboard": ("checkered", "checkerboard"),
    "noise": ("noisy", "grainy", "speckled"),
    "brick": ("brick", "brick textured"),
    "grass": ("grassy", "grass covered"),
    "gravel": ("gravelly", "pebbled", "stony"),
}

# Extra wordings on top of ``concepts.py``'s canonical nouns and adjectives: style, not meaning,
# so they live with the grammar (and changing them never invalidates cached scenes or models).
EXTRA_NOUNS = {
    "circle": ("round objects", "circular regions", "disks", "orbs"),
    "square": ("square tiles", "blocky shapes", "cubes"),
    "triangle": ("three sided shapes", "triangular regions", "arrowheads"),
    "star": ("star outlines", "pointy stars", "spiky shapes"),
    "ring": ("hoops", "ring shapes", "circular frames"),
    "cross": ("cruciform shapes", "intersecting bars", "crossing lines"),
    "diamond": ("lozenges", "diamond outlines", "kite shapes"),
    "hexagon": ("hexagonal tiles", "six cornered shapes"),
    "horizontal stripes": ("parallel horizontal lines", "horizontal striping", "striations"),
    "vertical stripes": ("pinstripes", "vertical striping", "columns of stripes"),
    "diagonal stripes": ("diagonal hatching", "tilted stripes", "angled lines"),
    "dots": ("dot patterns", "spotty textures", "grids of dots"),
    "checkerboard": ("checks", "tiled squares", "chequered texture"),
    "noise": ("static noise", "random pixels", "fuzzy texture", "colourful noise"),
    "brick": ("brick patterns", "walls", "stacked bricks"),
    "grass": ("turf", "meadow texture", "green grass"),
    "gravel": ("stones", "gravel paths", "rocky texture"),
    "text": ("text labels", "typed letters", "alphabet letters", "inscriptions", "fonts"),
}
EXTRA_ADJECTIVES = {
    "red": ("ruby", "cherry red"),
    "orange": ("tangerine", "burnt orange"),
    "yellow": ("lemon yellow", "mustard"),
    "green": ("emerald", "lime green"),
    "blue": ("navy", "azure", "sky blue"),
    "purple": ("lilac", "lavender", "plum"),
    "pink": ("fuchsia", "hot pink", "salmon pink"),
    "brown": ("tan", "bronze", "coffee coloured"),
    "black": ("inky", "charcoal"),
    "white": ("snowy", "ivory", "cream"),
    "grey": ("silver", "slate", "ash grey"),
}

_VOCABULARY = C.all_concepts()


def _concept(name: str, stamps_vocabulary: dict[str, C.Concept]) -> C.Concept:
    if name in stamps_vocabulary:
        return stamps_vocabulary[name]
    if name in _VOCABULARY:
        return _VOCABULARY[name]
    # Object categories: their nouns from the category table (whether or not cut-outs are
    # installed here), else the name itself.
    return C.Concept(name, C.OBJECT, C._OBJECT_NOUNS.get(name, (name,)))


def _is_attribute(name: str) -> bool:
    return C.concept_family(name) == C.COLOUR or name in PATTERN_ADJECTIVES


def _nouns(name: str, vocab, captions: Sequence[str] = ()) -> list[str]:
    concept = _concept(name, vocab)
    if concept.family == C.COLOUR:
        adjectives = concept.adjectives + EXTRA_ADJECTIVES.get(name, ())
        forms = [f"{adj} {area}" for adj in adjectives for area in AREAS]
        return forms + [f"the colour {name}", f"things coloured {name}"]
    nouns = list(concept.nouns) + list(EXTRA_NOUNS.get(name, ()))
    if concept.family == C.OBJECT and captions:
        nouns += [f"the {caption}" for caption in captions] + [f"a {c}" for c in captions]
        nouns += [f"{n} like the {c}" for n in concept.nouns[:2] for c in captions]
    return nouns


def _adjectives(name: str, vocab) -> list[str]:
    concept = _concept(name, vocab)
    if concept.family == C.COLOUR:
        return list(concept.adjectives + EXTRA_ADJECTIVES.get(name, ()))
    return list(PATTERN_ADJECTIVES.get(name, ()))


def _spread(forms: Sequence[str], count: int = 8) -> list[str]:
    """``count`` forms spread over the list (which is ordered by adjective, then noun)."""
    return list(forms[:: max(1, len(forms) // count)])[:count]


def _single(name: str, vocab, captions) -> list[str]:
    nouns = _nouns(name, vocab, captions)
    family = C.concept_family(name)
    if family == C.REGION:
        return [f"anything in {n}" for n in nouns] + [f"things at {n}" for n in nouns]
    if family == C.COLOUR:
        return nouns
    plain = [n for n in nouns if not n.startswith(("the ", "a "))]  # no "many the heron"
    framed = [frame.format(n) for frame in FRAMES for n in nouns]
    return framed + [f"{q} {n}" for q in QUANTIFIERS for n in plain]


def _attributed(attribute: str, thing: str, vocab, captions) -> list[str]:
    things = _nouns(thing, vocab, captions if C.concept_family(thing) == C.OBJECT else ())
    adjectives = _adjectives(attribute, vocab)
    forms = [f"{adj} {t}" for adj in adjectives for t in things]
    forms += [f"{t} that are {adj}" for adj in adjectives[:2] for t in things]
    if C.concept_family(attribute) == C.COLOUR:
        forms += [f"{t} in {attribute}" for t in things]
    else:
        forms += [f"{t} filled with {n}" for n in _nouns(attribute, vocab) for t in things]
    return forms


def _located(inner: Sequence[str], region: str, vocab) -> list[str]:
    regions = _nouns(region, vocab)
    return [f"{p} {loc} {r}" for p in inner for loc in LOCATORS for r in regions]


def candidate_phrases(
    expression: Sequence[str],
    stamps_vocabulary: dict[str, C.Concept] | None = None,
    captions: Sequence[str] = (),
) -> list[str]:
    """Every description the grammar can produce for ``expression`` (deterministic order)."""
    vocab = stamps_vocabulary or {}
    operator = expression[0]
    if operator == "none":
        return list(NOTHING_PHRASES)
    if operator == "concept":
        return _single(expression[1], vocab, captions)
    first, second = expression[1], expression[2]
    if operator == "or":
        a_forms = _spread(_nouns(first, vocab, captions))
        b_forms = _spread(_nouns(second, vocab, captions))
        templates = ("{a} or {b}", "either {a} or {b}", "{a} and {b}", "{a} as well as {b}")
        return [t.format(a=a, b=b) for t in templates for a in a_forms for b in b_forms]
    if operator != "and":
        raise ValueError(f"unknown expression operator {operator!r} in {expression!r}")
    regions = [n for n in (first, second) if C.concept_family(n) == C.REGION]
    if regions and len(regions) < 2:
        other = second if first == regions[0] else first
        inner = _nouns(other, vocab, captions)
        inner += [f"{q} {n}" for q in QUANTIFIERS[:4] for n in inner[:3] if " the " not in f" {n}"]
        return _located(inner, regions[0], vocab)
    for attribute, thing in ((first, second), (second, first)):
        if _is_attribute(attribute) and not _is_attribute(thing):
            return _attributed(attribute, thing, vocab, captions)
    if _is_attribute(first) and _is_attribute(second):
        # colour + pattern: "red stripes"; two colours: "red and blue patterns"
        colour, pattern = (
            (first, second) if C.concept_family(first) == C.COLOUR else (second, first)
        )
        if C.concept_family(pattern) != C.COLOUR:
            return _attributed(colour, pattern, vocab, captions)
    a_forms = _spread(_nouns(first, vocab, captions))
    b_forms = _spread(_nouns(second, vocab, captions))
    templates = ("{a} with {b}", "{a} on {b}", "{a} overlapping {b}", "{a} next to {b}")
    return [t.format(a=a, b=b) for t in templates for a in a_forms for b in b_forms]


def phrase(
    expression: Sequence[str],
    count: int = 3,
    rng: np.random.Generator | None = None,
    stamps_vocabulary: dict[str, C.Concept] | None = None,
    captions: Sequence[str] = (),
) -> list[str]:
    """``count`` distinct descriptions of ``expression``, sampled from the grammar."""
    rng = rng if rng is not None else np.random.default_rng(0)
    candidates = list(dict.fromkeys(candidate_phrases(expression, stamps_vocabulary, captions)))
    if not candidates:
        raise ValueError(f"the grammar has no phrase for {expression!r}")
    picks = rng.permutation(len(candidates))[:count]
    chosen = [candidates[i] for i in picks]
    while len(chosen) < count:  # a tiny grammar: repeat rather than return fewer
        chosen.append(candidates[len(chosen) % len(candidates)])
    return chosen


def grammar_vocabulary(stamps: Sequence[C.Stamp] = ()) -> set[str]:
    """Every word the grammar can emit (with these cut-outs' categories and captions)."""
    vocab = {c.name: c for c in C.object_concepts(stamps)}
    words: set[str] = set()
    names = list(C.all_concepts(stamps))
    for name in names:
        for text in candidate_phrases(("concept", name), vocab):
            words.update(text.split())
        for other in ("circle", "top", "blue"):
            if other != name:
                for text in candidate_phrases(("and", name, other), vocab)[:200]:
                    words.update(text.split())
    for text in candidate_phrases(("or", "red", "blue")) + list(NOTHING_PHRASES):
        words.update(text.split())
    for stamp in stamps:
        words.update(stamp.caption.split())
    return words
