"""A static HTML report of unit descriptions and their exemplars.

``write_report`` turns an exemplar set (with materialised ``images``) and its descriptions into
``output_dir/index.html`` plus one thumbnail strip per unit under ``output_dir/thumbs/``. The
page needs no network: CSS, JavaScript and the unit index (JSON) are inline, thumbnails are
relative files, and a Content-Security-Policy forbids everything else. The page, its style and
its script are package resources (``milan_hf/resources/report/``), filled in one pass so no
description, layer name or title can be read as part of the template.

Each strip shows a unit's k exemplars side by side with the region where the unit fires kept
bright, the rest dimmed and a yellow contour around the region, as in the MILAN/NetDissect
visualisations. The page renders one page of units at a time from the embedded index, so
thousands of units neither bloat the DOM nor freeze the browser; search (by description text),
layer filter, sort and page live in the URL fragment (``index.html#q=stripes&layer=layer2``),
which makes every view linkable.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from milan_hf import schema
from milan_hf.mask_packing import mask_shape as stored_mask_shape
from milan_hf.mask_packing import masks_per_row
from milan_hf.staged_output import staged_directory, write_text_atomically

DEFAULT_TITLE = "MILAN unit descriptions"
DEFAULT_THUMBNAIL_SIZE = 96
DEFAULT_PAGE_SIZE = 50

#: How the highlight looks: pixels outside the firing region keep this share of their
#: brightness, and the region's outline is drawn in this colour.
OUTSIDE_BRIGHTNESS = 0.3
CONTOUR_COLOR = (255, 214, 0)
#: White gap between the exemplars of a strip, in pixels.
STRIP_GAP = 2
JPEG_QUALITY = 85

THUMBS_DIR = "thumbs"
INDEX_FILE = "index.html"
#: Every page this module writes carries this element; an index.html without it (or the
#: unit index of reports written before it existed) is the user's, and is never replaced.
_GENERATOR_MARK = '<meta name="generator" content="milan_hf report">'
_LEGACY_MARK = '<script type="application/json" id="report-data">'
#: A build's thumbnail folder (a uuid4 hex prefix) and the strips in it.
_BUILD_NAME = re.compile(r"[0-9a-f]{12}")
_STRIP_NAME = re.compile(r"L\d{3}-U\d+\.jpg")
_STAGING_NAME = re.compile(r"\.[0-9a-f]{12}\.partial-.*")

_DESCRIPTION = schema.DESCRIPTION
_PMI_DESCRIPTION = schema.PMI_DESCRIPTION
_KEY_COLUMNS = (schema.LAYER, schema.UNIT)
#: A unit's description, its numeric scores, and what PMI chose when verification replaced it.
_Described = tuple[str | None, tuple[float | None, ...], str | None]
_BATCH_SIZE = 64


@dataclass
class _UnitEntry:
    """One unit of the page: everything the embedded index says about it."""

    layer_index: int
    unit: int
    description: str | None = None
    scores: tuple[float | None, ...] = ()
    dead: bool = False
    threshold: float | None = None
    activations: tuple[float | None, ...] = ()
    human_descriptions: tuple[str, ...] = ()
    # What PMI decoding chose when verification replaced it (None: it did not).
    replaced_description: str | None = None
    thumbnail: str | None = None
    thumbnail_width: int = 0
    thumbnail_height: int = 0

    def to_json(self) -> dict:
        entry = {
            "l": self.layer_index,
            "u": self.unit,
            "d": self.description,
            "s": [_finite_or_none(score) for score in self.scores],
            "x": int(self.dead),
            "th": _finite_or_none(self.threshold),
            "a": [_finite_or_none(value) for value in self.activations],
        }
        if self.description and _names_no_concept(self.description):
            entry["f"] = 1
        if self.human_descriptions:
            entry["h"] = list(self.human_descriptions)
        if self.replaced_description is not None:
            entry["p"] = self.replaced_description
        if self.thumbnail is not None:
            entry["t"] = self.thumbnail
            entry["w"] = self.thumbnail_width
            entry["ht"] = self.thumbnail_height
        return entry


def write_report(
    exemplars: datasets.Dataset,
    descriptions: datasets.Dataset | Sequence[dict],
    output_dir: str | Path,
    *,
    title: str = DEFAULT_TITLE,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Path:
    """Write the HTML report of ``descriptions`` and their ``exemplars`` into ``output_dir``.

    Args:
        exemplars: an exemplar set (``milan_hf.schema``) with its ``images`` column materialised:
            per unit, k images at the size of its k binary ``masks``.
        descriptions: rows with ``layer``, ``unit``, ``description`` and any numeric score
            columns (e.g. ``score``, ``log_p_d_given_e``, ``log_p_d``), all of which are shown.
            Units without a row still show their exemplars.
        output_dir: folder that receives ``index.html`` and ``thumbs/``. Other files in it are
            left alone, so a ``describe`` output folder can hold the report next to its data.
        title: page title.
        thumbnail_size: height in pixels of each exemplar in a unit's strip.
        page_size: units rendered per page.

    Returns:
        The path of ``output_dir/index.html``.

    The thumbnails are staged, then moved under a fresh name that nothing refers to yet;
    ``index.html`` is replaced in one atomic rename after that, so an interrupted run leaves
    the previous report (or none) in place, never a half-written one. Only what an earlier
    report wrote is replaced: an ``index.html`` or ``thumbs/`` folders of the user's are kept
    (an ``index.html`` the report did not write is refused).
    """
    _check_report_arguments(exemplars, thumbnail_size, page_size)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not a folder")
    page_path = output_dir / INDEX_FILE
    _refuse_foreign_page(page_path)

    score_names, described = _index_descriptions(descriptions)
    build_id = uuid.uuid4().hex[:12]
    build_thumbs = output_dir / THUMBS_DIR / build_id
    with staged_directory(build_thumbs) as staging_thumbs:
        layers, entries = _write_thumbnails(
            exemplars, described, staging_thumbs, f"{THUMBS_DIR}/{build_id}", thumbnail_size
        )
    try:
        page = _render_page(title, layers, score_names, entries, page_size)
        write_text_atomically(page_path, page)
    except BaseException:
        shutil.rmtree(build_thumbs, ignore_errors=True)
        raise
    _remove_stale_builds(output_dir, keep=build_id)
    return page_path


def _check_report_arguments(
    exemplars: datasets.Dataset, thumbnail_size: int, page_size: int
) -> None:
    if not isinstance(exemplars, datasets.Dataset):
        raise ValueError(f"exemplars must be a datasets.Dataset, got {type(exemplars).__name__}")
    missing = [
        column
        for column in (schema.LAYER, schema.UNIT, schema.MASKS, schema.IMAGES)
        if column not in exemplars.column_names
    ]
    if missing:
        raise ValueError(
            f"exemplars lacks the column(s) {missing} (it has {exemplars.column_names}); the "
            "report needs the exemplar images materialised in an 'images' column"
        )
    if not isinstance(thumbnail_size, int) or thumbnail_size < 8:
        raise ValueError(f"thumbnail_size must be an integer >= 8, got {thumbnail_size!r}")
    if not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be a positive integer, got {page_size!r}")


def _refuse_foreign_page(page_path: Path) -> None:
    """Raise if ``page_path`` exists and is not a report this module wrote."""
    if not page_path.exists():
        return
    if page_path.is_file():
        text = page_path.read_text(encoding="utf-8", errors="replace")
        if _GENERATOR_MARK in text or _LEGACY_MARK in text:
            return
    raise FileExistsError(
        f"{page_path} was not written by milan_hf's report; move it away or write the report "
        "to another folder"
    )


def _remove_stale_builds(output_dir: Path, keep: str) -> None:
    """Delete thumbnail folders of earlier reports and staging folders of interrupted runs;
    folders that hold anything else are the user's and stay."""
    for previous in (output_dir / THUMBS_DIR).iterdir():
        if not previous.is_dir() or previous.name == keep:
            continue
        if _STAGING_NAME.fullmatch(previous.name) or (
            _BUILD_NAME.fullmatch(previous.name)
            and all(_STRIP_NAME.fullmatch(path.name) for path in previous.iterdir())
        ):
            shutil.rmtree(previous, ignore_errors=True)
    for staging in output_dir.glob(".report-*.tmp"):  # left by versions before staged_output
        shutil.rmtree(staging, ignore_errors=True)


