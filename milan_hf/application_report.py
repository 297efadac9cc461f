"""HTML pages for the three applications: analysis, audit (with the matching units' exemplars)
and editing, plus an index linking them. Self-contained static files, no JavaScript."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_STYLE = """<style>
body{font-family:sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}
.unit{margin:.8em 0}.strip img{height:72px;image-rendering:pixelated;margin-right:2px}
</style>"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"{_STYLE}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _highlighted(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    """The exemplar with what lies outside the unit's mask dimmed."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape == pixels.shape[:2] and mask.any():
            pixels = np.where(mask[..., None], pixels, pixels * 0.3)
    return Image.fromarray(pixels.astype(np.uint8))


def _exemplar_strip(row: Mapping[str, Any], folder: Path, stem: str, max_images: int) -> str:
    images = list(row.get("images") or [])[:max_images]
    masks = list(row.get("masks") or [])
    tags = []
    for index, image in enumerate(images):
        path = folder / f"{stem}-{index}.png"
        _highlighted(image, masks[index] if index < len(masks) else None).save(path)
        tags.append(f"<img src='{html.escape(folder.name)}/{html.escape(path.name)}' alt=''>")
    return f"<div class='strip'>{''.join(tags)}</div>"


def write_audit_page(
    result: Any,
    output_dir: str | Path,
    exemplars: Mapping[str, Any] | None = None,
    max_units: int = 24,
    max_images: int = 6,
) -> Path:
    """``output_dir/audit.html``: counts per model and layer, then each model's matching units
    with their descriptions and top exemplars (``exemplars``: model name -> exemplar set)."""
    output_dir = Path(output_dir)
    thumbs = output_dir / "audit_thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    rows = [
        [m.name, layer, c["matching"], c["units"]]
        for m in result.models
        for layer, c in m.layers.items()
    ]
    how = f"words {', '.join(result.words)}" if result.words else ""
    if result.threshold is not None:
        how += f"{' or ' if how else ''}embedding cosine ≥ {result.threshold}"
    body = [
        f"<p>Units whose description matches <b>{html.escape(result.query)}</b> "
        f"({html.escape(how)}).</p>",
        _table(["model", "layer", "matching units", "units"], rows),
    ]
    for model in result.models:
        body.append(f"<h2>{html.escape(model.name)}: {model.matching} of {model.units} units</h2>")
        found = exemplars.get(model.name) if exemplars else None
        row_of = {}
        if found is not None:
            row_of = {
                (str(layer), int(unit)): index
                for index, (layer, unit) in enumerate(zip(found["layer"], found["unit"]))
            }
        for match in model.matches[:max_units]:
            key = (match["layer"], match["unit"])
            similarity = (
                "" if match["similarity"] is None else f" (cosine {match['similarity']:.2f})"
            )
            strip = ""
            if key in row_of:
                stem = f"{model.name}-{match['layer']}-{match['unit']}".replace("/", "_")
                strip = _exemplar_strip(found[row_of[key]], thumbs, stem, max_images)
            body.append(
                f"<div class='unit'><b>{html.escape(match['layer'])} unit {match['unit']}</b>: "
                f"{html.escape(match['description'])}{similarity}{strip}</div>"
            )
        if len(model.matches) > max_units:
            body.append(f"<p>… and {len(model.matches) - max_units} more.</p>")
    path = output_dir / "audit.html"
    path.write_text(_page(f"Audit: {result.query}", "".join(body)))
    return path


def write_analysis_page(
    analysis: Mapping[str, Any], figure: str | Path, output_dir: str | Path
) -> Path:
    """``output_dir/analysis.html``: the figure, the curves' end points and the layer shares."""
    output_dir = Path(output_dir)
    curves = analysis["curves"]
    rows = [
        [
            name,
            curve["accuracy"][0],
            curve["accuracy"][len(curve["accuracy"]) // 2],
            curve["accuracy"][-1],
        ]
        for name, curve in curves.items()
    ]
    middle = next(iter(curves.values()))["num_ablated"]
    shares = [[layer, *values.values()] for layer, values in analysis["layer_shares"].items()]
    share_header = ["layer", *next(iter(analysis["layer_shares"].values()))]
    body = (
        f"<p>Part-of-speech tags: {html.escape(analysis['tagger'])}; {analysis['mode']} ablation."
        f"</p><img src='{html.escape(Path(figure).name)}' alt='analysis figure' "
        "style='max-width:100%'>"
        + _table(
            [
                "order",
                "accuracy, none ablated",
                f"{middle[len(middle) // 2]} ablated",
                f"{middle[-1]} ablated",
            ],
            rows,
        )
        + "<h2>Share of units with each property</h2>"
        + _table(share_header, shares)
    )
    path = output_dir / "analysis.html"
    path.write_text(_page("Analysis: ablating units by their descriptions", body))
    return path


def write_edit_page(
    edit: Mapping[str, Any], figure: str | Path | None, output_dir: str | Path
) -> Path:
    """``output_dir/edit.html``: before/after table, the text units and the curve figure."""
    output_dir = Path(output_dir)
    chosen = edit["chosen"]
    table = _table(
        [
            "split",
            "accuracy before",
            f"after ablating {chosen} text units",
            "change",
            f"after all {edit['num_text_units']}",
        ],
        [[r["split"], r["before"], r["chosen"], r["change"], r["all"]] for r in edit["table"]],
    )
    units = [
        [f"{layer} {unit}", edit["descriptions"][f"{layer}:{unit}"], accuracy]
        for (layer, unit), accuracy in zip(edit["text_units"], edit["single_unit_validation"])
    ]
    figure_tag = ""
    if figure is not None:
        figure_tag = (
            f"<img src='{html.escape(Path(figure).name)}' alt='edit curve' style='max-width:100%'>"
        )
    body = (
        f"<p>{edit['num_text_units']} units described as text; {edit['truly_textual']} of them "
        "respond to written words (paired scenes with and without a word). The number ablated, "
        f"{chosen} ({edit['truly_textual_chosen']} of them responsive), is the best on the "
        "adversarial validation split.</p>"
        + table
        + figure_tag
        + "<h2>Text units, in ablation order</h2>"
        + _table(["unit", "description", "validation accuracy, ablated alone"], units)
    )
    path = output_dir / "edit.html"
    path.write_text(_page("Editing: ablating the units described as text", body))
    return path


def write_applications_index(output_dir: str | Path, pages: Mapping[str, str]) -> Path:
    """``output_dir/index.html`` linking the application pages (title -> relative path)."""
    links = "".join(
        f"<li><a href='{html.escape(href)}'>{html.escape(title)}</a></li>"
        for title, href in pages.items()
    )
    path = Path(output_dir) / "index.html"
    path.write_text(_page("What the descriptions are for", f"<ul>{links}</ul>"))
    return path
