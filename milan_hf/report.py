"""A static HTML report of unit descriptions and their exemplars.

``write_report`` turns an exemplar set (with materialised ``images``) and its descriptions into
``output_dir/index.html`` plus one thumbnail strip per unit under ``output_dir/thumbs/``. The
page needs no network: CSS, JavaScript and the unit index (JSON) are inline, thumbnails are
relative files, and a Content-Security-Policy forbids everything else.

Each strip shows a unit's k exemplars side by side with the region where the unit fires kept
bright, the rest dimmed and a yellow contour around the region, as in the MILAN/NetDissect
visualisations. The page renders one page of units at a time from the embedded index, so
thousands of units neither bloat the DOM nor freeze the browser; search (by description text),
layer filter, sort and page live in the URL fragment (``index.html#q=stripes&layer=layer2``),
which makes every view linkable.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from milan_hf import schema

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

_DESCRIPTION = "description"
_KEY_COLUMNS = (schema.LAYER, schema.UNIT)
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
        if self.human_descriptions:
            entry["h"] = list(self.human_descriptions)
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

    The new report is built in a temporary folder inside ``output_dir``; ``index.html`` is
    replaced in one atomic rename once every thumbnail is on disk, so an interrupted run leaves
    the previous report (or none) in place, never a half-written one.
    """
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
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not a folder")

    score_names, described = _index_descriptions(descriptions)
    output_dir.mkdir(parents=True, exist_ok=True)
    build_id = uuid.uuid4().hex[:12]
    staging_dir = output_dir / f".report-{build_id}.tmp"
    build_thumbs = output_dir / THUMBS_DIR / build_id
    committed = False
    try:
        staging_thumbs = staging_dir / THUMBS_DIR / build_id
        staging_thumbs.mkdir(parents=True)
        layers, entries = _write_thumbnails(
            exemplars, described, score_names, staging_thumbs, thumbnail_size
        )
        page = _render_page(title, layers, score_names, entries, page_size)
        (staging_dir / INDEX_FILE).write_text(page, encoding="utf-8")

        # Commit: move the new thumbnails next to the live page under a fresh name (nothing
        # refers to it yet), then swap index.html in one rename. Before that rename the old
        # report is intact; after it the new one is complete.
        build_thumbs.parent.mkdir(exist_ok=True)
        os.replace(staging_thumbs, build_thumbs)
        os.replace(staging_dir / INDEX_FILE, output_dir / INDEX_FILE)
        committed = True
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
        if not committed:
            shutil.rmtree(build_thumbs, ignore_errors=True)
    _remove_stale_builds(output_dir, keep=build_id)
    return output_dir / INDEX_FILE


