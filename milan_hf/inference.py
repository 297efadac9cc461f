"""The one batched inference path: exemplar rows → processor → captioner → descriptions.

``describe`` (and the CLI), the ``neuron-description`` pipeline, the benchmark, known-unit
evaluation and the training's BLEU validation all go through here:

* :func:`load_captioner` gives a ``MilanCaptionerModel`` and its ``MilanProcessor``.
* :func:`encode_rows` turns exemplar-set rows into the decoder's inputs (mask-pooled exemplar
  features and the exemplar mask).
* :func:`describe_rows` / :func:`describe_exemplars` decode them with ``generate`` (whose
  defaults are the captioner's ``generation_config``) and decode token ids to descriptions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import schema
from .configuration_milan import MilanCaptionerConfig
from .image_processing_milan import check_mask_fits, checked_row, to_pil, unit_name
from .modeling_milan import MilanCaptionerModel, MilanGenerationOutput
from .processing_milan import MilanProcessor

#: Decoding settings callers may pass through (anything else is refused by ``generate``).
GENERATION_ARGUMENTS = ("pmi_weight", "pmi_strategy", "num_beams", "max_length",
                        "no_repeat_ngram_size", "no_repeat_words")  # fmt: skip
#: The captioner embedded in the package: trained on the probe-world corpus.
EMBEDDED_CAPTIONER = Path(__file__).resolve().parent / "resources" / "captioner"
_ROW_COLUMNS = (schema.LAYER, schema.UNIT, schema.IMAGES, schema.MASKS)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_captioner(
    captioner: str | Path | MilanCaptionerModel | None = None,
    device: torch.device | str = "cpu",
) -> tuple[MilanCaptionerModel, MilanProcessor]:
    """A ``MilanCaptionerModel`` (with its prior) and its ``MilanProcessor``, from a local
    directory, a Hub id or a loaded model; ``None`` means the captioner embedded in milan_hf."""
    if isinstance(captioner, MilanCaptionerModel):
        return captioner.to(device).eval(), processor_for(captioner)
    if captioner is None:
        captioner = EMBEDDED_CAPTIONER
    location = str(captioner)
    _check_captioner_location(location)
    try:
        # float32 whatever the stored precision (the embedded checkpoint is stored in float16).
        model = MilanCaptionerModel.from_pretrained(location, dtype=torch.float32)
        processor = MilanProcessor.from_pretrained(location)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the captioner {location!r}: {error.args[0] if error.args else error}"
        ) from error
    return model.to(device).eval(), processor


def _check_captioner_location(location: str) -> None:
    """A local captioner must be a directory with a captioner config.json (one line if not)."""
    path = Path(location).expanduser()
    if not (path.exists() or location.startswith((".", "/", "~"))):
        return  # a Hub id
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"captioner {location!r} is not a captioner directory (no config.json there); "
            "give a directory written by save_pretrained / scripts/train_captioner.py, or a "
            "Hub id"
        )
    try:
        model_type = MilanCaptionerConfig.get_config_dict(str(path))[0].get("model_type")
    except (OSError, ValueError) as error:
        raise ValueError(f"captioner {location!r}: config.json cannot be read ({error})") from None
    if model_type != MilanCaptionerConfig.model_type:
        raise ValueError(
            f"captioner {location!r} holds a {model_type or 'model without model_type'!r} "
            f"model, not a MILAN captioner ({MilanCaptionerConfig.model_type!r}); pass a "
            "directory written by MilanCaptionerModel.save_pretrained, or omit it for the "
            "embedded captioner"
        )


def processor_for(model: MilanCaptionerModel) -> MilanProcessor:
    """The processor saved beside a loaded captioner (or built from a tokenizer attached to
    it as ``model.tokenizer``, as code written for older milan_hf versions does)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        return MilanProcessor.from_model_config(model.config, tokenizer)
    location = model.name_or_path
    if not location:
        raise ValueError(
            "this captioner was not loaded from a directory, so its MilanProcessor is unknown: "
            "pass one (MilanProcessor.from_model_config(model.config, tokenizer))"
        )
    return MilanProcessor.from_pretrained(location)


# ---------------------------------------------------------------------------------------------
# Encoding: each distinct exemplar image through the backbone once
# ---------------------------------------------------------------------------------------------


