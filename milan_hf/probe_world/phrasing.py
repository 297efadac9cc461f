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

import re
from collections.abc import Sequence
from functools import lru_cache

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
        nouns += [f"the {caption}" for caption in captions]
        nouns += [f"{_indefinite_article(c)} {c}" for c in captions]
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
    plain = [n for n in nouns if not n.startswith(("the ", "a ", "an "))]  # no "many the heron"
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
    """Every description the grammar can produce for ``expression`` (deterministic order).

    Only defect-free strings (``description_defects``) are returned: the templates overgenerate
    (two operands sharing a noun, a long caption in a long frame) and the check keeps the
    grammar honest in one place rather than in every template.
    """
    if stamps_vocabulary:
        forms = _template_phrases(expression, stamps_vocabulary, captions)
        return [text for text in forms if not description_defects(text)]
    return list(_checked_phrases(tuple(expression), tuple(captions)))


@lru_cache(maxsize=16384)
def _unchecked_phrases(expression: tuple[str, ...], captions: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_template_phrases(expression, {}, captions)))


@lru_cache(maxsize=1024)
def _checked_phrases(expression: tuple[str, ...], captions: tuple[str, ...]) -> tuple[str, ...]:
    forms = _unchecked_phrases(expression, captions)
    return tuple(text for text in forms if not description_defects(text))


def _template_phrases(
    expression: Sequence[str], vocab: dict[str, C.Concept], captions: Sequence[str]
) -> list[str]:
    """Every string the templates produce for ``expression``, defects included."""
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
        forms = [t.format(a=a, b=b) for t in templates for a in a_forms for b in b_forms]
        if C.concept_family(first) == C.COLOUR and C.concept_family(second) == C.COLOUR:
            # Two colours share one noun: "red or blue areas", not "red areas or blue areas".
            a_words, b_words = (
                _spread(_adjectives(first, vocab), 4),
                _spread(_adjectives(second, vocab), 4),
            )
            shared = ("{a} or {b} {area}", "either {a} or {b} {area}", "{a} and {b} {area}")
            forms += [
                t.format(a=a, b=b, area=area)
                for t in shared
                for a in a_words
                for b in b_words
                for area in AREAS[:6]
            ]
        return forms
    if operator == "above":
        a_forms = _spread(_nouns(first, vocab, captions))
        b_forms = _spread(_nouns(second, vocab, captions))
        templates = ("{a} above {b}", "{a} over {b}", "{a} placed above {b}")
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
    if stamps_vocabulary:
        forms = list(dict.fromkeys(_template_phrases(expression, stamps_vocabulary, captions)))
    else:
        forms = _unchecked_phrases(tuple(expression), tuple(captions))
    # Check only what is drawn (the full check of every form costs ~50 ms per expression).
    candidates = []
    for index in rng.permutation(len(forms)):
        if not description_defects(forms[index]):
            candidates.append(forms[index])
            if len(candidates) == count:
                break
    if not candidates:
        raise ValueError(f"the grammar has no phrase for {expression!r}")
    chosen = list(candidates)
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
    # Every operator's own words ("either", "above", "placed", ...), whatever its operands.
    for operator in ("or", "above"):
        for text in candidate_phrases((operator, "red", "blue")):
            words.update(text.split())
    for text in NOTHING_PHRASES:
        words.update(text.split())
    for stamp in stamps:
        words.update(stamp.caption.split())
    return words


def _indefinite_article(noun_phrase: str) -> str:
    return "an" if noun_phrase[:1] in "aeio" else "a"


# ----------------------------------------------------------------------------- good English

#: Tokens a description may have: the captioner's ``max_description_length`` (15) less the
#: end-of-description token, so a grammar string is never cut off by decoding.
MAX_DESCRIPTION_TOKENS = 14
#: Words that glue a noun phrase together; repeating them is fine ("the top of the image").
FUNCTION_WORDS = frozenset(
    "a an the of in on at with and or as well that are to near along toward around across "
    "located either like filled next without no into over under by for from above".split()
)
# Function words a description may repeat ("the top of the image"); a placing word may not
# ("nothing located in particular located in the picture").
_REPEATABLE_WORDS = FUNCTION_WORDS - {"located", "either", "like", "filled", "next", "without"}
# A noun phrase never ends with these (a cut-off description does: "... equipments in the").
_DANGLING_ENDS = FUNCTION_WORDS - {"well"}
_BAD_STARTS = frozenset("and or of with as that are to".split())