def _remove_stale_builds(output_dir: Path, keep: str) -> None:
    """Delete thumbnails of earlier reports and staging folders of interrupted runs."""
    for previous in (output_dir / THUMBS_DIR).iterdir():
        if previous.is_dir() and previous.name != keep:
            shutil.rmtree(previous, ignore_errors=True)
    for staging in output_dir.glob(".report-*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)


# --- descriptions -------------------------------------------------------------------------


def _index_descriptions(
    descriptions: datasets.Dataset | Sequence[dict],
) -> tuple[list[str], dict[tuple[str, int], tuple[str | None, tuple[float | None, ...]]]]:
    """Return the numeric score columns and ``{(layer, unit): (description, scores)}``."""
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
        if _DESCRIPTION in descriptions.column_names:
            columns.append(_DESCRIPTION)
        rows: Iterator[dict] | Sequence[dict] = descriptions.select_columns(columns).to_list()
    elif isinstance(descriptions, Sequence) and not isinstance(descriptions, (str, bytes)):
        rows = descriptions
        score_names = _numeric_keys(rows)
    else:
        raise ValueError(
            "descriptions must be a datasets.Dataset or a list of dicts, got "
            f"{type(descriptions).__name__}"
        )

    described: dict[tuple[str, int], tuple[str | None, tuple[float | None, ...]]] = {}
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
        scores = tuple(_float_or_none(row.get(name)) for name in score_names)
        described[key] = (None if description is None else str(description), scores)
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
    described: dict[tuple[str, int], tuple[str | None, tuple[float | None, ...]]],
    score_names: list[str],
    thumbs_dir: Path,
    thumbnail_size: int,
) -> tuple[list[str], list[_UnitEntry]]:
    """Write one highlighted strip per unit; return the layers and the page's unit entries."""
    layer_index: dict[str, int] = {}
    entries: dict[tuple[str, int], _UnitEntry] = {}
    mask_shape = _mask_shape(exemplars.features[schema.MASKS])
    wanted = [
        column
        for column in (*_KEY_COLUMNS, schema.ACTIVATIONS, schema.THRESHOLD, schema.DEAD)
        if column in exemplars.column_names
    ]
    with_human = schema.DESCRIPTIONS in exemplars.column_names
    if with_human:
        wanted.append(schema.DESCRIPTIONS)
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
                layer, unit = str(row[schema.LAYER]), int(row[schema.UNIT])
                if (layer, unit) in entries:
                    raise ValueError(
                        f"exemplars has more than one row for layer {layer!r} unit {unit}"
                    )
                index = layer_index.setdefault(layer, len(layer_index))
                description, scores = described.get((layer, unit), (None, ()))
                entry = _UnitEntry(
                    layer_index=index,
                    unit=unit,
                    description=description,
                    scores=scores,
                    dead=bool(row.get(schema.DEAD) or False),
                    threshold=_float_or_none(row.get(schema.THRESHOLD)),
                    activations=tuple(map(_float_or_none, row.get(schema.ACTIVATIONS) or ())),
                    human_descriptions=tuple(
                        str(text) for text in row.get(schema.DESCRIPTIONS) or ()
                    ),
                )
                entries[(layer, unit)] = entry
                unit_images = unit_images or []
                if len(unit_images) != len(unit_masks):
                    raise ValueError(
                        f"layer {layer!r} unit {unit} has {len(unit_images)} images but "
                        f"{len(unit_masks)} masks"
                    )
                if unit_images:
                    name = f"L{index:03d}-U{unit}.jpg"
                    entry.thumbnail = f"{THUMBS_DIR}/{thumbs_dir.name}/{name}"
                    job = pool.submit(
                        _write_strip, unit_images, unit_masks, thumbs_dir / name, thumbnail_size
                    )
                    jobs.append((entry, job))
            for entry, job in jobs:
                entry.thumbnail_width, entry.thumbnail_height = job.result()
            progress.update(len(metadata))
    progress.close()

    # Described units without exemplars still get a card.
    for (layer, unit), (description, scores) in described.items():
        if (layer, unit) not in entries:
            index = layer_index.setdefault(layer, len(layer_index))
            entries[(layer, unit)] = _UnitEntry(index, unit, description, scores)
    ordered = sorted(entries.values(), key=lambda entry: (entry.layer_index, entry.unit))
    return list(layer_index), ordered


def _mask_shape(feature: object) -> tuple[int, int] | None:
    """(H, W) when masks are the schema's ``List(Array2D)``, which allows a zero-copy read."""
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Array2D) and len(inner.shape) == 2:
        return tuple(inner.shape)  # type: ignore[return-value]
    return None


