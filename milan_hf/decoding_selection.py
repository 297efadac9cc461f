"""Choosing the captioner's decoding (PMI weight λ and beam width) on validation units.

Every setting of a small grid describes the same validation units of known meaning (synthetic
units of a validation seed, never the benchmark's); the winner names the most units' concepts
strictly (``phrasing.expression_named``), then has the fewest defect strings, then the least
filler, then the narrowest beam (the cheapest). The held-out networks and the benchmark seeds
are never looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_PMI_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
DEFAULT_BEAM_WIDTHS = (5, 10, 20)


def parse_concept(concept: str) -> tuple[str, ...]:
    """``expression_text``'s inverse: ``red AND top`` -> ("and", "red", "top")."""
    for operator in ("AND", "OR", "ABOVE"):
        if f" {operator} " in concept:
            return (operator.lower(), *concept.split(f" {operator} "))
    return ("none",) if concept == "none" else ("concept", concept)


def score_descriptions(
    descriptions: Sequence[str], expressions: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Strict concept accuracy, filler share and defect count of descriptions of units whose
    expressions are known."""
    from milan_hf.probe_world import phrasing

    if len(descriptions) != len(expressions) or not descriptions:
        raise ValueError(
            f"need one description per expression, got {len(descriptions)} and {len(expressions)}"
        )
    named = [phrasing.expression_named(d, e) for d, e in zip(descriptions, expressions)]
    filler = [phrasing.is_filler(d) for d in descriptions]
    defects = sum(bool(phrasing.description_defects(d)) for d in descriptions)
    return {
        "strict_accuracy": sum(named) / len(named),
        "filler_share": sum(filler) / len(filler),
        "defects": defects,
    }


def selection_key(row: dict[str, Any]) -> tuple[float, ...]:
    """Higher is better: accuracy, then fewer defects, less filler, a narrower beam."""
    return (row["strict_accuracy"], -row["defects"], -row["filler_share"], -row["num_beams"])


def describe_with(
    model: Any,
    tokenizer: Any,
    features: torch.Tensor,
    exemplar_mask: torch.Tensor,
    pmi_weight: float,
    num_beams: int,
    batch_size: int = 64,
) -> list[str]:
    """Descriptions of every unit with one decoding setting (the model's other defaults)."""
    device = next(model.parameters()).device
    texts: list[str] = []
    for start in range(0, len(features), batch_size):
        with torch.no_grad():
            output = model.generate(
                exemplar_features=features[start : start + batch_size].to(device, torch.float32),
                exemplar_mask=exemplar_mask[start : start + batch_size].to(device),
                pmi_weight=pmi_weight,
                num_beams=num_beams,
            )
        texts.extend(tokenizer.batch_decode(output.sequences, skip_special_tokens=True))
    return texts


def sweep_decoding(
    model: Any,
    tokenizer: Any,
    features: torch.Tensor,
    exemplar_mask: torch.Tensor,
    expressions: Sequence[Sequence[str]],
    pmi_weights: Sequence[float] = DEFAULT_PMI_WEIGHTS,
    beam_widths: Sequence[int] = DEFAULT_BEAM_WIDTHS,
    batch_size: int = 64,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every (λ, beam) on the validation units; returns the winner and the table."""
    from tqdm.auto import tqdm

    if not pmi_weights or not beam_widths:
        raise ValueError(f"empty sweep: pmi_weights={pmi_weights!r}, beams={beam_widths!r}")
    bad = [b for b in beam_widths if b < 1] + [w for w in pmi_weights if w < 0]
    if bad:
        raise ValueError(f"beam widths must be >= 1 and PMI weights >= 0, got {bad}")
    settings = [(w, b) for b in beam_widths for w in pmi_weights]
    table = []
    for pmi_weight, num_beams in tqdm(settings, desc="decoding sweep"):
        texts = describe_with(
            model, tokenizer, features, exemplar_mask, pmi_weight, num_beams, batch_size
        )
        scores = score_descriptions(texts, expressions)
        table.append({"pmi_weight": pmi_weight, "num_beams": num_beams, **scores})
    return max(table, key=selection_key), table


def markdown_table(table: Sequence[dict[str, Any]], winner: dict[str, Any]) -> str:
    """The sweep as a markdown table, the chosen row in bold."""
    lines = [
        "| λ (PMI weight) | beam | strict accuracy | filler share | defects |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        cells = [
            f"{row['pmi_weight']:g}",
            str(row["num_beams"]),
            f"{row['strict_accuracy']:.3f}",
            f"{row['filler_share']:.3f}",
            str(row["defects"]),
        ]
        if row is winner:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