def description_tokens(text: str) -> list[str]:
    """Words and punctuation, as the captioner's tokenizer splits a description."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _word_key(word: str) -> str:
    """Singular-ish form, so "circle ... circles" counts as a repeat."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def description_defects(text: str) -> list[str]:
    """What is wrong with a description as English, one message per defect; ``[]`` if none.

    Checked: empty; longer than ``MAX_DESCRIPTION_TOKENS``; a word doubled ("vertical
    vertical stripes"); a repeated phrase or content word ("red areas and red areas",
    "horizontal bands as well as horizontal bands", "parts of parts of ..."); "either"
    without a later "or"; a start or an end no noun phrase has ("... in the", "or blue");
    "a" before a vowel; a quantifier before an article ("many the centre"); "the colour"
    naming no colour; a no-concept phrase that is then placed or added to ("nothing in the
    upper part", "nothing as well as fruit"); an operand of "or" / "as well as" that names
    nothing ("bright orange objects as well as the picture"); one concept on both sides of a
    conjunction ("ruby sections and red zones").
    """
    tokens = description_tokens(text)
    if not tokens:
        return ["empty description"]
    defects = []
    if len(tokens) > MAX_DESCRIPTION_TOKENS:
        defects.append(f"too long: {len(tokens)} tokens > {MAX_DESCRIPTION_TOKENS}")
    words = [t for t in tokens if t[0].isalnum()]
    for first, second in zip(words, words[1:]):
        if first == second:
            defects.append(f"doubled word {first!r}")
    if re.search(r"\bparts? of\b.*\bparts?\b", text.lower()):
        defects.append("parts of parts")
    counts: dict[str, int] = {}
    for word in words:
        if word not in _REPEATABLE_WORDS:
            counts[_word_key(word)] = counts.get(_word_key(word), 0) + 1
    defects += [f"repeated word {word!r}" for word, count in counts.items() if count > 1]
    bigrams = [pair for pair in zip(words, words[1:]) if not set(pair) <= FUNCTION_WORDS]
    for pair in sorted({p for p in bigrams if bigrams.count(p) > 1}):
        defects.append(f"repeated phrase {' '.join(pair)!r}")
    if "either" in words:
        after = words[words.index("either") + 1 :]
        if "or" not in after or words.count("either") > 1:
            defects.append("dangling 'either' (no 'or' after it)")
    if words and words[-1] in _DANGLING_ENDS:
        defects.append(f"ends with {words[-1]!r} (cut off?)")
    if words and words[0] in _BAD_STARTS:
        defects.append(f"starts with {words[0]!r}")
    for article, noun in zip(words, words[1:]):
        if article == "a" and noun[0] in "aeio":
            defects.append(f"'a {noun}' (should be 'an')")
    lowered = " ".join(words)
    places = r"(?:left|right|top|bottom|middle|centre|center|upper|lower|image)\b"
    for joint in ("like", "with"):  # "fruit like the left of the image", "with the top of"
        if re.search(rf"\b{joint} the {places}", lowered):
            defects.append(f"'{joint} the' followed by a place, not a thing")
    for before, article in zip(words, words[1:]):
        if article in _ARTICLES and before in _NO_ARTICLE_AFTER:
            defects.append(f"'{before} {article}' (a quantifier before an article)")
    for before, of, article in zip(words, words[1:], words[2:]):  # "groups of the image"
        if of == "of" and article in _ARTICLES and f"{before} of" in _OF_QUANTIFIERS:
            defects.append(f"'{before} of {article}' (a quantifier before an article)")
    colour = re.search(r"\bthe colour\b(?: (\w+))?", _canonical_spelling(lowered))
    if colour and colour.group(1) not in _COLOUR_NAMES:
        defects.append("'the colour' names no colour")
    says_nothing = bool(_NO_CONCEPT_WORDS.search(lowered))
    if says_nothing and lowered not in _NOTHING_WORDINGS:
        named = named_concepts(text)
        if any(C.concept_family(name) != C.REGION for name in named):
            defects.append("names a concept and says there is none")
        elif named or re.search(r"\b(?:or|as well as)\b", lowered):
            defects.append("says there is nothing, then places it or adds to it")
        else:
            # Decoding splices the fixed wordings ("many no clear concept", "no consistent
            # object texture", "mixed regions with a common theme"): only the grammar's own
            # no-concept wordings read as English and mean what they should.
            defects.append("a no-concept wording the grammar never writes")
    elif not says_nothing:
        for side in _operands(lowered):
            if not any(C.concept_family(n) != C.REGION for n in named_concepts(side)):
                defects.append(f"an operand names nothing: {side!r}")
                break
        joined = [_things(side) for side in re.split(r"\b(?:or|and|as well as)\b", lowered)]
        joined = [things for things in joined if things]
        if len(joined) != len(set(joined)):
            defects.append("the same concept on both sides of 'or' / 'and'")
    return defects


