"""Part-of-speech tags of unit descriptions: spaCy when an English pipeline is installed, else a
lexicon over the probe world's grammar.

``load_tagger()`` picks, at run time, the first installed spaCy English pipeline
(``en_core_web_sm`` preferred) and otherwise the fallback ``LexiconTagger``, and says which in
its ``name``. Tags are Universal POS tags (``ADJ``, ``NOUN``, ``ADP`` for prepositions, ...).

The fallback knows every word the probe-world grammar writes (``milan_hf.probe_world.phrasing``):
colour and pattern adjectives and the grammar's quantifying adjectives are ``ADJ``; the head
word of every concept noun phrase, the area nouns and the region nouns are ``NOUN``; modifiers
inside noun phrases ("brick" in "brick patterns") are ``NOUN`` as spaCy tags compounds; and a
closed list of English prepositions, determiners, conjunctions and auxiliaries. Unknown words
fall to suffix rules: ``-ly`` adverb, ``-ing`` verb, ``-ed/-ous/-ful/-ish/-ive/-al/-ic/-able/
-y`` adjective, anything else a noun. It is exact on the embedded captioner's vocabulary and a
rough guess on open English.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

ADJECTIVE = "ADJ"
NOUN = "NOUN"
PREPOSITION = "ADP"

PREPOSITIONS = frozenset(
    "in at near along toward towards on around across of with above below under over between "
    "behind beside besides inside outside from by into onto through against within without "
    "like among beneath underneath upon off to amid via beyond".split()
)
_CLOSED_CLASS = {
    "DET": "a an the some many several few lots each every any all this that these those no "
    "either neither both another other such",
    "CCONJ": "and or but nor",
    "AUX": "are is be been being was were",
    "PRON": "it its they them their anything something nothing everything what",
    "ADV": "well very also mostly partly not",
    "PART": "'s",
}
# Words of the grammar's fixed phrases (quantifiers, region and "nothing" phrases).
_EXTRA_ADJECTIVES = frozenset(
    (
        "small large bright tiny big bold distinct clear horizontal vertical diagonal round "
        "circular triangular hexagonal pointy spiky blocky printed typed plain upper lower "
        "central random mixed varied unclear scattered assorted different common consistent "
        "particular colourful"
    ).split()
)
_EXTRA_NOUNS = frozenset(
    (
        "top bottom left right centre center middle half side edge part image picture scene "
        "concept pattern theme bits content colour color clusters groups words"
    ).split()
)
_SUFFIX_ADJECTIVE = ("ed", "ous", "ful", "ish", "ive", "al", "ic", "able", "y")


@lru_cache(maxsize=1)
def _grammar_lexicon() -> dict[str, str]:
    """word -> tag for every word of the probe-world grammar."""
    from .probe_world import concepts as C
    from .probe_world import phrasing as P

    lexicon: dict[str, str] = {}
    concepts = list(C.all_concepts(C.load_stamps()).values())
    noun_phrases = [noun for concept in concepts for noun in concept.nouns]
    noun_phrases += [noun for nouns in P.EXTRA_NOUNS.values() for noun in nouns]
    noun_phrases += list(P.AREAS)
    for words in (phrase.split() for phrase in noun_phrases):
        lexicon[words[-1]] = NOUN
        for modifier in words[:-1]:
            lexicon.setdefault(modifier, NOUN)
    adjectives = [adj for concept in concepts for adj in concept.adjectives]
    adjectives += [adj for forms in P.EXTRA_ADJECTIVES.values() for adj in forms]
    adjectives += [adj for forms in P.PATTERN_ADJECTIVES.values() for adj in forms]
    for phrase in adjectives:
        for word in phrase.split():
            # adjectives win over their noun-modifier guess; "vertically" striped is an adverb
            lexicon[word] = "ADV" if word.endswith("ly") else ADJECTIVE
    for word in _EXTRA_ADJECTIVES:
        lexicon[word] = ADJECTIVE
    for word in _EXTRA_NOUNS:
        lexicon[word] = NOUN
    for tag, words in _CLOSED_CLASS.items():
        for word in words.split():
            lexicon[word] = tag
    for word in PREPOSITIONS:
        lexicon[word] = PREPOSITION
    for word in ("filled", "containing", "located", "coloured", "overlapping", "covered"):
        lexicon[word] = "VERB"
    lexicon["next"] = "ADV"  # "next to": the preposition is "to"
    return lexicon


def _suffix_tag(word: str) -> str:
    if word.endswith("ly") and len(word) > 4:
        return "ADV"
    if word.endswith("ing") and len(word) > 5:
        return "VERB"
    if word.endswith(_SUFFIX_ADJECTIVE) and len(word) > 4 and not word.endswith(("ey", "ay")):
        return ADJECTIVE
    if word.isdigit():
        return "NUM"
    return NOUN


def words_of(description: str) -> list[str]:
    """Lowercase words of a description (letters, digits, apostrophes; hyphens split)."""
    return re.findall(r"[a-z0-9']+", description.lower())


@dataclass
class LexiconTagger:
    """The offline fallback tagger (see the module docs)."""

    name: str = "probe-world lexicon + suffix rules (no spaCy English pipeline installed)"
    lexicon: dict[str, str] = field(default_factory=lambda: dict(_grammar_lexicon()))

    def tag(self, description: str) -> list[tuple[str, str]]:
        return [
            (word, self.lexicon.get(word) or _suffix_tag(word)) for word in words_of(description)
        ]


@dataclass
class SpacyTagger:
    """Universal POS tags from a spaCy pipeline."""

    pipeline: Any
    name: str = "spaCy"

    def tag(self, description: str) -> list[tuple[str, str]]:
        document = self.pipeline(description.lower())
        tags = []
        for token in document:
            if token.is_punct or token.is_space:
                continue
            tag = NOUN if token.pos_ == "PROPN" else token.pos_
            tags.append((token.text, tag))
        return tags


def installed_spacy_english_pipeline() -> str | None:
    """The name of an installed spaCy English pipeline (``en_core_web_sm`` first), or None."""
    try:
        import spacy.util
    except ImportError:
        return None
    names = sorted(name for name in spacy.util.get_installed_models() if name.startswith("en_"))
    if not names:
        return None
    return "en_core_web_sm" if "en_core_web_sm" in names else names[0]


def load_tagger(prefer: str = "auto") -> LexiconTagger | SpacyTagger:
    """spaCy's English pipeline when installed (``prefer="auto"`` or ``"spacy"``), else the
    lexicon fallback (``prefer="lexicon"`` forces it)."""
    if prefer not in ("auto", "spacy", "lexicon"):
        raise ValueError(f"unknown tagger {prefer!r}; choose auto, spacy or lexicon")
    if prefer != "lexicon":
        pipeline_name = installed_spacy_english_pipeline()
        if pipeline_name is not None:
            import spacy

            pipeline = spacy.load(pipeline_name, disable=["parser", "ner", "lemmatizer"])
            return SpacyTagger(pipeline, name=f"spaCy {spacy.__version__} {pipeline_name}")
        if prefer == "spacy":
            raise ValueError("no spaCy English pipeline is installed (e.g. en_core_web_sm)")
    return LexiconTagger()


def count_tags(tags: Sequence[tuple[str, str]], tag: str) -> int:
    return sum(1 for _, word_tag in tags if word_tag == tag)
