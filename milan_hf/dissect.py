"""Describe-and-Dissect (DnD, Bai et al. 2024): a second describer behind ``describe``.

``describe(..., method="dissect")`` describes a unit in five stages, each a Hub model id with a
documented default, loaded on first use through ``transformers``:

1. **Attention crops**: each exemplar cropped to where the unit fires. The exemplar's mask (or
   an activation map, thresholded by Otsu's method) is split into connected components; a box
   around the largest ones (those at least half the largest's area), padded, is the crop.
2. **Captions** of the crops by an image-to-text model
   (:data:`DEFAULT_IMAGE_CAPTIONER`, BLIP base).
3. **Candidate concepts**: an instruction-tuned causal LM (:data:`DEFAULT_SUMMARIZER`, any Hub
   id with a chat template) summarises the captions as a numbered list
   (:func:`parse_numbered_list` reads it; when it yields nothing the captions themselves are
   the candidates).
4. **Images of each candidate** from the text-to-image stage (``milan_hf.text_to_image``).
5. **Best candidate** by DnD's scoring: every candidate's images go through the described
   model; all of them are ranked by the unit's activation (spatial max, as for exemplars), and
   a candidate's activation score is ``1 − RMS(ranks of its top-5 images) / #images`` (DnD's
   "top-k squared mean" of ranks, scaled to (0, 1], higher is better). With a CLIP id, the
   candidates are also ranked by the mean CLIP image similarity of their images to the
   exemplar crops, and the candidate with the lowest sum of the two ranks wins (ties: the
   higher activation score). A candidate the text-to-image stage cannot render is never chosen.

Offline (:meth:`DissectSettings.offline`, the default for the embedded run), stages 1–3 are
replaced by the embedded MILAN captioner's PMI beam (its distinct candidates, best first) and
stage 4 is the probe world, so the whole describer runs with no network.

The ``score`` column of a dissect run is the chosen candidate's activation score; its
``captioner_log_prob``/``prior_log_prob`` are the beam's for offline candidates, else NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata

from . import schema
from .vision_models import VisionModel

#: Image-to-text model of stage 2 (~990 MB of safetensors).
DEFAULT_IMAGE_CAPTIONER = "Salesforce/blip-image-captioning-base"
#: Instruction-tuned causal LM of stage 3 (~990 MB in bfloat16).
DEFAULT_SUMMARIZER = "Qwen/Qwen2.5-0.5B-Instruct"
#: A CLIP model for the image-similarity part of stage 5 (~600 MB); off unless given.
SUGGESTED_CLIP = "openai/clip-vit-base-patch32"
#: Stage 4 with the Hub: a diffusers pipeline, Stable Diffusion v1.5 by default (~2.7 GB of
#: fp16 safetensors; ``milan_hf.text_to_image.DEFAULT_DIFFUSERS_MODEL``).
DEFAULT_TEXT_TO_IMAGE = "diffusers"
#: Stage 4 offline: scenes of the probe world.
OFFLINE_TEXT_TO_IMAGE = "probe-world"
#: ``image_captioner`` value that takes candidates from the embedded MILAN captioner's beam.
EMBEDDED_BEAM = "embedded"
METHOD = "dissect"

_SYSTEM_PROMPT = "You name the visual concept a neuron of a vision model detects."
_USER_PROMPT = (
    "These are captions of the image regions that most activate one neuron:\n{captions}\n\n"
    "List the {count} concepts (each one to four words) these regions most have in common, "
    "most common first, as a numbered list with nothing else."
)


@dataclass
class DissectSettings:
    """The models and sizes of a Describe-and-Dissect run.

    Args:
        image_captioner: image-to-text Hub id or directory; :data:`EMBEDDED_BEAM` takes the
            candidates from the MILAN captioner's PMI beam instead (no crops, captions or LM).
        summarizer: causal LM Hub id or directory with a chat template.
        text_to_image: a ``milan_hf.text_to_image`` spec ("probe-world", "diffusers" or a
            diffusers model id) or a loaded ``TextToImage``.
        clip: CLIP Hub id or directory for the image-similarity score; None: activation only.
        num_candidates: candidate concepts per unit.
        images_per_candidate: images rendered per candidate.
        crop_padding: padding of each attention crop, as a fraction of its box's side.
        top_ranks: how many of a candidate's best-ranked images its activation score reads.
        seed: seed of the text-to-image stage.
    """

    image_captioner: str = DEFAULT_IMAGE_CAPTIONER
    summarizer: str | None = DEFAULT_SUMMARIZER
    text_to_image: Any = DEFAULT_TEXT_TO_IMAGE
    clip: str | None = None
    num_candidates: int = 5
    images_per_candidate: int = 8
    crop_padding: float = 0.1
    top_ranks: int = 5
    seed: int = 0
    generation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def offline(cls, **overrides: Any) -> DissectSettings:
        """Candidates from the embedded captioner's beam, images from the probe world."""
        settings = {"image_captioner": EMBEDDED_BEAM, "summarizer": None,
                    "text_to_image": OFFLINE_TEXT_TO_IMAGE, **overrides}  # fmt: skip
        if settings["image_captioner"] != EMBEDDED_BEAM and not settings["summarizer"]:
            settings["summarizer"] = DEFAULT_SUMMARIZER  # captions need summarising
        return cls(**settings)

    def check(self) -> DissectSettings:
        for name in ("num_candidates", "images_per_candidate", "top_ranks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"dissect {name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.crop_padding <= 1.0:
            raise ValueError(f"dissect crop_padding must be in [0, 1], got {self.crop_padding!r}")
        if self.image_captioner != EMBEDDED_BEAM and not self.summarizer:
            raise ValueError(
                f"dissect with the image captioner {self.image_captioner!r} needs a summarizer "
                "(a causal LM id); or use image_captioner='embedded' for the MILAN beam"
            )
        return self

    def models(self) -> dict[str, Any]:
        """Which models produce the descriptions (recorded with the run)."""
        text_to_image = self.text_to_image
        if text_to_image == DEFAULT_TEXT_TO_IMAGE:  # name the model it loads
            from .text_to_image import DEFAULT_DIFFUSERS_MODEL

            text_to_image = DEFAULT_DIFFUSERS_MODEL
        elif not isinstance(text_to_image, str):
            text_to_image = getattr(text_to_image, "name", type(text_to_image).__name__)
        stages = {"image_captioner": self.image_captioner, "text_to_image": text_to_image}
        if self.image_captioner != EMBEDDED_BEAM:
            stages["summarizer"] = self.summarizer
        if self.clip:
            stages["clip"] = self.clip
        return stages

    def fingerprint(self) -> dict[str, Any]:
        """Everything the descriptions depend on, JSON-ready (for resuming)."""
        record = asdict(self)
        record.update(self.models())
        record.pop("generation")
        return record

    def described_by(self) -> str:
        """One line for the ``described_by`` column: the method and its models."""
        return f"{METHOD} (" + "; ".join(f"{k}: {v}" for k, v in self.models().items()) + ")"


# ---------------------------------------------------------------------------------------------
# Stage 1: attention crops
# ---------------------------------------------------------------------------------------------


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of ``values``: the cut maximising the between-class variance."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0 or flat.min() == flat.max():
        return float(flat.max()) if flat.size else 0.0
    counts, edges = np.histogram(flat, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def attention_box(
    mask: np.ndarray, padding: float = 0.1, min_component_fraction: float = 0.5
) -> tuple[int, int, int, int] | None:
    """The padded (left, top, right, bottom) box, in ``mask`` pixels, around the largest
    components of ``mask`` (binary, or a map thresholded by Otsu); None when nothing fires."""
    array = np.asarray(mask, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"an attention mask must be 2-D, got shape {array.shape}")
    distinct = np.unique(array[np.isfinite(array)])
    binary = array > (0 if distinct.size <= 2 and distinct.min(initial=0) >= 0 and
                      distinct.max(initial=0) <= 1 else otsu_threshold(array))  # fmt: skip
    labels, count = ndimage.label(binary)
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    kept = np.flatnonzero(areas >= min_component_fraction * areas.max()) + 1
    rows, cols = np.nonzero(np.isin(labels, kept))
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    least = 1 if padding > 0 else 0  # any padding is at least a pixel
    pad_y = max(least, round(padding * int(bottom - top)))
    pad_x = max(least, round(padding * int(right - left)))
    height, width = array.shape
    return (int(max(0, left - pad_x)), int(max(0, top - pad_y)),
            int(min(width, right + pad_x)), int(min(height, bottom + pad_y)))  # fmt: skip


def attention_crop(image: Image.Image, mask: np.ndarray, padding: float = 0.1) -> Image.Image:
    """``image`` cropped to where its ``mask`` fires (the whole image when it never does)."""
    box = attention_box(mask, padding)
    if box is None:
        return image
    height, width = np.asarray(mask).shape
    scale_x, scale_y = image.width / width, image.height / height
    left, top, right, bottom = box
    return image.crop((math.floor(left * scale_x), math.floor(top * scale_y),
                       math.ceil(right * scale_x), math.ceil(bottom * scale_y)))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Stages 2 and 3: captions, then candidate concepts
# ---------------------------------------------------------------------------------------------


class ImageCaptioner:
    """Stage 2: an image-to-text model (``AutoModelForImageTextToText``), loaded on first use."""

    def __init__(self, model_id: str, device: torch.device, max_new_tokens: int = 20):
        self.model_id, self.device, self.max_new_tokens = model_id, device, max_new_tokens
        self._model: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(self.model_id)
            model = AutoModelForImageTextToText.from_pretrained(self.model_id)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"cannot load the image captioner {self.model_id!r}: {error}"
            ) from None
        self._model = model.to(self.device).eval()

    def caption(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[str]:
        if self._model is None:
            self._load()
        captions = []
        for start in range(0, len(images), batch_size):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                ids = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                           do_sample=False)  # fmt: skip
            captions += [text.strip() for text in
                         self.processor.batch_decode(ids, skip_special_tokens=True)]  # fmt: skip
        return captions


class ConceptSummarizer:
    """Stage 3: an instruction-tuned causal LM with a chat template, loaded on first use."""

    def __init__(self, model_id: str, device: torch.device, max_new_tokens: int = 64):
        self.model_id, self.device, self.max_new_tokens = model_id, device, max_new_tokens
        self._model: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            model = AutoModelForCausalLM.from_pretrained(self.model_id)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"cannot load the summarizer {self.model_id!r}: {error}"
            ) from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"summarizer {self.model_id!r} has no chat template: use an instruction-tuned "
                "model (e.g. Qwen/Qwen2.5-0.5B-Instruct)"
            )
        self._model = model.to(self.device).eval()

    def reply(self, captions: Sequence[str], count: int) -> str:
        """The model's answer to the summarising prompt (greedy)."""
        if self._model is None:
            self._load()
        listed = "\n".join(f"- {caption}" for caption in captions)
        messages = [{"role": "system", "content": _SYSTEM_PROMPT},
                    {"role": "user", "content": _USER_PROMPT.format(captions=listed,
                                                                    count=count)}]  # fmt: skip
        prompt = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(self.device)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        with torch.inference_mode():
            ids = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                       do_sample=False, pad_token_id=pad)  # fmt: skip
        new_tokens = ids[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def candidates(self, captions: Sequence[str], count: int) -> list[str]:
        """Up to ``count`` concepts; the distinct captions when the reply lists none."""
        parsed = parse_numbered_list(self.reply(captions, count), count)
        return parsed or _distinct(captions, count)


_ITEM_MARKER = re.compile(r"(?:^|(?<=\s))(?:\d{1,2}\s*[.):]|[-*\u2022])\s+", re.MULTILINE)
_EXPLANATION = re.compile(r"\s*(?::|\s[-\u2013\u2014]\s|\().*$")


def parse_numbered_list(text: str, limit: int | None = None) -> list[str]:
    """The items of an LM's numbered (or bulleted) list, cleaned: no markers, markdown,
    quotes, explanations after ':' / ' - ' / '(', or trailing punctuation; lower-case,
    distinct, at most ``limit``. Items may share one line ("1. red 2. blue")."""
    markers = list(_ITEM_MARKER.finditer(text))
    if not markers:
        return []
    items = []
    for marker, following in zip(markers, markers[1:] + [None]):
        end = following.start() if following is not None else len(text)
        item = text[marker.end() : end].strip().split("\n")[0]
        item = re.sub(r"[*_`\"\u201c\u201d]", "", item)
        item = _EXPLANATION.sub("", item).strip(" .,;:!'\t").lower()
        item = re.sub(r"\s+", " ", item)
        if item and len(item.split()) <= 8:
            items.append(item)
    return _distinct(items, limit)


def _distinct(texts: Sequence[str], limit: int | None) -> list[str]:
    seen: dict[str, str] = {}
    for text in texts:
        text = text.strip()
        if text and text.lower() not in seen:
            seen[text.lower()] = text
    return list(seen.values())[:limit]


# ---------------------------------------------------------------------------------------------
# Stage 5: DnD's scoring
# ---------------------------------------------------------------------------------------------


def unit_activations(
    model: VisionModel,
    layer: str,
    unit: int,
    images: Sequence[Image.Image],
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """The unit's score (spatial max of its map, as for exemplars) on each image."""
    from .exemplars import LayerTaps

    scores = []
    model.module.to(device)  # where the exemplar pass left it, or the device asked for
    with LayerTaps(model, [layer]) as taps, torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = [model.transform(image.convert("RGB")) for image in
                     images[start : start + batch_size]]  # fmt: skip
            maps = taps.run(torch.stack(batch).to(device))[layer]
            scores.append(maps[:, unit].flatten(1).amax(dim=1).float().cpu())
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def activation_rank_scores(activations: Sequence[np.ndarray], top_ranks: int = 5) -> np.ndarray:
    """DnD's rank-based activation score per candidate, from the unit's activation on each
    candidate's images: pool all images, rank them (1 = highest activation, ties averaged);
    a candidate scores ``1 − sqrt(mean(r²) over its top_ranks best ranks) / #images``.
    A candidate with no images scores NaN."""
    pooled = np.concatenate([np.asarray(a, dtype=np.float64) for a in activations] or [[]])
    if pooled.size == 0:
        return np.full(len(activations), np.nan)
    pooled = np.nan_to_num(pooled, nan=-np.inf)
    ranks = rankdata(-pooled, method="average")
    scores, start = [], 0
    for candidate in activations:
        own = np.sort(ranks[start : start + len(candidate)])[:top_ranks]
        start += len(candidate)
        scores.append(1.0 - math.sqrt(np.mean(own**2)) / pooled.size if own.size else np.nan)
    return np.asarray(scores)


def choose_candidate(activation_scores: np.ndarray, clip_similarities: np.ndarray | None) -> int:
    """The winning candidate: best activation score, or with CLIP the lowest sum of the
    activation rank and the CLIP-similarity rank (ties: the higher activation score).
    Candidates with a NaN activation score (nothing rendered) never win; -1 if none can."""
    valid = np.isfinite(activation_scores)
    if not valid.any():
        return -1
    activation = np.where(valid, activation_scores, -np.inf)
    if clip_similarities is None:
        return int(np.argmax(activation))
    similarity = np.where(valid, np.nan_to_num(clip_similarities, nan=-np.inf), -np.inf)
    combined = rankdata(-activation) + rankdata(-similarity)
    combined = np.where(valid, combined, np.inf)
    order = np.lexsort((-activation, combined))  # by combined rank, then activation score
    return int(order[0])


class ClipImageSimilarity:
    """CLIP image embeddings (``AutoModel`` + ``AutoImageProcessor``), loaded on first use."""

    def __init__(self, model_id: str, device: torch.device):
        self.model_id, self.device = model_id, device
        self._model: Any = None

    def _load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel

        try:
            self.processor = AutoImageProcessor.from_pretrained(self.model_id)
            model = AutoModel.from_pretrained(self.model_id)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"cannot load the CLIP model {self.model_id!r}: {error}"
            ) from None
        if not hasattr(model, "get_image_features"):
            raise ValueError(f"{self.model_id!r} is not a CLIP-like model (no image features)")
        self._model = model.to(self.device).eval()

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self._model is None:
            self._load()
        pixels = self.processor(images=[image.convert("RGB") for image in images],
                                return_tensors="pt")["pixel_values"].to(self.device)  # fmt: skip
        with torch.inference_mode():
            features = self._model.get_image_features(pixel_values=pixels)
        if not isinstance(features, torch.Tensor):  # a ModelOutput in newer transformers
            features = features.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def similarities(
        self, candidate_images: Sequence[Sequence[Image.Image]], exemplars: Sequence[Image.Image]
    ) -> np.ndarray:
        """Mean cosine similarity of each candidate's images to the exemplar crops."""
        reference = self.embed(exemplars)
        return np.asarray([
            float((self.embed(images) @ reference.T).mean()) if images else math.nan
            for images in candidate_images
        ])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The describer
# ---------------------------------------------------------------------------------------------


@dataclass
class _Candidates:
    texts: list[str]
    captioner_log_probs: list[float]
    prior_log_probs: list[float]


class DissectDescriber:
    """Describes the units of one model's layers with Describe-and-Dissect (lazy models)."""

    def __init__(
        self,
        settings: DissectSettings,
        model: VisionModel,
        device: torch.device,
        milan_captioner: tuple[Any, Any] | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ):
        self.settings = settings.check()
        self.model, self.device, self.batch_size = model, device, batch_size
        self.progress = progress
        self.milan_captioner = milan_captioner
        if settings.image_captioner == EMBEDDED_BEAM and milan_captioner is None:
            raise ValueError("dissect with the embedded beam needs a MILAN captioner")
        self.image_captioner = (None if settings.image_captioner == EMBEDDED_BEAM
                                else ImageCaptioner(settings.image_captioner, device))  # fmt: skip
        self.summarizer = (
            ConceptSummarizer(settings.summarizer, device) if settings.summarizer else None
        )
        self.clip = ClipImageSimilarity(settings.clip, device) if settings.clip else None
        self._text_to_image: Any = None

    @property
    def text_to_image(self) -> Any:
        if self._text_to_image is None:
            spec = self.settings.text_to_image
            if isinstance(spec, str):
                from .text_to_image import load_text_to_image

                spec = load_text_to_image(spec)
            self._text_to_image = spec
        return self._text_to_image

    def describe(self, exemplars: Any) -> list[dict[str, Any]]:
        """One record per unit row (``schema.DESCRIPTION_COLUMNS``) of an exemplar set (a
        ``datasets.Dataset`` or rows) with ``images`` materialised, ``batch_size`` units at a
        time in memory."""
        from .inference import row_batches

        records = []
        for rows in row_batches(exemplars, self.batch_size, self.progress, desc="dissecting units"):
            if self.image_captioner is None:
                candidates = self._beam_candidates(rows)
            else:
                candidates = [self._summarised_candidates(row) for row in rows]
            records += [self._best(row, found) for row, found in zip(rows, candidates)]
        return records

    def _crops(self, row: Mapping[str, Any]) -> list[Image.Image]:
        return [attention_crop(image.convert("RGB"), np.asarray(mask), self.settings.crop_padding)
                for image, mask in zip(row[schema.IMAGES], row[schema.MASKS])]  # fmt: skip

    def _summarised_candidates(self, row: Mapping[str, Any]) -> _Candidates:
        captions = self.image_captioner.caption(self._crops(row))
        texts = self.summarizer.candidates(captions, self.settings.num_candidates)
        return _Candidates(texts, [math.nan] * len(texts), [math.nan] * len(texts))

    def _beam_candidates(self, rows: list[Mapping[str, Any]]) -> list[_Candidates]:
        """Per unit, the distinct candidates of the MILAN captioner's final beam, best PMI
        score first (all the rows' beams decoded together)."""
        from .inference import collect_slots, encode_exemplar_sets

        captioner, processor = self.milan_captioner
        encoded = encode_exemplar_sets(collect_slots(rows), captioner, processor)
        with torch.inference_mode():
            output = captioner.generate(exemplar_features=encoded["exemplar_features"],
                                        exemplar_mask=encoded["exemplar_mask"],
                                        **self.settings.generation)  # fmt: skip
        return [self._unit_beam(output, unit, processor) for unit in range(len(rows))]

    def _unit_beam(self, output: Any, unit: int, processor: Any) -> _Candidates:
        scores = output.beam_scores[unit].float().cpu().numpy()
        texts = processor.batch_decode(output.beam_sequences[unit])
        captioner = output.beam_captioner_log_probs[unit].float().cpu().tolist()
        prior = output.beam_prior_log_probs
        prior = [math.nan] * len(texts) if prior is None else prior[unit].float().cpu().tolist()
        chosen = _Candidates([], [], [])
        for index in np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable"):
            text = texts[index].strip()
            if not text or not math.isfinite(scores[index]) or text in chosen.texts:
                continue
            chosen.texts.append(text)
            chosen.captioner_log_probs.append(captioner[index])
            chosen.prior_log_probs.append(prior[index])
            if len(chosen.texts) == self.settings.num_candidates:
                break
        return chosen

    def _best(self, row: Mapping[str, Any], candidates: _Candidates) -> dict[str, Any]:
        settings = self.settings
        rendered = self.text_to_image.render(
            candidates.texts, num_images=settings.images_per_candidate, seed=settings.seed,
            image_size=self.model.input_size[0],
        ) if candidates.texts else []  # fmt: skip
        images = [list(item.images) if item.renderable else [] for item in rendered]
        # One pass over every candidate's images, then split per candidate.
        pooled = [image for shown in images for image in shown]
        pooled_activations = unit_activations(self.model, row[schema.LAYER], row[schema.UNIT],
                                              pooled, self.device, self.batch_size)  # fmt: skip
        bounds = np.cumsum([0] + [len(shown) for shown in images])
        activations = [pooled_activations[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        scores = activation_rank_scores(activations, settings.top_ranks)
        similarity = None
        if self.clip is not None and any(images):
            similarity = self.clip.similarities(images, self._crops(row))
        chosen = choose_candidate(scores, similarity)
        record = {schema.LAYER: row[schema.LAYER], schema.UNIT: row[schema.UNIT]}
        if chosen < 0:  # nothing could be rendered: keep the first candidate, unscored
            text = candidates.texts[0] if candidates.texts else ""
            return {**record, schema.DESCRIPTION: text, schema.SCORE: math.nan,
                    schema.CAPTIONER_LOG_PROB: _first(candidates.captioner_log_probs),
                    schema.PRIOR_LOG_PROB: _first(candidates.prior_log_probs)}  # fmt: skip
        return {**record, schema.DESCRIPTION: candidates.texts[chosen],
                schema.SCORE: float(scores[chosen]),
                schema.CAPTIONER_LOG_PROB: candidates.captioner_log_probs[chosen],
                schema.PRIOR_LOG_PROB: candidates.prior_log_probs[chosen]}  # fmt: skip


def _first(values: Sequence[float]) -> float:
    return values[0] if values else math.nan