def _things(text: str) -> frozenset[str]:
    return frozenset(n for n in named_concepts(text) if C.concept_family(n) != C.REGION)


def _canonical_spelling(text: str) -> str:
    return re.sub(r"\b\w+\b", lambda m: _SPELLINGS.get(m.group(0), m.group(0)), text)


def _operands(text: str) -> list[str]:
    """The sides of a description's "or" / "as well as" (not "and", which joins the nouns of
    one category too: "balls and rackets"); [] when it has neither."""
    text = re.sub(r"^either ", "", text)
    sides = [side.strip() for side in re.split(r"\b(?:or|as well as)\b", text)]
    return sides if len(sides) > 1 else []


# "No concept" wording: a contradiction next to a named concept ("slanted lines and no clear
# pattern").
_NO_CONCEPT_WORDS = re.compile(
    r"\b(?:no clear|no consistent|no single|a common theme|nothing|mixed regions|"
    r"unclear|random bits|assorted|different scenes|varied content)\b"
)
# Quantifiers ending in "of" count things: "clusters of dots", never "groups of the image".
_OF_QUANTIFIERS = frozenset(q for q in QUANTIFIERS if q.endswith(" of"))
# The no-concept wordings as ``description_defects`` compares them (words only).
_NOTHING_WORDINGS = frozenset(re.sub(r"[^\w\s]", "", text) for text in NOTHING_PHRASES)
# Quantifiers (and "other") take a bare noun: "many dots", never "many the centre".
_NO_ARTICLE_AFTER = frozenset({"some", "many", "small", "large", "few", "several", "other"})
_COLOUR_NAMES = frozenset(concept.name for concept in C.colour_concepts())


# ----------------------------------------------------------------------------- naming concepts

#: Words that say "a is above b" in ``("above", a, b)`` descriptions.
RELATION_WORDS = ("above", "over")
_SPELLINGS = {"color": "colour", "colored": "coloured", "center": "centre", "gray": "grey"}
_ARTICLES = frozenset({"a", "an", "the"})
# Region words the frame phrases of concepts.py do not list on their own.
_REGION_WORDS = {
    "top": ("upper", "upper half", "upper part"),
    "bottom": ("lower", "lower half", "lower part"),
    "centre": ("middle", "central"),
}


def _matching_words(text: str) -> tuple[str, ...]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    words = [_SPELLINGS.get(word, word) for word in words if word not in _ARTICLES]
    return tuple(_word_key(word) for word in words)


def concept_phrases(stamps: Sequence[C.Stamp] | None = None) -> dict[str, tuple[str, ...]]:
    """Concept name -> every phrase that names it: its name, the grammar's nouns and adjectives,
    its synonyms (EXTRA_NOUNS/EXTRA_ADJECTIVES) and, for objects, the cut-outs' captions."""
    stamps = C.load_stamps() if stamps is None else stamps
    names = list(C.all_concepts(stamps)) + [
        n for n in C._OBJECT_NOUNS if n not in C.all_concepts(stamps)
    ]
    table = {}
    for name in names:
        concept = _concept(name, {})
        forms = [name, *concept.nouns, *concept.adjectives, *PATTERN_ADJECTIVES.get(name, ())]
        forms += [*EXTRA_NOUNS.get(name, ()), *EXTRA_ADJECTIVES.get(name, ())]
        forms += list(_REGION_WORDS.get(name, ()))
        forms += [stamp.caption for stamp in stamps if stamp.category == name]
        table[name] = tuple(dict.fromkeys(forms))
    return table


@lru_cache(maxsize=4)
def _phrase_index(stamps: tuple) -> tuple[dict[tuple[str, ...], frozenset[str]], set, int]:
    """Phrase words -> concepts they name; the keys only captions give; the longest key."""
    index: dict[tuple[str, ...], set[str]] = {}
    grammar_keys = set()
    captions = {stamp.caption for stamp in stamps}
    for name, forms in concept_phrases(stamps).items():
        for form in forms:
            key = _matching_words(form)
            if key:
                index.setdefault(key, set()).add(name)
                if form not in captions:
                    grammar_keys.add(key)
    frozen = {key: frozenset(names) for key, names in index.items()}
    return frozen, set(frozen) - grammar_keys, max(len(key) for key in frozen)


