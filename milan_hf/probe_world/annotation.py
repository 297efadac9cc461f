"""Describe units by the IoU of their exemplar masks with probe-world concept masks.

This is the automatic annotator of the probe-world corpus and the NetDissect-style baseline
describer of the evaluation. For one unit with exemplar images ``ids`` and binary masks ``M``
(where it fires), the IoU of a concept expression ``X`` is computed over the exemplars::

    IoU(X) = sum_j |M_j & X_j| / sum_j |M_j | X_j|

over every single concept present in the exemplars, then over compositions of the ``beam``
best singles: ``a AND b``, ``a OR b`` and ``a AND region`` (regions never win alone). A
composition must beat the simpler expressions by ``margin`` per extra term (ties go to the
simpler one). The winner is phrased three ways by ``phrasing.phrase``; below ``iou_floor`` the
unit is described as having no clear concept rather than forced into one.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from . import concepts as C
from .phrasing import phrase
from .scenes import Scene, region_masks

DEFAULT_IOU_FLOOR = 0.1
DEFAULT_BEAM = 6
DEFAULT_MARGIN = 0.02
NONE_EXPRESSION = ("none",)


@dataclass
class Annotation:
    """What the annotator found a unit to detect."""

    layer: str
    unit: int
    expression: tuple[str, ...]  # ("concept", c) | ("and"|"or", a, b) | ("none",)
    iou: float
    descriptions: list[str]
    runner_up: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    @property
    def concept(self) -> str:
        """The expression as one readable string: ``red``, ``red AND top``, ``none``."""
        return expression_text(self.expression)


def expression_text(expression: Sequence[str]) -> str:
    if expression[0] == "none":
        return "none"
    if expression[0] == "concept":
        return expression[1]
    return f" {expression[0].upper()} ".join(expression[1:])


def same_expression(a: Sequence[str], b: Sequence[str]) -> bool:
    """Equality up to the order of the operands of AND/OR."""
    if a[0] != b[0]:
        return False
    if a[0] in ("and", "or"):
        return set(a[1:]) == set(b[1:])
    return tuple(a) == tuple(b)


class SceneMasks:
    """Concept masks of a probe-world scene set, indexed by image id, at a chosen size.

    Built from the scene ``datasets.Dataset`` (columns ``concepts``, ``masks``, ``objects``)
    or from a list of ``Scene``. Masks are resized (nearest) when the units' masks have another
    size than the scenes, e.g. when a model's transform resizes its inputs.
    """

    def __init__(self, scenes, progress: bool = False):
        self.concepts: list[list[str]] = []
        self.masks: list[np.ndarray] = []  # per scene: (n_concepts, H, W) bool
        self.objects: list[list[str]] = []
        if isinstance(scenes, (list, tuple)) and (not scenes or isinstance(scenes[0], Scene)):
            for scene in scenes:
                names = scene.concepts()
                self.concepts.append(names)
                self.masks.append(np.stack([scene.masks[n] for n in names]).astype(bool))
                self.objects.append(list(scene.captions))
        else:
            for column in ("concepts", "masks"):
                if column not in scenes.column_names:
                    raise ValueError(
                        f"the scene dataset has no {column!r} column (columns: "
                        f"{scenes.column_names}); build it with build_scene_dataset"
                    )
            has_objects = "objects" in scenes.column_names
            for batch in tqdm(
                _arrow_batches(scenes),
                total=-(-len(scenes) // _BATCH),
                desc="loading concept masks",
                disable=not progress,
            ):
                names = batch.column("concepts").to_pylist()
                masks, counts = _arrow_masks(batch.column("masks"))
                objects = batch.column("objects").to_pylist() if has_objects else [[]] * len(names)
                offsets = np.concatenate([[0], np.cumsum(counts)])
                for index, scene_names in enumerate(names):
                    self.concepts.append(scene_names)
                    self.masks.append(masks[offsets[index] : offsets[index + 1]].astype(bool))
                    self.objects.append(objects[index] or [])
        if not self.masks:
            raise ValueError("the scene set is empty")
        self.size = self.masks[0].shape[-2:]
        self._resized: dict[tuple[int, tuple[int, int]], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.masks)

    def scene_masks(
        self, index: int, size: tuple[int, int], geometry: dict | None = None
    ) -> np.ndarray:
        """Scene ``index``'s masks at ``size``, cut like the model's input when ``geometry``
        (the extraction metadata's resize/crop) is given, else resized (nearest)."""
        if not 0 <= index < len(self.masks):
            raise ValueError(f"image id {index} is outside the scene set (0..{len(self) - 1})")
        if tuple(size) == tuple(self.size) and not _crops(geometry):
            return self.masks[index]
        key = (index, tuple(size))
        if key not in self._resized:
            height, width = size
            if _crops(geometry):
                from milan_hf.vision_models import geometry_transform

                cut = geometry_transform(geometry)
                masks = [
                    np.asarray(cut(Image.fromarray(m.astype(np.uint8) * 255))) > 127
                    for m in self.masks[index]
                ]
                masks = [
                    m
                    if m.shape == (height, width)
                    else np.asarray(Image.fromarray(m).resize((width, height), Image.NEAREST))
                    for m in masks
                ]
            else:
                masks = [
                    np.asarray(Image.fromarray(m).resize((width, height), Image.NEAREST))
                    for m in self.masks[index]
                ]
            self._resized[key] = np.stack(masks)
        return self._resized[key]


def _crops(geometry: dict | None) -> bool:
    """Whether a preprocessing geometry crops (so masks need more than a resize)."""
    return bool(geometry) and geometry.get("type") == "resize_center_crop"


_BATCH = 256


def _arrow_batches(dataset, columns=None):
    """Row batches of a ``datasets.Dataset`` as pyarrow tables (fast: no per-value decoding)."""
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), _BATCH):
        batch = table[start : start + _BATCH]
        yield batch.select(columns) if columns else batch