def _masks_per_row(column: pa.ChunkedArray, mask_shape: tuple[int, int] | None) -> list[np.ndarray]:
    """Split a batch's ``masks`` column into one (k, H, W) uint8 array per row."""
    if mask_shape is None:
        return [np.asarray(row or [], dtype=np.uint8) for row in column.to_pylist()]
    lists = column.combine_chunks()
    lengths = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    items = lists.flatten()
    storage = items.storage if isinstance(items, pa.ExtensionArray) else items
    pixels = storage.flatten().flatten().to_numpy(zero_copy_only=False)
    stacked = pixels.reshape(-1, *mask_shape)
    if len(stacked) != lengths.sum():
        raise ValueError(
            f"masks hold {len(stacked)} arrays of shape {mask_shape} for {lengths.sum()} images"
        )
    return np.split(stacked, np.cumsum(lengths)[:-1])


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
    # The policy allows only this page's own style and script (by hash) and local images.
    policy = (
        "default-src 'none'; img-src 'self' file: data:; "
        f"style-src '{_csp_hash(_STYLE)}'; script-src '{_csp_hash(_SCRIPT)}'; "
        "base-uri 'none'; form-action 'none'"
    )
    replacements = {
        "__POLICY__": html.escape(policy),
        "__TITLE__": html.escape(title),
        "__STYLE__": _STYLE,
        "__DATA__": data,
        "__SCRIPT__": _SCRIPT,
        "__UNIT_COUNT__": str(len(entries)),
        "__LAYER_COUNT__": str(len(layers)),
    }
    page = _PAGE
    for placeholder, value in replacements.items():
        page = page.replace(placeholder, value)
    return page