def named_concepts(description: str, stamps: Sequence[C.Stamp] | None = None) -> set[str]:
    """Every probe-world concept ``description`` names (see ``names_concept`` for the rule)."""
    stamps = C.load_stamps() if stamps is None else stamps
    index, caption_keys, longest = _phrase_index(tuple(stamps))
    words = _matching_words(description)
    named: set[str] = set()
    start = 0
    while start < len(words):
        for end in range(min(len(words), start + longest), start, -1):
            key = words[start:end]
            if key in index:
                named |= index[key]
                # A caption names its object and leaves its words to others ("green flag").
                start = start + 1 if key in caption_keys else end
                break
        else:
            start += 1
    return named


def names_concept(description: str, concept: str, stamps: Sequence[C.Stamp] | None = None) -> bool:
    """Whether ``description`` names ``concept``: the benchmark's matching rule.

    A concept is named when one of its phrases (``concept_phrases``: its word, the grammar's
    nouns and adjectives, a synonym such as "ivory" for white or "pinstripes" for vertical
    stripes, a cut-out's caption for an object) appears in the description as consecutive
    words, after lowercasing, dropping articles, unifying spellings (color/colour, center/centre,
    gray/grey) and plurals. Phrases are matched longest first and do not overlap, so "dark
    brown" names brown and not black, "hollow circles" names ring and not circle. A cut-out's
    caption is the exception: it names its object and its words still count ("great blue
    heron" names bird and blue). Words of one concept never count for another: "left" does
    not name right. Negation is not understood ("not red" names red).
    """
    return concept in named_concepts(description, stamps)


def expression_named(
    description: str,
    expression: Sequence[str],
    strict: bool = True,
    stamps: Sequence[C.Stamp] | None = None,
) -> bool:
    """Whether ``description`` names an annotator expression (``("concept", c)``, ``("and",
    a, b)``, ``("or", a, b)``, ``("none",)``).

    AND (attribute+thing, concept+region) needs both operands named; OR needs both when
    ``strict``, either otherwise; ``("above", a, b)`` needs a named before "above"/"over" and
    b after it; "none" is named by filler (``is_filler``).
    """
    if expression[0] == "none":
        return is_filler(description, stamps)
    if expression[0] == "above":
        # "a above b": a named before the relation word, b after it ("b above a" is wrong).
        words = description.lower().split()
        cut = next((i for i, w in enumerate(words) if w in RELATION_WORDS), None)
        if cut is None:
            return False
        upper = named_concepts(" ".join(words[:cut]), stamps)
        lower = named_concepts(" ".join(words[cut + 1 :]), stamps)
        return expression[1] in upper and expression[2] in lower
    named = named_concepts(description, stamps)
    operands = [name in named for name in expression[1:]]
    if expression[0] == "concept" or expression[0] == "and" or strict:
        return all(operands)
    if expression[0] == "or":
        return any(operands)
    raise ValueError(f"unknown expression operator {expression[0]!r} in {tuple(expression)!r}")


def is_filler(description: str, stamps: Sequence[C.Stamp] | None = None) -> bool:
    """Whether a description says nothing a unit detects: one of ``NOTHING_PHRASES``, or no
    concept named other than a region ("things at the top")."""
    if description.strip().lower() in NOTHING_PHRASES:
        return True
    named = named_concepts(description, stamps)
    return not any(C.concept_family(name) != C.REGION for name in named)


def _filler_words() -> frozenset[str]:
    """Words that name nothing a unit detects: places, area nouns, quantifiers, frames."""
    texts = [*AREAS, *QUANTIFIERS, *LOCATORS, *FRAMES]  # no-concept wordings: matched whole
    for region in C.region_concepts():
        texts += [region.name, *region.nouns, *_REGION_WORDS.get(region.name, ())]
    words = set(FUNCTION_WORDS) | {"image", "picture", "scene", "bits", "part", "things"}
    for text in texts:
        words.update(re.findall(r"[a-z]+", text.lower()))
    return frozenset(words)


_FILLER_WORDS = _filler_words()


def names_nothing(description: str) -> bool:
    """Whether a description is filler in any captioner's vocabulary: a no-concept wording, or
    only places, area nouns and quantifiers ("the upper part of the image", "some regions at
    the left"). Unlike ``is_filler`` it needs no probe-world concept index, so a word outside
    the probe world ("sky", "dog faces") counts as a concept, as it does for a human reader."""
    lowered = description.strip().lower()
    if not lowered or lowered in NOTHING_PHRASES or _NO_CONCEPT_WORDS.search(lowered):
        return bool(lowered)
    return all(word in _FILLER_WORDS for word in re.findall(r"[a-z]+", lowered))