def _arrow_masks(column) -> tuple[np.ndarray, np.ndarray]:
    """A ``List(Array2D(uint8))`` arrow column -> (all masks (n, H, W), masks per row)."""
    import pyarrow as pa

    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    counts = np.diff(lists.offsets.to_numpy())
    flat = lists.flatten()  # only the referenced masks, also for sliced arrays
    if len(flat) == 0:
        return np.zeros((0, 0, 0), dtype=np.uint8), counts
    storage = flat.storage if hasattr(flat, "storage") else flat
    rows = storage.flatten()
    height = len(rows) // len(storage)
    values = rows.flatten().to_numpy(zero_copy_only=False)
    width = len(values) // (len(storage) * height)
    return values.reshape(len(storage), height, width), counts


def _bits(masks: np.ndarray) -> np.ndarray:
    """(n, k, H, W) bool -> (n, bytes) packed bits: IoU then costs a popcount."""
    return np.packbits(masks.reshape(masks.shape[0], -1), axis=1)


def _popcount(bits: np.ndarray) -> np.ndarray:
    return np.bitwise_count(bits).sum(axis=-1, dtype=np.int64)


def candidate_ious(
    unit_masks: np.ndarray,
    concept_masks: dict[str, np.ndarray],
    beam: int = DEFAULT_BEAM,
) -> list[tuple[tuple[str, ...], float]]:
    """IoU of every single concept and of compositions of the ``beam`` best, best first.

    Args:
        unit_masks: (k, H, W) bool, where the unit fires on each exemplar.
        concept_masks: concept name -> (k, H, W) bool on the same exemplars (regions included).
    """
    unit_masks = np.asarray(unit_masks, dtype=bool)
    names = list(concept_masks)
    if not names:
        return []
    unit_bits = _bits(unit_masks[None])[0]
    concept_bits = _bits(np.stack([concept_masks[n] for n in names]))

    def iou(bits: np.ndarray) -> np.ndarray:
        union = _popcount(bits | unit_bits)
        return _popcount(bits & unit_bits) / np.maximum(union, 1)

    single = iou(concept_bits)
    results = [(("concept", n), float(v)) for n, v in zip(names, single)]
    order = [i for i in np.argsort(-single, kind="stable") if single[i] > 0]
    best = [i for i in order if C.concept_family(names[i]) != C.REGION][:beam]
    regions = [i for i, n in enumerate(names) if C.concept_family(n) == C.REGION]
    pairs, expressions = [], []
    for position, a in enumerate(best):
        for b in best[position + 1 :]:
            pairs.append(concept_bits[a] | concept_bits[b])
            expressions.append(("or", names[a], names[b]))
            if C.concept_family(names[a]) != C.concept_family(names[b]):
                pairs.append(concept_bits[a] & concept_bits[b])
                expressions.append(("and", names[a], names[b]))
        for r in regions:
            pairs.append(concept_bits[a] & concept_bits[r])
            expressions.append(("and", names[a], names[r]))
    if pairs:
        values = iou(np.stack(pairs))
        results += [(e, float(v)) for e, v in zip(expressions, values)]
    results.sort(key=lambda item: -item[1])
    return results