def _csp_hash(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode()


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="__POLICY__">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<header class="top">
<h1>__TITLE__</h1>
<p class="summary">__UNIT_COUNT__ units in __LAYER_COUNT__ layers. Bright regions with a yellow
outline are where the unit fires; the rest of each exemplar is dimmed.</p>
<form class="controls" id="controls" role="search">
<label>Search <input type="search" id="search" placeholder="words in the description"
 autocomplete="off"></label>
<label>Layer <select id="layer"><option value="">all layers</option></select></label>
<label>Sort <select id="sort"><option value="">layer, unit</option></select></label>
<label><input type="checkbox" id="hide-dead"> hide dead units</label>
</form>
<nav class="pager" id="pager-top"></nav>
</header>
<main id="units"><noscript><p>This report needs JavaScript to list its units.</p></noscript></main>
<nav class="pager" id="pager-bottom"></nav>
<script type="application/json" id="report-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

_STYLE = """
:root { color-scheme: light; --ink: #1d1d1f; --muted: #6b6b73; --line: #dedee3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: #f6f6f8; }
.top { position: sticky; top: 0; z-index: 1; background: #fff; padding: 12px 20px 8px;
  border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 0 0 4px; }
.summary { margin: 0 0 8px; color: var(--muted); font-size: 13px; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; }
.controls input[type=search] { width: 22em; padding: 4px 6px; font: inherit; }
.controls select { padding: 3px; font: inherit; }
.pager { display: flex; gap: 10px; align-items: center; padding: 6px 0; font-size: 13px; }
#pager-bottom { padding: 6px 20px 24px; }
.pager button { font: inherit; padding: 2px 10px; }
main { padding: 4px 20px; }
.layer-heading { font-size: 17px; margin: 18px 0 6px; padding-bottom: 3px;
  border-bottom: 2px solid var(--line); font-family: ui-monospace, monospace; }
.unit { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
  margin: 8px 0; }
.unit.dead { background: #f1f1f1; }
.unit-head { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: baseline; }
.unit-name { font-family: ui-monospace, monospace; font-size: 13px; color: var(--muted); }
.description { font-size: 16px; font-weight: 600; margin: 0; }
.description.missing { font-weight: 400; font-style: italic; color: var(--muted); }
.badge { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; padding: 1px 6px;
  border-radius: 3px; background: #b3261e; color: #fff; }
.scores { display: flex; flex-wrap: wrap; gap: 2px 14px; margin: 2px 0 6px; font-size: 12px;
  color: var(--muted); }
.scores dt { display: inline; }
.scores dd { display: inline; margin: 0 0 0 4px; font-variant-numeric: tabular-nums;
  color: var(--ink); }
.strip { display: block; max-width: 100%; height: auto; background: #ddd; }
.no-images { font-size: 12px; color: var(--muted); margin: 0; }
.human { margin: 6px 0 0; padding-left: 18px; font-size: 13px; color: var(--muted); }
.empty { color: var(--muted); padding: 20px 0; }
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var layers = data.layers, scoreNames = data.score_names, units = data.units;
  var pageSize = data.page_size;
  var search = document.getElementById("search");
  var layerSelect = document.getElementById("layer");
  var sortSelect = document.getElementById("sort");
  var hideDead = document.getElementById("hide-dead");
  var list = document.getElementById("units");
  var pagers = [document.getElementById("pager-top"), document.getElementById("pager-bottom")];
  var page = 1;

  // Lower-cased text searched for each unit: its description and any human descriptions.
  units.forEach(function (unit) {
    unit.text = ((unit.d || "") + " " + (unit.h || []).join(" ")).toLowerCase();
  });

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;  // text, never markup
    return node;
  }

  function option(value, label) {
    var node = el("option", "", label);
    node.value = value;
    return node;
  }

  var counts = {};
  units.forEach(function (unit) { counts[unit.l] = (counts[unit.l] || 0) + 1; });
  layers.forEach(function (name, index) {
    layerSelect.appendChild(option(name, name + " (" + (counts[index] || 0) + ")"));
  });
  scoreNames.forEach(function (name, index) {
    sortSelect.appendChild(option("s" + index + ":desc", name + ", high to low"));
    sortSelect.appendChild(option("s" + index + ":asc", name + ", low to high"));
  });

  function formatNumber(value) {
    if (value === null || value === undefined) return "n/a";
    var magnitude = Math.abs(value);
    if (magnitude !== 0 && (magnitude >= 1e4 || magnitude < 1e-3)) return value.toExponential(2);
    return value.toFixed(3);
  }

  function readState() {
    var params = new URLSearchParams(location.hash.replace(/^#/, "") || location.search);
    search.value = params.get("q") || "";
    var layer = params.get("layer") || "";
    layerSelect.value = layers.indexOf(layer) >= 0 ? layer : "";
    var sort = params.get("sort") || "";
    sortSelect.value = sort;
    if (sortSelect.value !== sort) sortSelect.value = "";
    hideDead.checked = params.get("dead") === "hide";
    page = Math.max(1, parseInt(params.get("page"), 10) || 1);
  }

  function writeState() {
    var params = new URLSearchParams();
    if (search.value) params.set("q", search.value);
    if (layerSelect.value) params.set("layer", layerSelect.value);
    if (sortSelect.value) params.set("sort", sortSelect.value);
    if (hideDead.checked) params.set("dead", "hide");
    if (page > 1) params.set("page", String(page));
    var hash = params.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  function matchingUnits() {
    var terms = search.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var layer = layerSelect.value ? layers.indexOf(layerSelect.value) : -1;
    var matches = units.filter(function (unit) {
      if (layer >= 0 && unit.l !== layer) return false;
      if (hideDead.checked && unit.x) return false;
      return terms.every(function (term) { return unit.text.indexOf(term) >= 0; });
    });
    var sort = /^s(\\d+):(asc|desc)$/.exec(sortSelect.value);
    if (sort) {
      var score = Number(sort[1]), sign = sort[2] === "asc" ? 1 : -1;
      matches.sort(function (a, b) {
        var x = a.s[score], y = b.s[score];
        if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
        if (y === null || y === undefined) return -1;
        return sign * (x - y) || a.l - b.l || a.u - b.u;
      });
    }
    return matches;
  }

  function unitCard(unit, showLayer) {
    var card = el("article", unit.x ? "unit dead" : "unit");
    card.setAttribute("data-layer", layers[unit.l]);
    card.setAttribute("data-unit", String(unit.u));
    var head = el("div", "unit-head");
    head.appendChild(el("span", "unit-name",
      (showLayer ? layers[unit.l] + " \\u00b7 " : "") + "unit " + unit.u));
    if (unit.d !== null && unit.d !== undefined) {
      head.appendChild(el("p", "description", unit.d));
    } else {
      head.appendChild(el("p", "description missing", "no description"));
    }
    if (unit.x) head.appendChild(el("span", "badge", "dead"));
    card.appendChild(head);

    var scores = el("dl", "scores");
    function score(name, value) {
      var item = el("div");
      item.appendChild(el("dt", "", name));
      item.appendChild(el("dd", "", formatNumber(value)));
      scores.appendChild(item);
    }
    // Units without a description row have no scores: show none rather than a row of n/a.
    if (unit.s.length) scoreNames.forEach(function (name, index) { score(name, unit.s[index]); });
    if (unit.a.length) score("top activation", unit.a[0]);
    score("threshold", unit.th);
    card.appendChild(scores);

    if (unit.t) {
      var img = el("img", "strip");
      img.loading = "lazy";
      img.decoding = "async";
      img.width = unit.w;
      img.height = unit.ht;
      img.alt = "exemplars of " + layers[unit.l] + " unit " + unit.u;
      img.title = "activations: " + unit.a.map(formatNumber).join(", ");
      img.src = unit.t;
      card.appendChild(img);
    } else {
      card.appendChild(el("p", "no-images", "no exemplar images"));
    }
    if (unit.h && unit.h.length) {
      var human = el("ul", "human");
      unit.h.forEach(function (text) { human.appendChild(el("li", "", text)); });
      card.appendChild(human);
    }
    return card;
  }

  function renderPager(pager, pages, first, last, total) {
    pager.textContent = "";
    var previous = el("button", "previous", "previous");
    previous.type = "button";
    previous.disabled = page <= 1;
    previous.addEventListener("click", function () { goTo(page - 1); });
    var next = el("button", "next", "next");
    next.type = "button";
    next.disabled = page >= pages;
    next.addEventListener("click", function () { goTo(page + 1); });
    pager.appendChild(previous);
    pager.appendChild(el("span", "page-status", "page " + page + " of " + pages));
    pager.appendChild(next);
    pager.appendChild(el("span", "match-status", total ?
      "units " + first + "\\u2013" + last + " of " + total + " matching (" + units.length +
      " in all)" : "no matching units (" + units.length + " in all)"));
  }

  function render() {
    var matches = matchingUnits();
    var pages = Math.max(1, Math.ceil(matches.length / pageSize));
    page = Math.min(page, pages);
    var start = (page - 1) * pageSize;
    var shown = matches.slice(start, start + pageSize);
    var byLayer = !sortSelect.value;
    var fragment = document.createDocumentFragment();
    var lastLayer = -1;
    shown.forEach(function (unit) {
      if (byLayer && unit.l !== lastLayer) {
        fragment.appendChild(el("h2", "layer-heading", layers[unit.l]));
        lastLayer = unit.l;
      }
      fragment.appendChild(unitCard(unit, !byLayer));
    });
    if (!shown.length) fragment.appendChild(el("p", "empty", "No unit matches."));
    list.textContent = "";
    list.appendChild(fragment);
    pagers.forEach(function (pager) {
      renderPager(pager, pages, start + 1, start + shown.length, matches.length);
    });
  }

  function goTo(target) {
    page = target;
    writeState();
    render();
    window.scrollTo(0, 0);
  }

  var typing = null;
  search.addEventListener("input", function () {
    clearTimeout(typing);
    typing = setTimeout(function () { page = 1; writeState(); render(); }, 120);
  });
  [layerSelect, sortSelect, hideDead].forEach(function (control) {
    control.addEventListener("change", function () { page = 1; writeState(); render(); });
  });
  document.getElementById("controls").addEventListener("submit", function (event) {
    event.preventDefault();
  });
  window.addEventListener("hashchange", function () { readState(); render(); });

  readState();
  render();
})();
"""
