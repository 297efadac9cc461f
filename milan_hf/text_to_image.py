"""Description -> images: the text-to-image stage of verification and of Describe-and-Dissect.

Two implementations behind one interface (``TextToImage.render``):

- ``ProbeWorldTextToImage`` (offline): parses a description written in the probe world's
  grammar into a concept expression (``("concept", c)``, ``("and", a, b)``, ``("or", a, b)``,
  ``("above", a, b)``) and renders scenes that contain it, plus matched control scenes that do
  not. A description the grammar cannot produce (no concept named, three concepts, two shapes
  on one item, a coloured cut-out…) comes back ``renderable=False`` with the reason; it is never
  guessed.
- ``DiffusersTextToImage`` (Hub): a ``diffusers`` text-to-image pipeline (Stable Diffusion by
  default, any model id), batched and seeded, on the GPU when there is one; controls come from
  generic prompts, or are given (e.g. the probe set's low-activating images).

``load_text_to_image("probe-world")`` or ``load_text_to_image("<diffusers model id>")``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .probe_world import concepts as C
from .probe_world.phrasing import RELATION_WORDS, is_filler, named_concepts
from .probe_world.scenes import Scene, generate_scene
from .probe_world.synthetic_units import _render_positive, expression_mask

PROBE_WORLD = "probe-world"
#: The diffusers model used when ``load_text_to_image`` is given "diffusers" alone.
DEFAULT_DIFFUSERS_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: Generic prompts for diffusers control images: scenes with no particular concept.
DEFAULT_CONTROL_PROMPTS = (
    "a photo",
    "a random everyday scene",
    "an ordinary picture",
    "a photograph of a room",
    "a street scene",
    "a landscape photo",
    "a close-up photo of a surface",
    "a picture of some objects",
)
# Words joining two operands of an OR in the grammar ("red or blue", "red and blue areas").
_OR_WORDS = ("or", "and", "as well as")


@dataclass
class RenderedDescription:
    """Images that show one description, and matched controls that do not.

    Attributes:
        description: the description as given.
        renderable: False when the description cannot be rendered (never guessed).
        reason: "" when renderable, else why not.
        images: scenes/pictures that show the description.
        controls: matched control images that do not show it.
        expression: the parsed concept expression (probe world only; None otherwise).
        scenes: the probe world's ``Scene`` of each image, then of each control (masks
            included), for scorers of units with a known expression; empty otherwise.
    """

    description: str
    renderable: bool
    reason: str
    images: list[Image.Image] = field(default_factory=list)
    controls: list[Image.Image] = field(default_factory=list)
    expression: tuple | None = None
    scenes: list[Scene] = field(default_factory=list)


class TextToImage(Protocol):
    """Renders descriptions into images that show them plus controls that do not."""

    name: str  # "probe-world" or the diffusers model id

    def render(
        self,
        descriptions: Sequence[str],
        num_images: int = 8,
        seed: int = 0,
        image_size: int = 96,
    ) -> list[RenderedDescription]: ...


def _check_render_arguments(descriptions: Sequence[str], num_images: int, image_size: int) -> None:
    if isinstance(descriptions, str):
        raise TypeError(f"descriptions must be a list of strings, not the string {descriptions!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")


# ----------------------------------------------------------------------------- probe world


class CannotRender(ValueError):
    """A description the probe world's grammar cannot produce, with the reason."""


def _split_named(words: list[str], cut: int, width: int, stamps) -> tuple[set, set]:
    return (
        named_concepts(" ".join(words[:cut]), stamps),
        named_concepts(" ".join(words[cut + width :]), stamps),
    )


def _one_each_side(words: list[str], connectors: Sequence[str], stamps) -> tuple | None:
    """(a, b) when a connector splits the words into one non-region concept on each side."""
    for connector in connectors:
        pattern = connector.split()
        for cut in range(1, len(words) - len(pattern)):
            if words[cut : cut + len(pattern)] != pattern:
                continue
            left, right = _split_named(words, cut, len(pattern), stamps)
            left = {n for n in left if C.concept_family(n) != C.REGION}
            right = {n for n in right if C.concept_family(n) != C.REGION}
            if len(left) == 1 and len(right) == 1 and left != right:
                return next(iter(left)), next(iter(right))
    return None


