"""Faithfulness: does a unit respond to images of its description (verification by synthesis)?

A description is a hypothesis about a unit. ``Verifier`` renders it (``milan_hf.text_to_image``:
images that show it and matched controls that do not), runs the described model on both and
scores the unit as exemplars do (the spatial maximum of its activation map). Two numbers per
(unit, description), as in CoSy (Kopf et al. 2024):

- ``faithfulness_auc``: AUC of the unit's scores on description images against controls
  (1: every image beats every control; 0.5: chance), ties counted half;
- ``faithfulness_ratio``: mean score on description images / mean score on controls (NaN when
  the controls' mean is not positive, where a ratio means nothing).

- ``contrastive_auc``: the same AUC over the pooled renders of every candidate checked for the
  unit (``Verifier.contrast``): a scene counts as a positive of a description when it shows
  it, as a negative when it shows none of it, whichever description it was rendered for.
  Own controls only hold what a description is not; the pool also holds what its rivals are,
  so a partial description ("red" for red on the left), an over-specific one or one operand
  of an OR scores below the whole. Probe world only (it knows what each scene shows); NaN
  with a stage that keeps no scenes, and for a description checked alone it equals the AUC.

A description the text-to-image stage cannot render gets NaN for all three, ``verifiable``
False and the reason. Every distinct description is rendered and forwarded once per layer,
for all of its units together; ``VerificationCost`` counts what that cost.

**Verification rerank** (Describe-and-Dissect's best-concept selection): among the ``top``
candidates of the PMI beam, choose the one with the lowest ``PMI rank + weight x activation
rank`` (activation rank: by contrastive AUC, else the AUC, best first; unrenderable
candidates rank last),
ties to the better PMI rank. With ``weight`` 1, candidate ``i`` (PMI rank ``i``) replaces the
PMI choice only when its activation rank is more than ``i`` places better
(``rerank_by_faithfulness``); the verification cost is ``top`` renders per unit instead of one.

**A no-concept description is tested too.** "No clear pattern" claims that nothing the
text-to-image stage can show drives the unit; it cannot be rendered, so it is tested through
its alternatives: the top ``filler_top`` concept candidates of the PMI beam are checked, and the
most faithful one with AUC ≥ ``LOW_FAITHFULNESS_AUC`` replaces the filler (``replace_filler``).
Where none does, the probe world's concept survey (``ConceptSurvey``: every single concept
rendered once per layer, on its own seed) proposes the ``SURVEY_FILLER_PROPOSALS`` concepts
whose images drive the unit most, checked like the beam's candidates on fresh renders;
otherwise the filler stands. Only
units whose PMI choice is filler pay for it, and the survey only where the beam found nothing.

**Rerank also composes.** A beam proposes one operand of an OR unit per candidate ("blue
regions", "red blobs"): each alone drives the unit, neither is the whole story. With
``compose`` on, the two most faithful single-concept candidates (AUC ≥
``LOW_FAITHFULNESS_AUC``, different concepts) are joined into the grammar's "a or b"
(``or_hypothesis``), rendered and checked; so are the compositions the concept survey points to
for the most faithful single concept ``a`` (``ConceptSurvey.compositions``): "a or b" for the
concept ``b`` that best separates the survey scenes without ``a`` by the unit's response (an
operand no candidate named, among the concepts the whole beam names: what the captioner saw in
the exemplars, so that a unit of a real network that also fires on static noise is not "a or
static"), and "a in r" for the region ``r`` that best separates the scenes with ``a`` (a gated
concept the beam named without its region); and each operand alone of the most faithful
candidate when it is an AND (the beam often adds a region or an attribute the unit does not
need). Then the most faithful of the candidates and these hypotheses, on one pool, replaces the
reranked choice when its contrastive AUC is above the choice's by more than
``COMPOSITION_MARGIN`` (0.05: a tie, or a gain within the noise of the renders, keeps the
choice; a choice that cannot be rendered is only replaced by a hypothesis). The rank sum alone
cannot do that: with weight 1 the second of two candidates never outranks the first, however
much more faithful ("large words on the left half", 0.77, against "large inscriptions", 1.0,
for a text unit). The pool keeps single-concept units single: half the images of "a or b" show b,
which an "a" unit ignores, so its AUC falls well below a's (1.0 → 0.77 for a red unit's "red or
blue"); for an OR unit, b's scenes fire among the negatives of "a", so each operand's AUC falls
instead, and the operands must each reach ``LOW_FAITHFULNESS_AUC`` first; a red unit's "red on
the left" meets red scenes on the right that fire. Composition needs candidates in the probe
world's grammar (the embedded captioner's); other candidates are never composed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import schema
from .text_to_image import RenderedDescription, TextToImage

FAITHFULNESS_AUC = "faithfulness_auc"
FAITHFULNESS_RATIO = "faithfulness_ratio"
CONTRASTIVE_AUC = "contrastive_auc"
VERIFIABLE = "verifiable"
VERIFY_REASON = "verify_reason"
#: Columns verification adds to the descriptions dataset and ``descriptions.csv``.
PMI_DESCRIPTION = schema.PMI_DESCRIPTION
VERIFICATION_COLUMNS = (FAITHFULNESS_AUC, FAITHFULNESS_RATIO, CONTRASTIVE_AUC, VERIFIABLE,
                        VERIFY_REASON, PMI_DESCRIPTION)  # fmt: skip
#: What each verification column means (the descriptions dataset card lists them).
VERIFICATION_COLUMN_MEANINGS = {
    FAITHFULNESS_AUC: "AUC of the unit's spatial-max activation on images of the description "
    "against controls (verification by synthesis; 0.5 chance)",
    FAITHFULNESS_RATIO: "mean activation on the description's images / on the controls",
    CONTRASTIVE_AUC: "the AUC on the pooled renders of every description checked for the unit "
    "(a rival's scenes count too)",
    VERIFIABLE: "whether the description could be rendered",
    VERIFY_REASON: "why not, when it could not",
    PMI_DESCRIPTION: "what PMI decoding chose, before verification replaced it",
}
#: Below this AUC the report flags a description as not faithful to its unit.
LOW_FAITHFULNESS_AUC = 0.75
DEFAULT_NUM_IMAGES = 16
DEFAULT_RERANK_TOP = 5
DEFAULT_RERANK_WEIGHT = 1.0
DEFAULT_FILLER_TOP = 5
#: Contrastive AUC by which a rival (another candidate, a composed hypothesis) must exceed the
#: reranked choice to replace it: a tie, or a gain within the noise of 16-image renders, keeps
#: the choice. Set on validation units (synthetic seed 500000,
#: ``scripts/choose_composition_margin.py``): rivals that made a description wrong or inexact
#: gained 0.032 or less; all but one that made it right or exact gained 0.108 or more (with
#: the current captioner: 0.000 or less, and all but one 0.082 or more).
COMPOSITION_MARGIN = 0.05
#: Images per concept (and as many controls) of ``ConceptSurvey``.
DEFAULT_SURVEY_IMAGES = 8
#: Concepts the survey proposes for a filler unit, each then checked on fresh renders. With 8
#: images the survey's best AUC is mostly selection noise (on the default run, 60 of 77 filler
#: units had a concept at >= 0.75 there, 11 confirmed on fresh renders, and for most of those
#: not the top one); 3 fresh checks at 16 images keep the chance that a unit driven by
#: nothing passes one near 2%.
SURVEY_FILLER_PROPOSALS = 3

#: images -> (images, units) spatial-max scores of every unit of one layer.
Scorer = Callable[[RenderedDescription, Sequence[Image.Image]], np.ndarray]


def verification_features() -> dict[str, Any]:
    """``datasets`` types of the verification columns."""
    from datasets import Value

    types = ("float32", "float32", "float32", "bool", "string", "string")
    return {name: Value(kind) for name, kind in zip(VERIFICATION_COLUMNS, types)}


def unverified_record(reason: str) -> dict[str, Any]:
    """The verification columns of a unit that was not checked (dead): NaN and the reason."""
    return {FAITHFULNESS_AUC: math.nan, FAITHFULNESS_RATIO: math.nan, CONTRASTIVE_AUC: math.nan,
            VERIFIABLE: False, VERIFY_REASON: reason, PMI_DESCRIPTION: None}  # fmt: skip


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(positive > negative) + 0.5 P(tie), exactly (Mann-Whitney); NaN without both."""
    positives, negatives = np.asarray(positives, float), np.asarray(negatives, float)
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def activation_ratio(images: Sequence[float], controls: Sequence[float]) -> float:
    control_mean = float(np.mean(controls)) if len(controls) else float("nan")
    if not control_mean > 0:
        return float("nan")
    return float(np.mean(images)) / control_mean