# --- descriptions -------------------------------------------------------------------------


def _index_descriptions(
    descriptions: datasets.Dataset | Sequence[dict],
) -> tuple[list[str], dict[tuple[str, int], tuple[str | None, tuple[float | None, ...]]]]:
    """Return the numeric score columns and ``{(layer, unit): (description, scores, what
    PMI chose when verification replaced it)}``."""
    if isinstance(descriptions, datasets.Dataset):
        missing = [column for column in _KEY_COLUMNS if column not in descriptions.column_names]
        if missing:
            raise ValueError(
                f"descriptions lacks the column(s) {missing} (it has {descriptions.column_names})"
            )
        score_names = [
            name
            for name, feature in descriptions.features.items()
            if name not in (*_KEY_COLUMNS, _DESCRIPTION) and _is_numeric_feature(feature)
        ]
        columns = [*_KEY_COLUMNS, *score_names]
        columns += [c for c in (_DESCRIPTION, _PMI_DESCRIPTION) if c in descriptions.column_names]
        rows: Iterator[dict] | Sequence[dict] = descriptions.select_columns(columns).to_list()
    elif isinstance(descriptions, Sequence) and not isinstance(descriptions, (str, bytes)):
        rows = descriptions
        score_names = _numeric_keys(rows)
    else:
        raise ValueError(
            "descriptions must be a datasets.Dataset or a list of dicts, got "
            f"{type(descriptions).__name__}"
        )

    described: dict[tuple[str, int], _Described] = {}
    for position, row in enumerate(rows):
        if not isinstance(row, dict) or any(column not in row for column in _KEY_COLUMNS):
            raise ValueError(
                f"descriptions row {position} must be a dict with 'layer' and 'unit', got {row!r}"
            )
        key = (str(row[schema.LAYER]), int(row[schema.UNIT]))
        if key in described:
            raise ValueError(
                f"descriptions has more than one row for layer {key[0]!r} unit {key[1]}"
            )
        description = row.get(_DESCRIPTION)
        description = None if description is None else str(description)
        scores = tuple(_float_or_none(row.get(name)) for name in score_names)
        pmi = row.get(_PMI_DESCRIPTION)
        replaced = str(pmi) if pmi is not None and str(pmi) != description else None
        described[key] = (description, scores, replaced)
    return score_names, described