def choose_expression(
    scored: Sequence[tuple[tuple[str, ...], float]],
    iou_floor: float = DEFAULT_IOU_FLOOR,
    margin: float = DEFAULT_MARGIN,
) -> tuple[tuple[str, ...], float]:
    """The expression with the best IoU after a ``margin`` penalty per extra term."""
    if not scored:
        return NONE_EXPRESSION, 0.0

    def score(item):
        expression, value = item
        return value - margin * (len(expression) - 2)

    # A region alone ("the top half") says where, not what: it only counts combined with a
    # concept. Large blob-like masks would otherwise all be described by their position.
    scored = [
        item
        for item in scored
        if not all(C.concept_family(name) == C.REGION for name in item[0][1:])
    ]
    if not scored:
        return NONE_EXPRESSION, 0.0
    expression, value = max(scored, key=score)  # max keeps the first (simplest) of ties
    if value < iou_floor:
        return NONE_EXPRESSION, value
    return expression, value


def _unit_rng(layer: str, unit: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), unit])


def _dominant_captions(expression, ids, scenes: SceneMasks, unit_concepts) -> list[str]:
    """Captions of the cut-outs that most exemplars share, for object expressions."""
    objects = [n for n in expression[1:] if C.concept_family(n) == C.OBJECT]
    if not objects:
        return []
    counts = Counter()
    for image_id, present in zip(ids, unit_concepts):
        if objects[0] in present:
            counts.update(set(scenes.objects[image_id]))
    if not counts:
        return []
    caption, count = counts.most_common(1)[0]
    caption = re.sub(r"[^a-z0-9' -]+", "", caption.lower()).strip()  # captions carry quotes
    return [caption] if caption and count >= max(2, len(ids) // 4) else []


def describe_unit(
    layer: str,
    unit: int,
    ids: Sequence[int],
    masks: np.ndarray,
    scenes: SceneMasks,
    *,
    iou_floor: float = DEFAULT_IOU_FLOOR,
    beam: int = DEFAULT_BEAM,
    margin: float = DEFAULT_MARGIN,
    num_descriptions: int = 3,
    seed: int = 0,
    dead: bool = False,
    geometry: dict | None = None,
) -> Annotation:
    """Annotate one unit from its exemplar ids and (k, H, W) masks."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or len(masks) != len(ids):
        raise ValueError(
            f"unit {layer}:{unit}: expected {len(ids)} masks of shape (H, W), got {masks.shape}"
        )
    rng = _unit_rng(layer, unit, seed)
    if dead or not masks.any():
        return Annotation(
            layer, unit, NONE_EXPRESSION, 0.0, phrase(NONE_EXPRESSION, num_descriptions, rng)
        )
    size = masks.shape[1:]
    k = len(ids)
    present = [scenes.concepts[i] for i in ids]
    concept_masks: dict[str, np.ndarray] = {}
    for j, image_id in enumerate(ids):
        stack = scenes.scene_masks(int(image_id), size, geometry)
        for name, mask in zip(present[j], stack):
            if name not in concept_masks:
                concept_masks[name] = np.zeros((k, *size), dtype=bool)
            concept_masks[name][j] = mask
    for name, mask in region_masks(*size).items():
        concept_masks[name] = np.broadcast_to(mask, (k, *size))
    scored = candidate_ious(masks, concept_masks, beam=beam)
    expression, value = choose_expression(scored, iou_floor=iou_floor, margin=margin)
    captions = _dominant_captions(expression, ids, scenes, present)
    descriptions = phrase(expression, num_descriptions, rng, captions=captions)
    return Annotation(layer, unit, expression, value, descriptions, runner_up=list(scored[:5]))


def iter_exemplar_rows(exemplar_rows) -> Iterator[dict]:
    """Rows with numpy masks, read straight from arrow when given a ``datasets.Dataset``."""
    if not hasattr(exemplar_rows, "with_format"):
        yield from exemplar_rows
        return
    columns = [
        c
        for c in ("layer", "unit", "ids", "activations", "masks", "dead")
        if c in exemplar_rows.column_names
    ]
    for batch in _arrow_batches(exemplar_rows, columns):
        masks, counts = _arrow_masks(batch.column("masks"))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        plain = batch.drop_columns(["masks"]).to_pylist()
        for index, row in enumerate(plain):
            row["masks"] = masks[offsets[index] : offsets[index + 1]]
            yield row


def describe_by_iou(
    exemplar_rows: Iterable[dict],
    scene_dataset,
    *,
    iou_floor: float = DEFAULT_IOU_FLOOR,
    beam: int = DEFAULT_BEAM,
    margin: float = DEFAULT_MARGIN,
    num_descriptions: int = 3,
    seed: int = 0,
    progress: bool = True,
    geometry: dict | str | None = "auto",
) -> list[Annotation]:
    """Describe every unit of an exemplar set by concept-mask IoU (NetDissect-style baseline).

    Args:
        exemplar_rows: an exemplar-set ``datasets.Dataset`` (``milan_hf.schema``) or rows with
            ``layer``, ``unit``, ``ids``, ``masks`` (and optionally ``dead``); ``ids`` index
            ``scene_dataset``.
        scene_dataset: the probe-world scenes the exemplars were extracted from: the dataset
            of ``build_scene_dataset``, a list of ``Scene``, or a ``SceneMasks``.
        iou_floor: below this IoU a unit is described as having no clear concept.
        geometry: how the model's preprocessing resized/cropped the scenes (the extraction
            metadata's ``geometry``); ``"auto"`` reads it from an exemplar ``Dataset``'s
            metadata, so scene masks are cut exactly like the images the masks refer to.

    Returns:
        One ``Annotation`` per unit, in row order.
    """
    scenes = scene_dataset if isinstance(scene_dataset, SceneMasks) else SceneMasks(scene_dataset)
    if geometry == "auto":
        geometry = None
        if hasattr(exemplar_rows, "info"):
            from milan_hf.exemplars import exemplar_metadata

            geometry = exemplar_metadata(exemplar_rows).get("geometry")
    total = len(exemplar_rows) if hasattr(exemplar_rows, "__len__") else None
    annotations = []
    for row in tqdm(
        iter_exemplar_rows(exemplar_rows),
        total=total,
        desc="annotating units",
        disable=not progress,
    ):
        annotations.append(
            describe_unit(
                str(row["layer"]),
                int(row["unit"]),
                [int(i) for i in row["ids"]],
                np.asarray(row["masks"]) if len(row["masks"]) else np.zeros((0, 1, 1)),
                scenes,
                iou_floor=iou_floor,
                beam=beam,
                margin=margin,
                num_descriptions=num_descriptions,
                seed=seed,
                dead=bool(row.get("dead", False)),
                geometry=geometry,
            )
        )
    return annotations
