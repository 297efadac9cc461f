"""Render a concept, or a combination of concepts, into images that contain it.

Used to score candidate descriptions by how strongly a unit responds to images of them
(Describe-and-Dissect style) and for evaluation. A request is either a list of concept names
that must all appear on one item (``["red", "circle", "top"]``: a red circle in the top half)
or an expression as the annotator writes it: ``("concept", c)``, ``("and", a, b)``,
``("or", a, b)`` (images alternate between ``a`` and ``b``).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from . import concepts as C
from .scenes import Scene, generate_scene


def _requests(concepts: str | Sequence[str]) -> list[list[str]]:
    """The concept lists to cycle through for a request."""
    if isinstance(concepts, str):
        return [[concepts]]
    concepts = list(concepts)
    if concepts and concepts[0] in ("concept", "and", "or", "none"):
        operator, operands = concepts[0], concepts[1:]
        if operator == "none":
            raise ValueError("cannot render the 'no clear concept' expression")
        if operator == "or":
            return [[operand] for operand in operands]
        return [list(operands)]
    if not concepts:
        raise ValueError("name at least one concept to render")
    return [concepts]


def render_concepts(
    concepts: str | Sequence[str],
    num_images: int = 8,
    *,
    seed: int = 0,
    size: int | tuple[int, int] = 224,
    distractors: bool = True,
    stamps: Sequence[C.Stamp] | None = None,
) -> list[Scene]:
    """``num_images`` scenes that contain ``concepts`` (with their concept masks).

    Args:
        concepts: a concept name, a list of names for one item, or an annotator expression.
        distractors: add up to two unrelated items under the requested one.
        stamps: cut-outs for object concepts (default: the installed tuxpaint stamps).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    stamps = C.load_stamps() if stamps is None else stamps
    known = set(C.all_concepts(stamps))
    requests = _requests(concepts)
    for request in requests:
        unknown = [name for name in request if name not in known]
        if unknown:
            raise ValueError(f"unknown concept(s) {unknown}; known concepts: {sorted(known)}")
        families = {C.concept_family(name) for name in request}
        if C.TEXT in families and C.TEXTURE in families:
            raise ValueError(f"text is drawn in one plain colour; cannot render {request}")
    scenes = []
    for index in range(num_images):
        request = requests[index % len(requests)]
        num_items = None if distractors else 1
        # Offset the seed so renders differ from the probe set drawn with the same seed.
        scene = generate_scene(seed + 7919, index, size, stamps, request, num_items=num_items)
        missing = [n for n in request if C.concept_family(n) != C.REGION and n not in scene.masks]
        if missing:  # e.g. a colour fully hidden: should not happen, but never return a lie
            raise RuntimeError(f"rendering {request} lost {missing} in scene {index}")
        scenes.append(scene)
    return scenes


def render_concept_images(
    concepts: str | Sequence[str],
    num_images: int = 8,
    *,
    seed: int = 0,
    size: int | tuple[int, int] = 224,
    distractors: bool = True,
) -> list[Image.Image]:
    """Like ``render_concepts`` but only the PIL images."""
    scenes = render_concepts(concepts, num_images, seed=seed, size=size, distractors=distractors)
    return [Image.fromarray(scene.image) for scene in scenes]


def _item_phrase(item, stamps: Sequence[C.Stamp]) -> str:
    if item.kind == "object":
        return f"a {stamps[item.stamp_index].caption}" if stamps else "an object"
    if item.kind == "text":
        return f'the word "{item.name}" in {item.fill.colours[0]}'  # text is one plain colour
    if item.fill.texture and item.fill.colours:
        return f"a {' and '.join(item.fill.colours)} {item.name} with {item.fill.texture}"
    if item.fill.texture:
        return f"a {item.name} of {item.fill.texture}"
    return f"a {item.fill.colours[0]} {item.name}"


def _relation(first, second) -> str:
    """Where ``first`` is relative to ``second`` (image y grows downwards)."""
    dx = first.centre[0] - second.centre[0]
    dy = first.centre[1] - second.centre[1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def describe_scene(scene: Scene, stamps: Sequence[C.Stamp] | None = None) -> str:
    """A ground-truth caption of a scene with the spatial relations between its items, e.g.
    ``a red circle above a blue square, on grass`` (a reference captioner for tests)."""
    stamps = C.load_stamps() if stamps is None else stamps
    items = scene.spec.items
    parts = []
    for index, item in enumerate(items):
        phrase = _item_phrase(item, stamps)
        if index > 0:
            phrase = f"{phrase} {_relation(item, items[index - 1])} it"
        parts.append(phrase)
    background = scene.spec.background
    ground = background.texture or background.colours[0]
    if background.texture and background.colours:
        ground = f"{' and '.join(background.colours)} {background.texture}"
    return (", ".join(parts) + f", on {ground}") if parts else f"plain {ground}"