def _is_numeric_feature(feature: object) -> bool:
    if not isinstance(feature, datasets.Value):
        return False
    return feature.dtype.startswith(("int", "uint", "float"))


def _numeric_keys(rows: Sequence[dict]) -> list[str]:
    """Keys (in first-seen order) whose values are all numbers or None, with at least one number."""
    kinds: dict[str, str] = {}  # "number", "none" (only None so far) or "other"
    for row in rows:
        if not isinstance(row, dict):
            continue
        for name, value in row.items():
            if name in (*_KEY_COLUMNS, _DESCRIPTION):
                continue
            if value is None:
                kinds.setdefault(name, "none")
            elif isinstance(value, (int, float, np.number)) and not isinstance(
                value, (bool, np.bool_)
            ):
                if kinds.get(name) != "other":
                    kinds[name] = "number"
            else:
                kinds[name] = "other"
    return [name for name, kind in kinds.items() if kind == "number"]


def _float_or_none(value: object) -> float | None:
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN or Infinity: JSON.parse would reject the whole index. Six significant
    # digits are plenty on screen and keep the index small.
    return float(f"{value:.6g}") if value is not None and math.isfinite(value) else None


# --- thumbnails ---------------------------------------------------------------------------


def _write_thumbnails(
    exemplars: datasets.Dataset,
    described: dict[tuple[str, int], _Described],
    thumbs_dir: Path,
    thumbs_url: str,
    thumbnail_size: int,
) -> tuple[list[str], list[_UnitEntry]]:
    """Write one highlighted strip per unit into ``thumbs_dir`` (linked from the page as
    ``thumbs_url/NAME``); return the layers and the page's unit entries."""
    layer_index: dict[str, int] = {}
    entries: dict[tuple[str, int], _UnitEntry] = {}
    mask_shape = stored_mask_shape(exemplars.features)
    wanted = [
        column
        for column in (
            *_KEY_COLUMNS,
            schema.ACTIVATIONS,
            schema.THRESHOLD,
            schema.DEAD,
            schema.DESCRIPTIONS,
        )
        if column in exemplars.column_names
    ]
    table_rows = exemplars.select_columns([*wanted, schema.MASKS, schema.IMAGES])

    # Decoding, resizing and JPEG encoding run in PIL's C code without the GIL, so threads help.
    workers = max(1, min(4, os.cpu_count() or 1))
    progress = tqdm(total=len(exemplars), desc="Writing report thumbnails", unit="unit")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in table_rows.with_format("arrow").iter(batch_size=_BATCH_SIZE):
            metadata = batch.select(wanted).to_pylist()
            masks = _masks_per_row(batch.column(schema.MASKS), mask_shape)
            images = batch.column(schema.IMAGES).to_pylist()
            jobs: list[tuple[_UnitEntry, Future]] = []
            for row, unit_masks, unit_images in zip(metadata, masks, images):
                entry = _unit_entry(row, described, layer_index, entries)
                unit_images = unit_images or []
                if len(unit_images) != len(unit_masks):
                    raise ValueError(
                        f"layer {row[schema.LAYER]!r} unit {entry.unit} has "
                        f"{len(unit_images)} images but {len(unit_masks)} masks"
                    )
                if unit_images:
                    name = f"L{entry.layer_index:03d}-U{entry.unit}.jpg"
                    entry.thumbnail = f"{thumbs_url}/{name}"
                    job = pool.submit(
                        _write_strip, unit_images, unit_masks, thumbs_dir / name, thumbnail_size
                    )
                    jobs.append((entry, job))
            for entry, job in jobs:
                entry.thumbnail_width, entry.thumbnail_height = job.result()
            progress.update(len(metadata))
    progress.close()

    # Described units without exemplars still get a card.
    for (layer, unit), (description, scores, replaced) in described.items():
        if (layer, unit) not in entries:
            index = layer_index.setdefault(layer, len(layer_index))
            entries[(layer, unit)] = _UnitEntry(
                index, unit, description, scores, replaced_description=replaced
            )
    ordered = sorted(entries.values(), key=lambda entry: (entry.layer_index, entry.unit))
    return list(layer_index), ordered