def parse_description(description: str, stamps: Sequence[C.Stamp] | None = None) -> tuple:
    """The concept expression a probe-world description names; ``CannotRender`` if none.

    Concepts are found by the grammar's phrase index (``phrasing.named_concepts``); the
    composition comes from the grammar's words: "above"/"over" -> ABOVE, "or"/"either" (and
    "and"/"as well as" between two nouns, the grammar's other OR forms) -> OR, one concept with a
    region -> AND, an attribute with a thing ("red circles", "circles filled with dots") -> AND.
    """
    stamps = C.load_stamps() if stamps is None else stamps
    text = _captions_as_categories(description.strip().lower(), tuple(stamps))
    if not text or is_filler(text, stamps):
        raise CannotRender("names no concept the probe world can draw")
    words = re.findall(r"[a-z0-9]+", text)
    named = named_concepts(text, stamps)
    regions = sorted(n for n in named if C.concept_family(n) == C.REGION)
    things = sorted(n for n in named if C.concept_family(n) != C.REGION)
    if any(word in RELATION_WORDS for word in words):
        pair = _one_each_side(words, RELATION_WORDS, stamps)
        if pair is None or regions:
            raise CannotRender("'above' needs one concept on each side and no region")
        return ("above", *pair)
    if len(named) > 2:
        raise CannotRender(f"names {len(named)} concepts ({', '.join(sorted(named))}); at most 2")
    if len(regions) == 2:
        raise CannotRender(f"names two regions ({', '.join(regions)})")
    if regions:
        return ("and", things[0], regions[0])
    if len(things) == 1:
        return ("concept", things[0])
    pair = _one_each_side(words, _OR_WORDS, stamps)
    if pair is not None:
        return ("or", *pair)
    return ("and", *_attribute_first(things))


def _captions_as_categories(text: str, stamps: tuple) -> str:
    """A cut-out's caption names its object only ("great blue heron" is a bird, not blue)."""
    for caption, category in _caption_categories(stamps):
        if caption in text:
            text = re.sub(rf"\b{re.escape(caption)}\b", category, text)
    return text


@lru_cache(maxsize=4)
def _caption_categories(stamps: tuple) -> tuple[tuple[str, str], ...]:
    table = {stamp.caption: stamp.category for stamp in stamps if stamp.caption}
    return tuple(sorted(table.items(), key=lambda item: -len(item[0])))


def _attribute_first(pair: Sequence[str]) -> tuple[str, str]:
    """(attribute, thing) order for AND, as ``sample_expression`` writes it."""
    first, second = pair
    rank = {C.COLOUR: 0, C.TEXTURE: 1}
    if rank.get(C.concept_family(second), 2) < rank.get(C.concept_family(first), 2):
        first, second = second, first
    return first, second