@dataclass
class Faithfulness:
    """One description of one unit, checked."""

    auc: float
    ratio: float
    verifiable: bool
    reason: str = ""
    #: AUC on the pooled renders of every candidate checked with it (``Verifier.contrast``);
    #: NaN when not pooled (alone, or a text-to-image stage without scenes).
    contrast_auc: float = math.nan

    @property
    def score(self) -> float:
        """What verification ranks by: the contrastive AUC where there is one, else the AUC
        against the description's own controls; -1 when it could not be rendered."""
        if not self.verifiable:
            return -1.0
        value = self.auc if math.isnan(self.contrast_auc) else self.contrast_auc
        return -1.0 if math.isnan(value) else value

    def record(self) -> dict[str, Any]:
        return {
            FAITHFULNESS_AUC: self.auc,
            FAITHFULNESS_RATIO: self.ratio,
            CONTRASTIVE_AUC: self.contrast_auc,
            VERIFIABLE: self.verifiable,
            VERIFY_REASON: self.reason,
        }


@dataclass
class VerificationCost:
    """What verification spent: descriptions and images rendered, images forwarded, seconds."""

    descriptions: int = 0
    images_rendered: int = 0
    forward_images: int = 0
    render_seconds: float = 0.0
    forward_seconds: float = 0.0
    units: int = 0

    def per_unit(self) -> dict[str, float]:
        units = max(1, self.units)
        return {
            "units": self.units,
            "images_rendered_per_unit": round(self.images_rendered / units, 2),
            "forward_images_per_unit": round(self.forward_images / units, 2),
            "seconds_per_unit": round((self.render_seconds + self.forward_seconds) / units, 4),
        }

    def add(self, other: VerificationCost) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def model_scorer(model: Any, layer: str, batch_size: int = 32) -> Scorer:
    """A ``Scorer`` running ``layer`` of a model (a ``VisionModel``, or anything
    ``load_vision_model`` takes) on images: each unit's spatial maximum, as for exemplars."""
    from .exemplars import LayerTaps
    from .vision_models import load_vision_model

    vision_model = load_vision_model(model)
    taps = LayerTaps(vision_model, [layer])
    parameter = next(vision_model.module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")

    def score(_rendered: RenderedDescription, images: Sequence[Image.Image]) -> np.ndarray:
        maxima = []
        with taps, torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                pixels = torch.stack([vision_model.transform(im.convert("RGB")) for im in chunk])
                maps = taps.run(pixels.to(device))[layer]
                maxima.append(maps.float().amax(dim=(2, 3)).cpu().numpy())
        return np.concatenate(maxima)

    return score


def expression_scorer(
    expressions: Sequence[Sequence[str]], resolution: int = 14, seed: int = 0
) -> Scorer:
    """A ``Scorer`` for units that compute known concept expressions (synthetic units): unit
    ``u``'s score on a probe-world scene is the maximum of its feature map
    (``synthetic_units.unit_feature_map``: the expression's mask pooled to ``resolution``,
    partial and noisy), as its exemplars were made. Needs the rendered scenes (probe world)."""
    from .probe_world.synthetic_units import expression_mask, unit_feature_map

    def score(rendered: RenderedDescription, images: Sequence[Image.Image]) -> np.ndarray:
        if len(rendered.scenes) != len(images):
            raise ValueError(
                "expression_scorer needs the probe world's scenes of every image; "
                f"got {len(rendered.scenes)} scenes for {len(images)} images"
            )
        rng = np.random.default_rng([seed, len(rendered.description)])
        scores = np.zeros((len(images), len(expressions)), dtype=np.float32)
        for i, scene in enumerate(rendered.scenes):
            for u, expression in enumerate(expressions):
                target = expression_mask(expression, scene)
                scores[i, u] = unit_feature_map(target, 1.0, resolution, rng).max()
        return scores

    return score


@dataclass
class _Scored:
    rendered: RenderedDescription
    images: np.ndarray | None = None  # (n, units)
    controls: np.ndarray | None = None


@dataclass
class Verifier:
    """Faithfulness of descriptions to the units of one layer (see the module docstring).

    Args:
        scorer: images -> (images, units) scores of the layer (``model_scorer``).
        text_to_image: renders descriptions (``load_text_to_image``).
        num_images: images per description (and as many controls).
        seed, image_size: passed to ``text_to_image.render``.
        render_cache: description -> rendering, shareable between verifiers of the same
            text-to-image stage and settings (e.g. one per synthetic unit).
    """

    scorer: Scorer
    text_to_image: TextToImage
    num_images: int = DEFAULT_NUM_IMAGES
    seed: int = 0
    image_size: int = 96
    cost: VerificationCost = field(default_factory=VerificationCost)
    render_cache: dict[str, RenderedDescription] = field(default_factory=dict, repr=False)
    _cache: dict[str, _Scored] = field(default_factory=dict, repr=False)
    # (expression, id(scene)) -> pixels of the scene that show the expression.
    _coverage: dict[tuple, int] = field(default_factory=dict, repr=False)

    def prepare(self, descriptions: Sequence[str]) -> None:
        """Render and score every description not seen yet, in one render call."""
        new = [d for d in dict.fromkeys(descriptions) if d not in self._cache]
        if not new:
            return
        to_render = [d for d in new if d not in self.render_cache]
        start = time.perf_counter()
        if to_render:
            rendered = self.text_to_image.render(
                to_render, self.num_images, self.seed, self.image_size
            )
            self.render_cache.update({item.description: item for item in rendered})
            self.cost.descriptions += len(to_render)
            self.cost.images_rendered += sum(
                len(item.images) + len(item.controls) for item in rendered
            )
        self.cost.render_seconds += time.perf_counter() - start
        start = time.perf_counter()
        for description in new:
            item = self.render_cache[description]
            scored = _Scored(item)
            if item.renderable:
                self.cost.forward_images += len(item.images) + len(item.controls)
                scores = self.scorer(item, list(item.images) + list(item.controls))
                scored.images, scored.controls = (
                    scores[: len(item.images)],
                    scores[len(item.images) :],
                )
            self._cache[item.description] = scored
        self.cost.forward_seconds += time.perf_counter() - start

    def check(self, unit: int, description: str) -> Faithfulness:
        """The faithfulness of ``description`` to ``unit`` (rendering it first if needed)."""
        self.prepare([description])
        scored = self._cache[description]
        if not scored.rendered.renderable:
            return Faithfulness(float("nan"), float("nan"), False, scored.rendered.reason)
        if not 0 <= unit < scored.images.shape[1]:
            raise ValueError(f"unit {unit} is out of range: the layer has "
                             f"{scored.images.shape[1]} units")  # fmt: skip
        images, controls = scored.images[:, unit], scored.controls[:, unit]
        return Faithfulness(roc_auc(images, controls), activation_ratio(images, controls), True)

    def check_units(self, units: Sequence[int], descriptions: Sequence[str]) -> list[Faithfulness]:
        """One check per (unit, description) pair, every new description rendered at once."""
        self.prepare(descriptions)
        self.cost.units += len(units)
        return [self.check(int(u), str(d)) for u, d in zip(units, descriptions)]

    def check_candidates(self, unit: int, descriptions: Sequence[str]) -> list[Faithfulness]:
        """The checks of one unit's competing descriptions, each with its contrastive AUC on
        the renders of all of them (``contrast``). Counts as one unit in the cost."""
        checks = self.check_units([unit] * len(descriptions), descriptions)
        self.cost.units -= len(descriptions) - 1
        for check, contrast in zip(checks, self.contrast(unit, descriptions)):
            check.contrast_auc = contrast
        return checks

    def contrast(self, unit: int, descriptions: Sequence[str]) -> list[float]:
        """Per description, the AUC of ``unit`` on every rendered scene of ``descriptions``
        (images and controls, pooled) that shows it against those that show none of it.

        A description's own controls only hold what it is not; the pool also holds what the
        other hypotheses are. A partial description ("red" for a unit of red on the left)
        then meets red scenes the unit ignores, an over-specific one ("red circles" for a red
        unit) meets red squares that fire among its negatives, and one operand of an OR meets
        the other operand's scenes. Scenes that show a description in fewer than
        ``min_expression_pixels`` pixels count on neither side. NaN for descriptions without
        a parsed expression and where the stage keeps no scenes (diffusers)."""
        pool = self.pooled_scenes(unit, descriptions)
        result = []
        for description in descriptions:
            expression = self._cache[description].rendered.expression
            if expression is None or not pool:
                result.append(math.nan)
                continue
            positives, negatives = self.split_by_expression(pool, expression)
            result.append(roc_auc([pool[k][1] for k in positives], [pool[k][1] for k in negatives]))
        return result

    def pooled_scenes(self, unit: int, descriptions: Sequence[str]) -> dict[int, tuple[Any, float]]:
        """id(scene) -> (scene, ``unit``'s score) over the images and controls of every
        rendered ``descriptions`` (controls shared between descriptions appear once); empty
        where the stage keeps no scenes."""
        self.prepare(descriptions)
        pool: dict[int, tuple[Any, float]] = {}
        for description in dict.fromkeys(descriptions):
            scored = self._cache[description]
            rendered = scored.rendered
            if not rendered.renderable or len(rendered.scenes) != (
                len(scored.images) + len(scored.controls)
            ):
                continue
            scores = np.concatenate([scored.images[:, unit], scored.controls[:, unit]])
            for scene, value in zip(rendered.scenes, scores):
                pool.setdefault(id(scene), (scene, float(value)))
        return pool

    def split_by_expression(
        self, pool: dict[int, tuple[Any, float]], expression: tuple
    ) -> tuple[list[int], list[int]]:
        """The keys of the pool's scenes where ``expression`` shows (at least
        ``min_expression_pixels``) and of those where none of it does; scenes in between
        count on neither side."""
        from .probe_world.synthetic_units import expression_mask
        from .text_to_image import min_expression_pixels

        positives, negatives = [], []
        for key, (scene, _) in pool.items():
            cache_key = (expression, key)
            if cache_key not in self._coverage:
                self._coverage[cache_key] = int(expression_mask(expression, scene).sum())
            covered = self._coverage[cache_key]
            if covered >= min_expression_pixels(scene.image.shape[0]):
                positives.append(key)
            elif covered == 0:
                negatives.append(key)
        return positives, negatives


def rerank_by_faithfulness(
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    weight: float = DEFAULT_RERANK_WEIGHT,
) -> int:
    """Index of the chosen candidate: lowest ``PMI rank + weight x activation rank``.

    ``candidates`` are in PMI order (best first) with one check each. Activation rank: by
    ``Faithfulness.score`` (the contrastive AUC where there is one), best first (ties share the
    better rank; unrenderable candidates rank after every rendered one). Ties of the sum go to
    the better PMI rank, so nothing verified keeps the PMI choice.
    """
    if len(candidates) != len(checks) or not candidates:
        raise ValueError(f"need one check per candidate, got {len(candidates)} candidates and "
                         f"{len(checks)} checks")  # fmt: skip
    aucs = [c.score for c in checks]
    activation_rank = [sum(other > auc for other in aucs) for auc in aucs]
    combined = [pmi + weight * act for pmi, act in enumerate(activation_rank)]
    return min(range(len(candidates)), key=lambda i: (combined[i], i))


def replace_filler(
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    is_filler: Callable[[str], bool],
    threshold: float = LOW_FAITHFULNESS_AUC,
) -> int:
    """Index of the chosen candidate when the PMI choice (index 0) names no concept: the most
    faithful concept candidate (by ``Faithfulness.score``) whose AUC against its own controls
    reaches ``threshold`` (ties to the better PMI rank), else 0 (the filler stands: nothing
    renderable was shown to drive the unit)."""
    if len(candidates) != len(checks) or not candidates:
        raise ValueError(f"need one check per candidate, got {len(candidates)} candidates and "
                         f"{len(checks)} checks")  # fmt: skip
    verified = [
        (check.score, -index)
        for index, (text, check) in enumerate(zip(candidates, checks))
        if not is_filler(text) and check.verifiable and check.auc >= threshold
    ]
    return -max(verified)[1] if verified else 0


def or_hypothesis(
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    threshold: float = LOW_FAITHFULNESS_AUC,
) -> str | None:
    """The grammar's "a or b" for the two most faithful single-concept candidates that name
    different concepts with AUC >= ``threshold``; None when there are not two such, or the
    candidates are outside the probe world's grammar."""
    operands = faithful_single_concepts(candidates, checks, threshold)[:2]
    if len(operands) < 2:
        return None
    return expression_wording(("or", *operands))


def faithful_single_concepts(
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    threshold: float = LOW_FAITHFULNESS_AUC,
) -> list[str]:
    """The concepts of the single-concept candidates (regions aside) whose AUC reaches
    ``threshold``, most faithful (own AUC) first, each once."""
    from .probe_world import concepts as C
    from .text_to_image import CannotRender, parse_description

    if len(candidates) != len(checks):
        raise ValueError(f"need one check per candidate, got {len(candidates)} candidates and "
                         f"{len(checks)} checks")  # fmt: skip
    ranked = sorted(
        (index for index, check in enumerate(checks)
         if check.verifiable and not math.isnan(check.auc) and check.auc >= threshold),
        key=lambda index: (-checks[index].auc, index),
    )  # fmt: skip
    operands: list[str] = []
    for index in ranked:
        try:
            expression = parse_description(candidates[index])
        except CannotRender:
            continue
        if expression[0] != "concept" or C.concept_family(expression[1]) == C.REGION:
            continue
        if expression[1] not in operands:
            operands.append(expression[1])
    return operands


def expression_wording(expression: Sequence[str]) -> str | None:
    """The first of the grammar's wordings of a concept expression that reads back as it
    (``parse_description``; operand order aside for AND and OR), or None. Every grammar
    wording is defect-free."""
    from .probe_world.phrasing import phrase
    from .text_to_image import CannotRender, parse_description

    expression = tuple(expression)
    wanted = {expression}
    if expression[0] in ("and", "or"):
        wanted.add((expression[0], *reversed(expression[1:])))
    try:
        wordings = phrase(expression, count=8, rng=np.random.default_rng(0))
    except ValueError:
        return None
    for wording in wordings:
        try:
            if parse_description(wording) in wanted:
                return wording
        except CannotRender:
            continue
    return None


class ConceptSurvey:
    """Every single concept of the probe world rendered for one layer (``num_images`` images
    and as many controls each, every unit scored at once): where a unit fires beyond what a
    candidate says, which no candidate of the beam may name (the other operand of an OR, the
    region a colour is gated to).

    ``compositions(unit, concept)`` proposes, for a unit whose most faithful candidate names
    ``concept`` alone: ``concept or b`` for the concept ``b`` that best separates the survey
    scenes *without* ``concept`` (AUC >= ``threshold``, at least ``min_scenes`` scenes on
    each side), and ``concept in r`` for the region ``r`` that best separates the scenes with
    ``concept`` by where it lies. Proposals only: ``composed_choice`` renders and keeps one
    when it beats every candidate contrastively. ``best_concepts`` proposes single concepts
    for a unit whose beam names nothing faithful (the filler test). Probe world only (it needs
    the scenes).
    """

    def __init__(
        self,
        verifier: Verifier,
        num_images: int = DEFAULT_SURVEY_IMAGES,
        render_cache: dict[str, RenderedDescription] | None = None,
        threshold: float = LOW_FAITHFULNESS_AUC,
        min_scenes: int = 3,
    ) -> None:
        from .probe_world import concepts as C

        stamps = tuple(getattr(verifier.text_to_image, "stamps", ()))
        names = [name for name in C.all_concepts(stamps) if C.concept_family(name) != C.REGION]
        # wording -> the concept it renders (parsed once, not per unit)
        self.concepts = {w: n for n in names if (w := expression_wording(("concept", n)))}
        self.wordings = list(self.concepts)
        self.regions = [n for n in C.all_concepts() if C.concept_family(n) == C.REGION]
        # Same scorer and cost, its own renders (another seed): what it selects out of dozens
        # of concepts is then checked on fresh images, not on the ones it was selected by.
        self.verifier = Verifier(
            verifier.scorer, verifier.text_to_image, num_images, verifier.seed + 1,
            verifier.image_size, cost=verifier.cost,
            render_cache={} if render_cache is None else render_cache,
        )  # fmt: skip
        self.threshold, self.min_scenes = threshold, min_scenes

    def best_concepts(self, unit: int, count: int = 1, exclude: Sequence[str] = ()) -> list[str]:
        """Wordings of the ``count`` single concepts whose survey images drive ``unit`` most
        (AUC against their controls >= the threshold), best first; ``exclude``: concept names
        already proposed. Candidates for a unit whose beam names nothing faithful."""
        self.verifier.prepare(self.wordings)
        scored = []
        for wording, concept in self.concepts.items():
            check = self.verifier.check(unit, wording)
            if check.verifiable and check.auc >= self.threshold and concept not in exclude:
                scored.append((-check.auc, wording))
        return [wording for _, wording in sorted(scored)[:count]]

    def compositions(
        self, unit: int, concept: str, partners: Collection[str] | None = None
    ) -> list[str]:
        """Wordings of the compositions of ``concept`` the survey points to (may be empty);
        ``partners``: the concepts an OR may join it with (None: any)."""
        pool = self.verifier.pooled_scenes(unit, self.wordings)
        if not pool:
            return []
        present, absent = self.verifier.split_by_expression(pool, ("concept", concept))
        found = []
        # Where it fires without the concept: the other operand of an OR.
        rest = {key: pool[key] for key in absent}
        others = sorted({name for scene, _ in rest.values() for name in scene.masks} - {concept})
        others = [name for name in others if partners is None or name in partners]
        best = self._best(rest, [("concept", name) for name in others])
        if best is not None:
            found.append(("or", concept, best[1]))
        # Where the concept lies when it fires: its region (negatives show it elsewhere).
        holding = {key: pool[key] for key in present}
        best = self._best(holding, [("and", concept, region) for region in self.regions])
        if best is not None:
            found.append(best)
        return [w for w in map(expression_wording, found) if w is not None]

    def _best(self, pool: dict[int, tuple[Any, float]], expressions: list[tuple]) -> tuple | None:
        """The expression whose scenes in ``pool`` score highest against those without it
        (AUC), when it reaches the threshold with ``min_scenes`` on each side."""
        best, best_auc = None, self.threshold
        for expression in expressions:
            positives, negatives = self.verifier.split_by_expression(pool, expression)
            if min(len(positives), len(negatives)) < self.min_scenes:
                continue
            auc = roc_auc([pool[k][1] for k in positives], [pool[k][1] for k in negatives])
            if auc > best_auc:
                best, best_auc = expression, auc
        return best


def filler_proposals(
    survey: ConceptSurvey,
    unit: int,
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    count: int = SURVEY_FILLER_PROPOSALS,
) -> list[str]:
    """The survey's ``count`` most driving concepts for a unit whose candidates were all
    filler or unfaithful, leaving out concepts a candidate already checked alone: one the beam
    only placed or composed ("birds in the upper left") is still worth checking by itself."""
    checked_alone = faithful_single_concepts(candidates, checks, threshold=0.0)
    return survey.best_concepts(unit, count, exclude=checked_alone)


def composition_hypotheses(
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    survey: ConceptSurvey | None = None,
    unit: int | None = None,
    partners: Collection[str] | None = None,
) -> list[str]:
    """The hypotheses worth checking for one unit that no candidate states: the "a or b" of
    its two most faithful single-concept candidates (``or_hypothesis``), each operand alone of
    the most faithful candidate when it is an AND ("red" for "red on the left", "circles" and
    "red" for "red circles": the beam often adds a region or an attribute the unit does not
    need) and, with a ``survey``, what the survey points to for the most faithful single
    concept (``ConceptSurvey.compositions``, an OR only with ``partners``: the concepts the
    unit's whole beam names)."""
    from .probe_world import concepts as C
    from .text_to_image import CannotRender, parse_description

    hypotheses = [or_hypothesis(candidates, checks)]
    verified = [i for i, check in enumerate(checks) if check.verifiable]
    if verified:
        try:
            expression = parse_description(candidates[max(verified, key=lambda i: checks[i].score)])
        except CannotRender:
            expression = ()
        if expression and expression[0] == "and":
            hypotheses += [expression_wording(("concept", name)) for name in expression[1:]
                           if C.concept_family(name) != C.REGION]  # fmt: skip
    singles = faithful_single_concepts(candidates, checks)
    if survey is not None and singles:
        hypotheses += survey.compositions(int(unit), singles[0], partners)
    return [h for h in dict.fromkeys(hypotheses) if h is not None and h not in candidates]


def composed_choice(
    verifier: Verifier,
    unit: int,
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    margin: float = COMPOSITION_MARGIN,
    hypotheses: Sequence[str] | None = None,
    chosen: int | None = None,
) -> tuple[str, Faithfulness] | None:
    """What replaces the current choice, and its check, or None (see the module docstring).

    ``hypotheses``: descriptions no candidate states (default: the "a or b" of
    ``or_hypothesis``; ``composition_hypotheses``). All are checked on one pool with the
    candidates (``Verifier.contrast`` where the stage keeps scenes, else each one's own AUC).
    With ``chosen`` (the index of the reranked choice) the most faithful of the candidates and
    hypotheses replaces it when its score is above the choice's by more than ``margin``;
    without, only a hypothesis can, when above every candidate's by more than ``margin``."""
    best = best_composition(verifier, unit, candidates, checks, hypotheses, chosen)
    if best is None:
        return None
    text, check, gain = best
    return (text, check) if gain > margin else None


def best_composition(
    verifier: Verifier,
    unit: int,
    candidates: Sequence[str],
    checks: Sequence[Faithfulness],
    hypotheses: Sequence[str] | None = None,
    chosen: int | None = None,
) -> tuple[str, Faithfulness, float] | None:
    """The most faithful rival of the current choice on the pool of the candidates and the
    ``hypotheses`` (default: ``or_hypothesis``), its check and its gain: its score minus the
    ``chosen`` candidate's (None, or a choice that cannot be rendered: only hypotheses
    compete, against the best candidate). Ties go to the earlier (PMI order, then
    hypotheses). None when nothing competes."""
    if hypotheses is None:
        hypotheses = [h for h in [or_hypothesis(candidates, checks)] if h is not None]
    hypotheses = [h for h in dict.fromkeys(hypotheses) if h not in candidates]
    if not hypotheses and chosen is None:
        return None
    texts = [*candidates, *hypotheses]
    pooled = verifier.check_candidates(unit, texts)
    verifier.cost.units -= 1  # the unit was counted with its candidates
    if chosen is not None and not pooled[chosen].verifiable:
        chosen = None  # nothing speaks against a choice that cannot be rendered
        if not hypotheses:
            return None
    if chosen is None:
        reference = max(c.score for c in pooled[: len(candidates)])
        rivals = range(len(candidates), len(texts))
    else:
        reference = pooled[chosen].score
        rivals = [i for i in range(len(texts)) if i != chosen]
    ranked = [(pooled[i].score, -i) for i in rivals if pooled[i].verifiable]
    if not ranked:
        return None
    score, index = max(ranked)
    return texts[-index], pooled[-index], score - reference


def beam_candidates(
    encoded: dict[str, torch.Tensor],
    captioner: Any,
    processor: Any,
    top: int = DEFAULT_RERANK_TOP,
    distinct: Callable[[str], Any] | None = None,
    keep: Callable[[str], bool] | None = None,
    keep_best: bool = False,
    **generation: Any,
) -> list[list[dict[str, Any]]]:
    """Per unit, the ``top`` distinct candidates of the PMI beam, best PMI score first: records
    with ``description``, ``score``, ``captioner_log_prob`` and ``prior_log_prob``.

    ``distinct`` (text -> key) keeps only the best candidate per key, e.g. the set of concepts
    a description names, so that the candidates are different hypotheses rather than
    paraphrases of one (a beam's top candidates mostly are). ``keep`` (text -> bool) drops
    candidates before that, e.g. ill-formed ones, so a well-formed paraphrase stands in; a
    unit none of whose beam ``keep`` accepts has no candidate, or with ``keep_best`` its best
    one (for callers with no describe choice of their own to fall back on)."""

    generation = {key: value for key, value in generation.items() if value is not None}
    with torch.inference_mode():
        output = captioner.generate(
            exemplar_features=encoded["exemplar_features"],
            exemplar_mask=encoded["exemplar_mask"],
            **generation,
        )
    units, beams, length = output.beam_sequences.shape
    texts = processor.batch_decode(output.beam_sequences.reshape(units * beams, length))
    columns = {
        schema.SCORE: output.beam_scores,
        schema.CAPTIONER_LOG_PROB: output.beam_captioner_log_probs,
        schema.PRIOR_LOG_PROB: output.beam_prior_log_probs,
    }
    columns = {k: None if v is None else v.float().cpu() for k, v in columns.items()}
    result = []
    for unit in range(units):
        scores = columns[schema.SCORE][unit]
        ranked: dict[str, dict[str, Any]] = {}
        usable = [
            beam for beam in torch.argsort(scores, descending=True, stable=True).tolist()
            if scores[beam] != float("-inf") and texts[unit * beams + beam].strip()
        ]  # fmt: skip
        for beam in usable:
            text = texts[unit * beams + beam]
            key = distinct(text) if distinct is not None else text
            if key not in ranked and (keep is None or keep(text)):
                ranked[key] = _beam_record(text, columns, unit, beam)
        if not ranked and keep_best and usable:
            text = texts[unit * beams + usable[0]]
            ranked[text] = _beam_record(text, columns, unit, usable[0])
        result.append(list(ranked.values())[:top])
    return result


def _beam_record(text: str, columns: dict[str, Any], unit: int, beam: int) -> dict[str, Any]:
    return {schema.DESCRIPTION: text} | {
        name: None if values is None else float(values[unit, beam])
        for name, values in columns.items()
    }


def hypothesis_key(description: str) -> Any:
    """Candidates that name the same concepts are one hypothesis (paraphrases), as are all
    no-concept fillers; a description naming none of the probe world's concepts (another
    captioner's vocabulary) is its own."""
    from .probe_world.phrasing import is_filler, named_concepts

    if is_filler(description):
        return "no concept"
    return frozenset(named_concepts(description)) or description


@dataclass
class VerificationSettings:
    """How ``describe(verify=...)`` checks descriptions (see the module docstring).

    Attributes:
        text_to_image: "probe-world", a diffusers model id, or a ``TextToImage``.
        num_images: images per description, and as many controls.
        rerank_top: 0 checks the PMI choice only; n > 1 reranks the top n candidates of the
            PMI beam by ``PMI rank + rerank_weight x activation rank``.
        rerank_weight: weight of the activation rank.
        filler_top: when the PMI choice names no concept, this many concept candidates of the
            beam are checked and the most faithful with AUC >= ``LOW_FAITHFULNESS_AUC``
            replaces it (0: the filler is kept unchecked).
        compose: with ``rerank_top``, also check the "a or b" of the two most faithful
            single-concept candidates (``or_hypothesis``, ``composed_choice``).
        image_size: side of the rendered images (default: the model's input size).
        seed: of the renders.
    """

    text_to_image: Any = "probe-world"
    num_images: int = DEFAULT_NUM_IMAGES
    rerank_top: int = 0
    rerank_weight: float = DEFAULT_RERANK_WEIGHT
    filler_top: int = DEFAULT_FILLER_TOP
    compose: bool = True
    image_size: int | None = None
    seed: int = 0
    _stage: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_images < 2:
            raise ValueError(f"verification needs num_images >= 2, got {self.num_images}")
        if self.rerank_top < 0 or self.rerank_top == 1:
            raise ValueError(f"verify rerank top must be 0 (off) or >= 2, got {self.rerank_top}")
        if self.filler_top < 0:
            raise ValueError(f"filler_top must be >= 0, got {self.filler_top}")

    def fingerprint(self) -> dict[str, Any]:
        """What the verification columns depend on (a resumed run must match it)."""
        stage = self.text_to_image
        return {
            "text_to_image": stage if isinstance(stage, str) else getattr(stage, "name", "?"),
            "num_images": self.num_images,
            "rerank_top": self.rerank_top,
            "rerank_weight": self.rerank_weight,
            "filler_top": self.filler_top,
            "compose": self.compose,
            "image_size": self.image_size,
            "seed": self.seed,
        }

    def stage(self) -> TextToImage:
        if self._stage is None:
            from .text_to_image import load_text_to_image

            stage = self.text_to_image
            self._stage = load_text_to_image(stage) if isinstance(stage, str) else stage
        return self._stage


def verify_layer(
    settings: VerificationSettings,
    model: Any,
    layer: str,
    exemplars: Any,
    described: dict[int, dict[str, Any]],
    captioner: Any,
    processor: Any,
    generation: dict[str, Any],
    progress: bool = False,
) -> tuple[dict[int, dict[str, Any]], VerificationCost]:
    """``described`` (row index -> description record of ``exemplars``, one layer's live
    units) with the verification columns added and, with ``rerank_top``, the description
    chosen by verification rerank or by the filler test (``pmi_description`` keeps the PMI
    choice)."""
    from .probe_world.phrasing import description_defects, is_filler, named_concepts

    size = settings.image_size or int(model.input_size[0])
    verifier = Verifier(model_scorer(model, layer), settings.stage(), settings.num_images,
                        settings.seed, size)  # fmt: skip
    rows = sorted(described)
    units = [int(u) for u in exemplars.select(rows)[schema.UNIT]]
    # Rerank: every unit's top candidates; otherwise only filler units' concept candidates.
    own = {i: {name: described[row][name] for name in schema.DESCRIPTION_COLUMNS[2:]}
           for i, row in enumerate(rows)}  # fmt: skip
    if settings.rerank_top:
        beamed = list(range(len(rows)))
    else:
        beamed = [i for i in own if settings.filler_top and is_filler(own[i][schema.DESCRIPTION])]
    candidate_lists = {i: [own[i]] for i in own}
    seen: dict[int, set[str]] = {}
    encoded = None
    if beamed:
        from .inference import collect_slots, encode_exemplar_sets

        chosen_rows = exemplars.select([rows[i] for i in beamed])
        encoded = encode_exemplar_sets(collect_slots(chosen_rows), captioner, processor)
        # The whole beam, one candidate per hypothesis (paraphrases are one), well-formed
        # only; the describe choice stays first (PMI rank 0), whatever the beam's order.
        beams = beam_candidates(
            encoded,
            captioner,
            processor,
            10**6,
            hypothesis_key,
            lambda text: not description_defects(text),
            **generation,
        )
        for i, beam in zip(beamed, beams):
            # What the captioner saw in the exemplars: the concepts of its whole beam (the
            # partners a survey-proposed OR may take).
            seen[i] = set().union(*(named_concepts(c[schema.DESCRIPTION]) for c in beam))
            first = hypothesis_key(own[i][schema.DESCRIPTION])
            others = [c for c in beam if hypothesis_key(c[schema.DESCRIPTION]) != first]
            if settings.rerank_top:
                candidate_lists[i] = [own[i], *others[: settings.rerank_top - 1]]
            else:
                concepts = [c for c in others if not is_filler(c[schema.DESCRIPTION])]
                candidate_lists[i] = [own[i], *concepts[: settings.filler_top]]
    texts = [c[schema.DESCRIPTION] for lst in candidate_lists.values() for c in lst]
    _prepare(verifier, texts, f"verifying {layer}: candidates", progress)
    checked = {}
    for position, unit in enumerate(units):
        texts = [c[schema.DESCRIPTION] for c in candidate_lists[position]]
        checked[position] = verifier.check_candidates(unit, texts)
    from .inference import resolved_pmi_weight
    from .text_to_image import PROBE_WORLD

    pmi_weight = resolved_pmi_weight(captioner, generation)
    # The concept survey needs the scenes (a diffusers stage keeps none); made when needed.
    keeps_scenes = getattr(verifier.text_to_image, "name", None) == PROBE_WORLD
    survey = None
    if settings.filler_top and keeps_scenes:
        # Filler units whose beam names nothing faithful (under rerank too): the survey's most
        # driving concepts are candidates too, checked on fresh renders like the others.
        unresolved = [
            position for position in beamed
            if is_filler(candidate_lists[position][0][schema.DESCRIPTION])
            and replace_filler([c[schema.DESCRIPTION] for c in candidate_lists[position]],
                               checked[position], is_filler) == 0
        ]  # fmt: skip
        if unresolved:
            encoded_row = {position: row for row, position in enumerate(beamed)}
            survey = ConceptSurvey(verifier)
            _prepare(survey.verifier, survey.wordings, f"verifying {layer}: concept survey",
                     progress)  # fmt: skip
            for position in unresolved:
                texts = [c[schema.DESCRIPTION] for c in candidate_lists[position]]
                for wording in filler_proposals(survey, units[position], texts,
                                                checked[position]):  # fmt: skip
                    candidate_lists[position].append(description_scores(
                        captioner, processor, encoded, encoded_row[position], wording,
                        pmi_weight,
                    ))  # fmt: skip
                texts = [c[schema.DESCRIPTION] for c in candidate_lists[position]]
                checked[position] = verifier.check_candidates(units[position], texts)
                verifier.cost.units -= 1  # counted with its first candidates
    reranked = {
        position: rerank_by_faithfulness([c[schema.DESCRIPTION] for c in candidate_lists[position]],
                                         checked[position], settings.rerank_weight)
        for position in checked
    } if settings.rerank_top else {}  # fmt: skip
    composed: dict[int, tuple[str, Faithfulness]] = {}
    if settings.rerank_top and settings.compose:
        if survey is None and keeps_scenes:
            survey = ConceptSurvey(verifier)
        if survey is not None:
            _prepare(survey.verifier, survey.wordings, f"verifying {layer}: concept survey",
                     progress)  # fmt: skip
        hypotheses = {
            position: composition_hypotheses(
                [c[schema.DESCRIPTION] for c in candidate_lists[position]], checked[position],
                survey, unit, seen.get(position, set()),
            )
            for position, unit in enumerate(units)
        }  # fmt: skip
        verifier.prepare([h for found in hypotheses.values() for h in found])  # one render call
        for position, unit in enumerate(units):
            texts = [c[schema.DESCRIPTION] for c in candidate_lists[position]]
            found = composed_choice(verifier, unit, texts, checked[position],
                                    hypotheses=hypotheses[position],
                                    chosen=reranked[position])  # fmt: skip
            # A filler PMI choice is a tested claim ("nothing drives it"): only a concept that
            # passes the filler test replaces it, never one merely less unfaithful than others.
            if found is not None and (not is_filler(texts[0]) or (
                found[1].verifiable and found[1].auc >= LOW_FAITHFULNESS_AUC
            )):  # fmt: skip
                composed[position] = found
    result = {}
    for position, row in enumerate(rows):
        record = dict(described[row])
        candidates, checks = candidate_lists[position], checked[position]
        texts = [c[schema.DESCRIPTION] for c in candidates]
        if position in composed:
            text, check = composed[position]
            # A candidate keeps its beam scores; a hypothesis is scored here (composition runs
            # with rerank only, where every unit is beamed: row = position).
            choice = (candidates[texts.index(text)] if text in texts else description_scores(
                captioner, processor, encoded, position, text, pmi_weight))  # fmt: skip
        else:
            chosen = reranked[position] if settings.rerank_top else 0
            if is_filler(texts[0]):  # the filler test, whether or not reranked
                chosen = replace_filler(texts, checks, is_filler)
            choice, check = candidates[chosen], checks[chosen]
        result[row] = {**record, PMI_DESCRIPTION: record[schema.DESCRIPTION],
                       **choice, **check.record()}  # fmt: skip
    return result, verifier.cost


def _prepare(verifier: Verifier, texts: Sequence[str], desc: str, progress: bool) -> None:
    """``verifier.prepare`` in chunks, with a progress bar (rendering is the slow part)."""
    from tqdm.auto import tqdm

    texts = list(dict.fromkeys(texts))
    for start in tqdm(range(0, len(texts), 8), desc=desc, unit="x8 descriptions",
                      disable=not progress or not texts):  # fmt: skip
        verifier.prepare(texts[start : start + 8])


def description_scores(
    captioner: Any,
    processor: Any,
    encoded: dict[str, torch.Tensor],
    index: int,
    description: str,
    pmi_weight: float,
) -> dict[str, Any]:
    """A description record for a text the beam did not produce (a composed hypothesis):
    its log p(d|E) for exemplar set ``index`` of ``encoded``, log p(d), and the PMI score
    ``log p(d|E) - pmi_weight x log p(d)``."""

    input_ids = processor(text=[description])["input_ids"]
    features = encoded["exemplar_features"][index : index + 1]
    mask = encoded.get("exemplar_mask")
    mask = None if mask is None else mask[index : index + 1]
    with torch.inference_mode():
        captioner_log_prob = float(captioner.sequence_log_probs(input_ids, features, mask)[0])
        prior = getattr(captioner, "prior", None)
        prior_log_prob = None if prior is None else float(prior.sequence_log_probs(input_ids)[0])
    score = captioner_log_prob - pmi_weight * (prior_log_prob or 0.0)
    return {schema.DESCRIPTION: description, schema.SCORE: score,
            schema.CAPTIONER_LOG_PROB: captioner_log_prob,
            schema.PRIOR_LOG_PROB: prior_log_prob}  # fmt: skip