def _unit_entry(
    row: dict,
    described: dict[tuple[str, int], _Described],
    layer_index: dict[str, int],
    entries: dict[tuple[str, int], _UnitEntry],
) -> _UnitEntry:
    """The page entry of one exemplar row, added to ``entries`` (a repeated unit is refused)."""
    layer, unit = str(row[schema.LAYER]), int(row[schema.UNIT])
    if (layer, unit) in entries:
        raise ValueError(f"exemplars has more than one row for layer {layer!r} unit {unit}")
    description, scores, replaced = described.get((layer, unit), (None, (), None))
    entry = _UnitEntry(
        layer_index=layer_index.setdefault(layer, len(layer_index)),
        unit=unit,
        description=description,
        scores=scores,
        dead=bool(row.get(schema.DEAD) or False),
        threshold=_float_or_none(row.get(schema.THRESHOLD)),
        activations=tuple(map(_float_or_none, row.get(schema.ACTIVATIONS) or ())),
        human_descriptions=tuple(str(text) for text in row.get(schema.DESCRIPTIONS) or ()),
        replaced_description=replaced,
    )
    entries[(layer, unit)] = entry
    return entry


def _masks_per_row(column: pa.ChunkedArray, mask_shape: tuple[int, int] | None) -> list[np.ndarray]:
    """Split a batch's ``masks`` column into one (k, H, W) uint8 array per row."""
    if mask_shape is None:
        return [np.asarray(row or [], dtype=np.uint8) for row in column.to_pylist()]
    return masks_per_row(column, mask_shape)


def _write_strip(
    images: list[dict], masks: np.ndarray, path: Path, thumbnail_size: int
) -> tuple[int, int]:
    """Save the unit's exemplars, highlighted and side by side, as one JPEG; return its size."""
    mask_height, mask_width = masks.shape[1:]
    height = thumbnail_size
    width = max(1, round(thumbnail_size * mask_width / mask_height))
    cells = np.empty((len(images), height, width, 3), dtype=np.uint8)
    inside = np.empty((len(images), height, width), dtype=bool)
    for position, (encoded, mask) in enumerate(zip(images, masks)):
        cells[position] = _load_thumbnail(encoded, (width, height))
        # Resize the mask smoothly, then cut at half: a clean outline at thumbnail scale.
        scaled = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        inside[position] = np.asarray(scaled) >= 128

    highlighted = np.where(inside[..., None], cells, (cells * OUTSIDE_BRIGHTNESS).astype(np.uint8))
    highlighted[_outline(inside)] = CONTOUR_COLOR

    count = len(images)
    strip = np.full((height, count * width + (count - 1) * STRIP_GAP, 3), 255, dtype=np.uint8)
    for position in range(count):
        left = position * (width + STRIP_GAP)
        strip[:, left : left + width] = highlighted[position]
    # Full-resolution colour (4:4:4): with the default 4:2:0 a thin yellow line turns green.
    Image.fromarray(strip).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return strip.shape[1], strip.shape[0]