def min_expression_pixels(size: int) -> int:
    """Pixels an expression must cover for a ``size`` px scene to show it (0.5%, at least 4)."""
    return max(4, size * size // 200)


def _render_seed(seed: int, key: str) -> int:
    return zlib.crc32(f"text-to-image/{seed}/{key}".encode())


@lru_cache(maxsize=8)
def _control_pool(seed: int, size: int, count: int, stamps: tuple) -> tuple[Scene, ...]:
    """Random scenes shared by every description of one render call's seed."""
    pool_seed = _render_seed(seed, "controls")
    return tuple(generate_scene(pool_seed, index, size, stamps) for index in range(count))


class ProbeWorldTextToImage:
    """Offline text-to-image: parse the grammar, render probe-world scenes.

    Images are scenes rendered to contain the parsed expression (each checked: the expression
    covers at least ``min_pixels`` pixels of it); controls are scenes where it covers none:
    half from a pool of random scenes, half near misses that carry one operand of a
    composition but not the composition (a circle that is not red, for "red circles").
    """

    name = PROBE_WORLD

    def __init__(self, stamps: Sequence[C.Stamp] | None = None, max_attempts: int = 4) -> None:
        self.stamps = tuple(C.load_stamps() if stamps is None else stamps)
        self.max_attempts = max_attempts

    def render(
        self,
        descriptions: Sequence[str],
        num_images: int = 8,
        seed: int = 0,
        image_size: int = 96,
    ) -> list[RenderedDescription]:
        _check_render_arguments(descriptions, num_images, image_size)
        return [self._render_one(str(d), num_images, seed, image_size) for d in descriptions]

    def _render_one(
        self, description: str, num_images: int, seed: int, size: int
    ) -> RenderedDescription:
        try:
            expression = parse_description(description, self.stamps)
            images = self._positives(expression, num_images, seed, size)
        except CannotRender as error:
            return RenderedDescription(description, False, str(error))
        except ValueError as error:  # the scene sampler cannot put it on one item
            return RenderedDescription(description, False, f"cannot draw it: {error}")
        controls = self._controls(expression, num_images, seed, size)
        return RenderedDescription(
            description,
            True,
            "",
            [Image.fromarray(scene.image) for scene in images],
            [Image.fromarray(scene.image) for scene in controls],
            expression,
            images + controls,
        )

    def _positives(self, expression: tuple, count: int, seed: int, size: int) -> list[Scene]:
        render_seed = _render_seed(seed, repr(expression))
        min_pixels = min_expression_pixels(size)
        scenes: list[Scene] = []
        for index in range(count * self.max_attempts):
            scene = _render_positive(expression, render_seed, index, size, self.stamps, index)
            if int(expression_mask(expression, scene).sum()) >= min_pixels:
                scenes.append(scene)
                if len(scenes) == count:
                    return scenes
        raise CannotRender(f"only {len(scenes)} of {count} rendered scenes show {expression}")

    def _controls(self, expression: tuple, count: int, seed: int, size: int) -> list[Scene]:
        near_misses = self._near_misses(expression, count // 2, seed, size)
        pool = _control_pool(seed, size, 4 * count + 8, self.stamps)
        random = [s for s in pool if not expression_mask(expression, s).any()]
        return (near_misses + random)[:count]

    def _near_misses(self, expression: tuple, count: int, seed: int, size: int) -> list[Scene]:
        """Scenes with one operand of a composition and not the composition itself."""
        operands = [n for n in expression[1:] if C.concept_family(n) != C.REGION]
        if expression[0] == "concept" or count == 0:
            return []
        render_seed = _render_seed(seed, "near-miss/" + repr(expression))
        scenes: list[Scene] = []
        for index in range(count * self.max_attempts):
            required = [operands[index % len(operands)]] if expression[0] != "or" else []
            scene = generate_scene(render_seed, index, size, self.stamps, required)
            if not expression_mask(expression, scene).any():
                scenes.append(scene)
                if len(scenes) == count:
                    break
        return scenes


# ----------------------------------------------------------------------------- diffusers


def _best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DiffusersTextToImage:
    """Text-to-image with a ``diffusers`` pipeline (Stable Diffusion unless told otherwise).

    Args:
        model_id: a Hub id or local folder for ``DiffusionPipeline.from_pretrained``.
        pipeline: an already built pipeline (then ``model_id`` only names it).
        device: "cuda"/"cpu"/...; the GPU when there is one.
        batch_size: prompts per pipeline call.
        num_inference_steps, guidance_scale: passed to the pipeline.
        control_prompts: generic prompts whose images are the controls of every description.
        control_images: given controls instead (e.g. a probe set's low-activating images).
    """

    def __init__(
        self,
        model_id: str = DEFAULT_DIFFUSERS_MODEL,
        pipeline: Any = None,
        device: str | None = None,
        batch_size: int = 8,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        control_prompts: Sequence[str] = DEFAULT_CONTROL_PROMPTS,
        control_images: Sequence[Image.Image] | None = None,
        torch_dtype: Any = None,
    ) -> None:
        if batch_size < 1 or num_inference_steps < 1:
            raise ValueError(
                f"need batch_size >= 1 and num_inference_steps >= 1, got {batch_size}, "
                f"{num_inference_steps}"
            )
        if not control_prompts and not control_images:
            raise ValueError("need control_prompts or control_images for the controls")
        self.name = model_id
        self.device = device or _best_device()
        self.pipeline = pipeline if pipeline is not None else _load_pipeline(model_id, torch_dtype)
        self.pipeline = self.pipeline.to(self.device)
        if hasattr(self.pipeline, "set_progress_bar_config"):
            self.pipeline.set_progress_bar_config(disable=True)
        self.batch_size = batch_size
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.control_prompts = tuple(control_prompts)
        self.control_images = list(control_images) if control_images else None

    def render(
        self,
        descriptions: Sequence[str],
        num_images: int = 8,
        seed: int = 0,
        image_size: int = 96,
    ) -> list[RenderedDescription]:
        _check_render_arguments(descriptions, num_images, image_size)
        size = -(-image_size // 8) * 8  # the VAE needs a multiple of 8
        prompts = [str(d) for d in descriptions for _ in range(num_images)]
        seeds = [_render_seed(seed, f"{d}/{i}") for d in descriptions for i in range(num_images)]
        pictures = self.generate(prompts, seeds, size)
        controls = self.control_images or self._generic_controls(num_images, seed, size)
        controls = [_resized(image, image_size) for image in controls[:num_images]]
        rendered = []
        for position, description in enumerate(descriptions):
            own = pictures[position * num_images : (position + 1) * num_images]
            own = [_resized(image, image_size) for image in own]
            rendered.append(RenderedDescription(str(description), True, "", own, list(controls)))
        return rendered

    def _generic_controls(self, count: int, seed: int, size: int) -> list[Image.Image]:
        prompts = [self.control_prompts[i % len(self.control_prompts)] for i in range(count)]
        seeds = [_render_seed(seed, f"control/{i}") for i in range(count)]
        return self.generate(prompts, seeds, size)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], size: int) -> list:
        """One PIL image per prompt, each from its own seeded generator, in batches."""
        import torch

        images: list[Image.Image] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            generators = [
                torch.Generator(self.device).manual_seed(int(s))
                for s in seeds[start : start + self.batch_size]
            ]
            output = self.pipeline(
                prompt=batch,
                height=size,
                width=size,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=generators,
                output_type="pil",
            )
            images.extend(output.images)
        return images


def _resized(image: Image.Image, size: int) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BILINEAR)


def _load_pipeline(model_id: str, torch_dtype: Any = None) -> Any:
    try:
        from diffusers import DiffusionPipeline
    except ImportError as error:
        raise ImportError(
            "the diffusers text-to-image stage needs diffusers: pip install 'milan-hf[diffusion]'"
        ) from error
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    return DiffusionPipeline.from_pretrained(model_id, **kwargs)


def load_text_to_image(spec: str = PROBE_WORLD, **kwargs: Any) -> TextToImage:
    """A text-to-image stage: "probe-world" (offline), "diffusers" (Stable Diffusion) or a
    diffusers model id / folder; ``kwargs`` go to the implementation's constructor."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"text-to-image spec must be 'probe-world' or a model id, got {spec!r}")
    if spec == PROBE_WORLD:
        return ProbeWorldTextToImage(**kwargs)
    model_id = DEFAULT_DIFFUSERS_MODEL if spec == "diffusers" else spec
    return DiffusersTextToImage(model_id, **kwargs)


def rendered_arrays(images: Sequence[Image.Image]) -> np.ndarray:
    """(n, H, W, 3) uint8 array of RGB images (all the same size)."""
    return np.stack([np.asarray(image.convert("RGB")) for image in images])