@dataclass
class ExemplarSlots:
    """Every exemplar slot of some units, grouped by the distinct image it shows.

    ``images[i]`` is distinct image i (a PIL image, datasets' raw ``{"bytes": ...}`` or a probe
    index); ``slots_of_image[i]`` lists its (unit, position) slots; masks are kept bit-packed
    (1 bit per pixel) until their image is encoded, so memory stays small.
    """

    names: list[tuple[Any, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    slots_of_image: list[list[tuple[int, int]]] = field(default_factory=list)
    packed_masks: dict[tuple[int, int], tuple[np.ndarray, tuple[int, int]]] = field(
        default_factory=dict
    )
    _image_of_key: dict[Any, int] = field(default_factory=dict)

    def add_unit(self, row: Mapping[str, Any], keyed_images: Sequence[tuple[Any, Any]]) -> None:
        """One unit: its masks and (key, image) per exemplar; equal keys are one image."""
        unit = len(self.names)
        self.names.append((row.get(schema.LAYER), row.get(schema.UNIT)))
        masks = row[schema.MASKS]
        self.sizes.append(len(keyed_images))
        for position, ((key, image), mask) in enumerate(zip(keyed_images, masks)):
            if key not in self._image_of_key:
                self._image_of_key[key] = len(self.images)
                self.images.append(image)
                self.slots_of_image.append([])
            self.slots_of_image[self._image_of_key[key]].append((unit, position))
            mask = np.asarray(mask).squeeze() > 0
            self.packed_masks[unit, position] = (np.packbits(mask, axis=None), mask.shape)

    def mask(self, slot: tuple[int, int]) -> np.ndarray:
        packed, shape = self.packed_masks[slot]
        return np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape)


def collect_slots(
    exemplars: datasets.Dataset | Sequence[Mapping[str, Any]],
    probe_images: Any = None,
    progress: bool = False,
) -> ExemplarSlots:
    """Read every unit's exemplar slots. Materialised ``images`` are matched by content (a
    digest of their bytes); without them, ``ids`` index ``probe_images``, each resized and
    cropped as the model saw it (the geometry recorded with the exemplar set)."""
    materialised = _has_images(exemplars)
    if not materialised and probe_images is None:
        raise ValueError(
            "the exemplar set has no 'images' column: materialise it first "
            "(milan_hf.exemplars.materialize_images) or pass probe_images"
        )
    columns = (schema.LAYER, schema.UNIT, schema.MASKS,
               schema.IMAGES if materialised else schema.IDS)  # fmt: skip
    if materialised and isinstance(exemplars, datasets.Dataset):
        # Encoded bytes are enough to tell images apart; decoding waits for the backbone.
        exemplars = exemplars.cast_column(schema.IMAGES, datasets.List(datasets.Image(False)))
    fast_masks = _arrow_masks_reader(exemplars)
    if fast_masks is not None:
        columns = [name for name in columns if name != schema.MASKS]
    slots, start = ExemplarSlots(), 0
    for rows in row_batches(exemplars, 64, progress, columns, desc="reading exemplar sets"):
        if fast_masks is not None:
            for row, masks in zip(rows, fast_masks(start, start + len(rows))):
                row[schema.MASKS] = masks
        start += len(rows)
        for row in rows:
            if materialised:
                images, _ = checked_row(row)
                images = [_embedded(image) for image in images]
                keyed = [(_image_digest(image), image) for image in images]
            else:
                keyed = [(("id", int(i)), int(i)) for i in row[schema.IDS]]
            slots.add_unit(row, keyed)
    if not materialised:
        slots.images = _probe_image_source(exemplars, probe_images, slots.images)
    return slots


def encode_exemplar_sets(
    exemplars: datasets.Dataset | Sequence[Mapping[str, Any]] | ExemplarSlots,
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    *,
    probe_images: Any = None,
    images_per_pass: int = 16,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Mask-pooled exemplar features of every unit, each distinct image through the frozen
    backbone once (``images_per_pass`` at a time) and pooled under every mask that uses it.

    Returns ``exemplar_features`` (units, k, feature_size) and ``exemplar_mask`` (units, k) on
    the captioner's device: what ``captioner.encode_exemplars`` gives pair by pair.
    """
    slots = exemplars if isinstance(exemplars, ExemplarSlots) else collect_slots(
        exemplars, probe_images, progress
    )  # fmt: skip
    if not slots.sizes:
        raise ValueError("No exemplar-set rows given.")
    device = next(captioner.parameters()).device
    encoder, image_processor = captioner.encoder, processor.image_processor
    k = max(slots.sizes)
    features = torch.zeros(len(slots.sizes), k, encoder.feature_size, device=device)
    exemplar_mask = torch.arange(k).unsqueeze(0) < torch.tensor(slots.sizes).unsqueeze(1)
    starts = range(0, len(slots.images), images_per_pass)
    for start in tqdm(starts, desc="encoding exemplar images", disable=not progress):
        chunk = range(start, min(start + images_per_pass, len(slots.images)))
        pixels = torch.stack([_pixel_values(slots, image, image_processor) for image in chunk])
        with torch.inference_mode():
            feature_maps = encoder.backbone(pixels.to(device))
        chunk_slots = [(local, slot) for local, image in enumerate(chunk)
                       for slot in slots.slots_of_image[image]]  # fmt: skip
        # Bounded memory: the masks (and gathered feature maps) of a few slots at a time.
        for begin in range(0, len(chunk_slots), 4 * images_per_pass):
            part = chunk_slots[begin : begin + 4 * images_per_pass]
            masks = image_processor.resize_masks([slots.mask(slot) for _, slot in part])
            image_index = torch.tensor([local for local, _ in part], device=device)
            with torch.inference_mode():
                pooled = encoder.pool(feature_maps, image_index, masks.to(device))
            units, positions = zip(*(slot for _, slot in part))
            features[list(units), list(positions)] = pooled.to(features.dtype)
    return {"exemplar_features": features, "exemplar_mask": exemplar_mask.to(device)}


def _pixel_values(slots: ExemplarSlots, image: int, image_processor) -> torch.Tensor:
    source = slots.images[image]
    picture = source.open() if isinstance(source, _LazyProbeImage) else to_pil(source)
    unit, position = slots.slots_of_image[image][0]
    mask_shape = slots.packed_masks[unit, position][1]
    layer, unit_id = slots.names[unit]
    name = unit_name({schema.LAYER: layer, schema.UNIT: unit_id})
    check_mask_fits(torch.empty(mask_shape), picture, name, position)
    return image_processor.image_to_pixel_values(picture)


def _arrow_masks_reader(exemplars: Any):
    """For a dataset whose masks are ``List(Array2D)``: a reader of rows [start, stop)'s masks
    as numpy arrays straight from Arrow (datasets' Python conversion costs ~40 ms a unit)."""
    if not isinstance(exemplars, datasets.Dataset):
        return None
    feature = exemplars.features.get(schema.MASKS)
    inner = getattr(feature, "feature", None)
    if not isinstance(inner, datasets.Array2D):
        return None
    height, width = inner.shape
    table = exemplars.select_columns([schema.MASKS]).with_format("arrow")

    def read(start: int, stop: int) -> list[np.ndarray]:
        column = table[start:stop][schema.MASKS].combine_chunks()
        offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
        values = column.flatten()  # (unlike .values) only this slice's masks
        values = getattr(values, "storage", values)  # the Array2D extension's storage
        pixels = values.flatten().flatten().to_numpy(zero_copy_only=False)
        masks = pixels.reshape(-1, height, width)
        return [masks[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    return read


def _has_images(exemplars: Any) -> bool:
    if isinstance(exemplars, datasets.Dataset):
        return schema.IMAGES in exemplars.column_names
    return len(exemplars) > 0 and all(row.get(schema.IMAGES) is not None for row in exemplars)


def _embedded(image: Any) -> Any:
    """datasets' raw image stored by path → its bytes (raw images are matched by bytes)."""
    if isinstance(image, Mapping) and image.get("bytes") is None and image.get("path"):
        return {"bytes": Path(image["path"]).read_bytes(), "path": image["path"]}
    return image


def _image_digest(image: Any) -> Any:
    if isinstance(image, Mapping) and image.get("bytes") is not None:
        data = image["bytes"]
    elif isinstance(image, Image.Image):
        data = image.mode.encode() + str(image.size).encode() + image.tobytes()
    else:
        array = np.ascontiguousarray(image)
        data = str((array.dtype, array.shape)).encode() + array.tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def _probe_image_source(exemplars, probe_images, indices: list[int]) -> list[Image.Image | Any]:
    """Lazily materialised probe images: index i → the image as the model saw it."""
    from .exemplars import exemplar_metadata, geometry_transform
    from .probe_images import load_probe_images

    if not isinstance(exemplars, datasets.Dataset):
        raise ValueError("exemplar rows without images need a datasets.Dataset (its geometry)")
    geometry = exemplar_metadata(exemplars).get("geometry")
    if geometry is None:
        raise ValueError("no preprocessing geometry recorded with these exemplars")
    probe, reshape = load_probe_images(probe_images), geometry_transform(geometry)
    return [_LazyProbeImage(probe, reshape, index) for index in indices]


@dataclass
class _LazyProbeImage:
    probe: Any
    reshape: Any
    index: int

    def open(self) -> Image.Image:
        if self.index < 0:  # a padding slot of a unit with fewer exemplars
            return Image.new("RGB", (1, 1))
        return self.reshape(self.probe.open_image(self.index))


def encode_rows(
    rows: Sequence[Mapping[str, Any]], captioner: MilanCaptionerModel, processor: MilanProcessor
) -> dict[str, torch.Tensor]:
    """Exemplar-set rows (materialised ``images`` and ``masks``) → ``exemplar_features``
    (units, k, feature_size) and ``exemplar_mask`` (units, k) on the captioner's device, each
    distinct image through the backbone once."""
    return encode_exemplar_sets(rows, captioner, processor)


def description_records(
    names: Sequence[tuple[Any, Any]], output: MilanGenerationOutput, processor: MilanProcessor
) -> list[dict[str, Any]]:
    """One record per unit: ``layer``, ``unit``, ``description`` and its three scores."""
    descriptions = processor.batch_decode(output.sequences)
    scores = output.scores.float().cpu().tolist()
    captioner = output.captioner_log_probs.float().cpu().tolist()
    prior = output.prior_log_probs
    prior = [None] * len(names) if prior is None else prior.float().cpu().tolist()
    return [
        {
            schema.LAYER: layer,
            schema.UNIT: unit,
            schema.DESCRIPTION: description,
            schema.SCORE: score,
            schema.CAPTIONER_LOG_PROB: captioner_log_prob,
            schema.PRIOR_LOG_PROB: prior_log_prob,
        }
        for (layer, unit), description, score, captioner_log_prob, prior_log_prob in zip(
            names, descriptions, scores, captioner, prior
        )
    ]


def decode_units(
    encoded: Mapping[str, torch.Tensor],
    names: Sequence[tuple[Any, Any]],
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    batch_size: int = 32,
    progress: bool = False,
    **generation: Any,
) -> list[dict[str, Any]]:
    """Decode encoded units ``batch_size`` at a time (their beams share every decoder step)."""
    features, exemplar_mask = encoded["exemplar_features"], encoded["exemplar_mask"]
    records = []
    starts = range(0, len(names), batch_size)
    for start in tqdm(starts, desc="describing units", disable=not progress):
        batch = slice(start, start + batch_size)
        with torch.inference_mode():
            output = captioner.generate(
                exemplar_features=features[batch], exemplar_mask=exemplar_mask[batch],
                **generation,
            )  # fmt: skip
        if _well_formed_wanted(captioner, generation):
            output = prefer_well_formed(output, processor)
            output = fluent_fallback(output, features[batch], exemplar_mask[batch], captioner,
                                     processor, generation)  # fmt: skip
        records += description_records(names[batch], output, processor)
    return records


def _well_formed_wanted(captioner: MilanCaptionerModel, generation: Mapping[str, Any]) -> bool:
    given = generation.get("no_repeat_words")
    return bool(getattr(captioner.generation_config, "no_repeat_words", False)
                if given is None else given)  # fmt: skip


def fluency_floor(vocab_size: int) -> float:
    """The least mean log p(d) per token a description may have: that of words drawn
    uniformly from the vocabulary. A candidate the prior finds less likely than random words
    is word salad ("duck coal tugboat have cone engine ..."), which PMI rewards for exactly
    that improbability when the captioner is unsure of a unit."""
    return -math.log(max(2, vocab_size))


def _per_token(log_probs: torch.Tensor, sequences: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean log-probability per predicted token (``<eos>`` included, ``<bos>`` and padding not)."""
    lengths = (sequences[..., 1:] != pad_id).sum(-1).clamp_min(1)
    return log_probs.float() / lengths


def prefer_well_formed(
    output: MilanGenerationOutput, processor: MilanProcessor
) -> MilanGenerationOutput:
    """Per unit, the best-scoring candidate of the final beam that reads as English: no
    defect by ``probe_world.phrasing.description_defects``, and (with a prior) a mean log p(d)
    per token at or above ``fluency_floor``. The chosen one when it reads so, or when no
    candidate does. The token-level rule (``no_repeat_words``) cannot see whole-phrase defects
    such as "fruit like the left of the image" or "slanted lines and no clear pattern"; this
    is the same rule applied to finished candidates, on by default with it.
    """
    from .probe_world.phrasing import description_defects

    if output.beam_sequences is None:
        return output
    beam_scores = output.beam_scores
    if beam_scores is None:
        beam_scores = output.beam_captioner_log_probs
    beam_fluent = None
    if output.beam_prior_log_probs is not None:
        per_token = _per_token(output.beam_prior_log_probs, output.beam_sequences,
                               processor.tokenizer.pad_token_id)  # fmt: skip
        beam_fluent = per_token >= fluency_floor(len(processor.tokenizer))
    picks = []
    for unit, readable_choice in enumerate(readable_choices(output, processor)):
        if readable_choice:
            picks.append(None)
            continue
        order = torch.argsort(beam_scores[unit].float(), descending=True).tolist()
        candidates = processor.batch_decode(output.beam_sequences[unit, order])
        readable = [
            j for j, b in enumerate(order)
            if torch.isfinite(beam_scores[unit, b])
            and (beam_fluent is None or bool(beam_fluent[unit, b]))
        ]  # fmt: skip
        picks.append(next((order[j] for j in readable if not description_defects(candidates[j])),
                          None))  # fmt: skip
    if all(pick is None for pick in picks):
        return output
    sequences = output.sequences.clone()
    scores, captioner = output.scores.clone(), output.captioner_log_probs.clone()
    prior = None if output.prior_log_probs is None else output.prior_log_probs.clone()
    for unit, pick in enumerate(picks):
        if pick is None:
            continue
        sequences[unit] = output.beam_sequences[unit, pick]
        scores[unit] = beam_scores[unit, pick]
        captioner[unit] = output.beam_captioner_log_probs[unit, pick]
        if prior is not None:
            prior[unit] = output.beam_prior_log_probs[unit, pick]
    return replace(output, sequences=sequences, scores=scores, captioner_log_probs=captioner,
                   prior_log_probs=prior)  # fmt: skip


def resolved_pmi_weight(captioner: MilanCaptionerModel, generation: Mapping[str, Any]) -> float:
    """The λ a decoding run uses: the one given in ``generation``, else the captioner's."""
    weight = generation.get("pmi_weight")
    if weight is None:
        weight = getattr(captioner.generation_config, "pmi_weight", None)
    return float(weight or 0.0)


#: Weight of the prior as a language model in ``fluent_fallback`` (shallow fusion).
FLUENCY_FUSION_WEIGHT = 1.0


def readable_choices(output: MilanGenerationOutput, processor: MilanProcessor) -> list[bool]:
    """Whether each chosen description reads as English: no defect by
    ``probe_world.phrasing.description_defects`` and (with a prior) a mean log p(d) per token
    at or above ``fluency_floor``."""
    from .probe_world.phrasing import description_defects

    texts = processor.batch_decode(output.sequences)
    fluent = [True] * len(texts)
    if output.prior_log_probs is not None:
        floor = fluency_floor(len(processor.tokenizer))
        per_token = _per_token(output.prior_log_probs, output.sequences,
                               processor.tokenizer.pad_token_id)  # fmt: skip
        fluent = (per_token >= floor).tolist()
    return [ok and not description_defects(text) for ok, text in zip(fluent, texts)]


def fluent_fallback(
    output: MilanGenerationOutput,
    exemplar_features: torch.Tensor,
    exemplar_mask: torch.Tensor | None,
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    generation: Mapping[str, Any],
) -> MilanGenerationOutput:
    """Units whose final beam holds nothing readable are searched again with the prior as a
    language model: every step scores ``log p(w|E) + log p(w)`` (``pmi_strategy="token"`` at
    weight ``-FLUENCY_FUSION_WEIGHT``). On units the captioner is unsure of, the p(d|E) beam
    can lose its way into word salad while fluent strings of higher p(d|E) exist ("no clear
    concept" at -25 against the salad's -62 on one EfficientNet unit); the fused search finds
    them. The best readable candidate of that search's final beam replaces the choice, scored
    as the run's PMI score ``log p(d|E) - λ·log p(d)``; otherwise the choice stands. Needs a
    prior."""
    if captioner.prior is None or output.prior_log_probs is None:
        return output
    rows = [unit for unit, ok in enumerate(readable_choices(output, processor)) if not ok]
    if not rows:
        return output
    index = torch.tensor(rows, device=exemplar_features.device)
    settings = {**generation, "pmi_weight": -FLUENCY_FUSION_WEIGHT, "pmi_strategy": "token"}
    with torch.inference_mode():
        fused = captioner.generate(
            exemplar_features=exemplar_features[index],
            exemplar_mask=None if exemplar_mask is None else exemplar_mask[index],
            **settings,
        )
    # Its whole final beam, not only its top string: the best readable one of it.
    fused = prefer_well_formed(fused, processor)
    weight = resolved_pmi_weight(captioner, generation)
    pad_id = processor.tokenizer.pad_token_id
    length = max(output.sequences.shape[1], fused.sequences.shape[1])
    sequences = F.pad(output.sequences, (0, length - output.sequences.shape[1]), value=pad_id)
    fused_sequences = F.pad(fused.sequences, (0, length - fused.sequences.shape[1]), value=pad_id)
    scores, captioner_log_probs = output.scores.clone(), output.captioner_log_probs.clone()
    prior = output.prior_log_probs.clone()
    for position, (unit, ok) in enumerate(zip(rows, readable_choices(fused, processor))):
        if not ok:
            continue
        sequences[unit] = fused_sequences[position]
        captioner_log_probs[unit] = fused.captioner_log_probs[position]
        prior[unit] = fused.prior_log_probs[position]
        scores[unit] = captioner_log_probs[unit] - weight * prior[unit]
    return replace(output, sequences=sequences, scores=scores,
                   captioner_log_probs=captioner_log_probs, prior_log_probs=prior)  # fmt: skip


def describe_rows(
    rows: Sequence[Mapping[str, Any]],
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    **generation: Any,
) -> list[dict[str, Any]]:
    """Describe one batch of units (their beams share every decoder step); ``generation``:
    ``pmi_weight``, ``pmi_strategy``, ``num_beams``, ``max_length``, ``no_repeat_ngram_size``
    (each ``None`` or absent: the captioner's generation config)."""
    slots = collect_slots(rows)
    encoded = encode_exemplar_sets(slots, captioner, processor)
    return decode_units(encoded, slots.names, captioner, processor, len(rows), **generation)


def row_batches(
    exemplars: datasets.Dataset | Sequence[Mapping[str, Any]],
    batch_size: int,
    progress: bool = False,
    columns: Sequence[str] = _ROW_COLUMNS,
    desc: str = "describing units",
) -> Iterator[list[dict[str, Any]]]:
    """The rows of an exemplar set (a ``datasets.Dataset`` or a list), ``batch_size`` at a
    time, with only ``columns`` read from a dataset."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(exemplars, datasets.Dataset):
        exemplars = exemplars.select_columns(
            [name for name in columns if name in exemplars.column_names]
        )
    starts = range(0, len(exemplars), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress):
        batch = exemplars[start : start + batch_size]
        if isinstance(batch, dict):  # a Dataset slice is a dict of columns
            batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
        yield list(batch)


def describe_exemplars(
    exemplars: datasets.Dataset | Sequence[Mapping[str, Any]],
    captioner: MilanCaptionerModel,
    processor: MilanProcessor,
    *,
    pmi_weight: float | None = None,
    pmi_strategy: str | None = None,
    num_beams: int | None = None,
    no_repeat_ngram_size: int | None = None,
    no_repeat_words: bool | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    probe_images: Any = None,
    progress: bool = True,
) -> datasets.Dataset:
    """Describe every unit of an exemplar set.

    Its ``images`` may be materialised, or only ``ids`` given with the ``probe_images`` they
    index. Each distinct image goes through the captioner's backbone once; then units are
    decoded ``batch_size`` at a time (all their beams share each decoder step). Settings left
    ``None`` come from the captioner's ``generation_config``. Returns the descriptions dataset
    (``layer``, ``unit``, ``description``, ``score``, ``captioner_log_prob``,
    ``prior_log_prob``), one row per unit, in the exemplar set's order.
    """
    generation = dict(pmi_weight=pmi_weight, pmi_strategy=pmi_strategy, num_beams=num_beams,
                      no_repeat_ngram_size=no_repeat_ngram_size, no_repeat_words=no_repeat_words,
                      max_length=max_length)  # fmt: skip
    slots = collect_slots(exemplars, probe_images, progress)
    records = []
    if slots.names:
        encoded = encode_exemplar_sets(slots, captioner, processor, progress=progress)
        records = decode_units(
            encoded, slots.names, captioner, processor, batch_size, progress, **generation
        )
    columns = {name: [record[name] for record in records] for name in schema.DESCRIPTION_COLUMNS}
    return datasets.Dataset.from_dict(columns, features=schema.DESCRIPTION_FEATURES)