def _load_thumbnail(encoded: dict | None, size: tuple[int, int]) -> np.ndarray:
    """Decode a stored image (``{"bytes", "path"}``) straight to an RGB array of ``size``."""
    if not encoded or (encoded.get("bytes") is None and not encoded.get("path")):
        raise ValueError(f"exemplar image is missing: {encoded!r}")
    source = io.BytesIO(encoded["bytes"]) if encoded.get("bytes") is not None else encoded["path"]
    with Image.open(source) as image:
        image.draft("RGB", size)  # JPEG decodes at a reduced scale: much faster for big images
        thumbnail = image.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(thumbnail)


def _outline(inside: np.ndarray) -> np.ndarray:
    """A 2-pixel line along each region's border (one pixel either side), for (k, H, W) masks.

    Two pixels survive the browser scaling a strip down and JPEG's colour blur; one would not.
    """
    padded = np.pad(inside, ((0, 0), (1, 1), (1, 1)), mode="edge")
    neighbours = (
        padded[:, :-2, 1:-1],
        padded[:, 2:, 1:-1],
        padded[:, 1:-1, :-2],
        padded[:, 1:-1, 2:],
    )
    eroded = inside & neighbours[0] & neighbours[1] & neighbours[2] & neighbours[3]
    dilated = inside | neighbours[0] | neighbours[1] | neighbours[2] | neighbours[3]
    return dilated & ~eroded


# --- page ---------------------------------------------------------------------------------


def _render_page(
    title: str,
    layers: list[str],
    score_names: list[str],
    entries: list[_UnitEntry],
    page_size: int,
) -> str:
    index = {
        "layers": layers,
        "score_names": score_names,
        "page_size": page_size,
        # Verification's faithfulness AUC under which a unit's card is flagged.
        "low_faithfulness_auc": _low_faithfulness_auc(),
        "units": [entry.to_json() for entry in entries],
    }
    # Escape every '<', '>' and '&' so no description can close the <script> element or open an
    # HTML comment ('</script>', '<!--'); JSON.parse reads the \u escapes back unchanged.
    data = (
        json.dumps(index, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    style, script = _template("style.css"), _template("script.js")
    # The policy allows only this page's own style and script (by hash) and local images.
    policy = (
        "default-src 'none'; img-src 'self' file: data:; "
        f"style-src '{_csp_hash(style)}'; script-src '{_csp_hash(script)}'; "
        "base-uri 'none'; form-action 'none'"
    )
    # Character references keep the page ASCII whatever the title's script.
    escaped_title = html.escape(title).encode("ascii", "xmlcharrefreplace").decode("ascii")
    return _fill_template(
        _template("page.html"),
        {
            "__POLICY__": html.escape(policy),
            "__TITLE__": escaped_title,
            "__STYLE__": style,
            "__DATA__": data,
            "__SCRIPT__": script,
            "__UNIT_COUNT__": str(len(entries)),
            "__LAYER_COUNT__": str(len(layers)),
        },
    )


def _names_no_concept(description: str) -> bool:
    """Filler ("nothing in particular", "the upper part of the image"): the page says so, as a
    region alone reads like a concept but names nothing the unit detects."""
    from .probe_world.phrasing import names_nothing  # the grammar: only once a page is rendered

    return names_nothing(description)


def _low_faithfulness_auc() -> float:
    from .faithfulness import LOW_FAITHFULNESS_AUC  # torch: only once a page is rendered

    return LOW_FAITHFULNESS_AUC


def _fill_template(template: str, values: dict[str, str]) -> str:
    """Replace every placeholder of ``template`` (a key of ``values``) in ONE pass: the values
    are never searched, so user text that looks like a placeholder stays text."""
    pattern = re.compile("|".join(re.escape(placeholder) for placeholder in values))
    return pattern.sub(lambda match: values[match.group(0)], template)


@functools.cache
def _template(name: str) -> str:
    """A file of ``milan_hf/resources/report/``."""
    return resources.files("milan_hf").joinpath("resources", "report", name).read_text("utf-8")


def _csp_hash(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode()
