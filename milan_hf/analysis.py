"""Analysis: which units matter, told by a property of their descriptions (MILAN, Figure 4).

Each unit's description is scored by five properties: the number of adjectives, nouns and
prepositions (``milan_hf.part_of_speech``: spaCy when an English pipeline is installed, else the
probe-world lexicon), its length in words, and its word diversity, the largest cosine distance
between the sentence embeddings (all-MiniLM-L6-v2, the BERTScore model) of two of its content
words. Units are then ablated cumulatively in decreasing order of each property (ties in a
seeded random order) and the classifier's accuracy is measured against the number ablated, with
a random order as the baseline. ``layer_shares`` gives, per layer, the share of units whose
description has the property: at least one adjective / noun / preposition, or a length / word
diversity above the median over all units.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from . import part_of_speech as pos
from . import schema
from .ablation import AblationCurve, AccuracyEvaluator, Unit, ablation_curve, ablation_steps
from .vision_models import VisionModel

PROPERTIES = ("adjectives", "nouns", "prepositions", "length", "word_diversity")
_COUNTED_TAGS = {"adjectives": pos.ADJECTIVE, "nouns": pos.NOUN, "prepositions": pos.PREPOSITION}
_CONTENT_TAGS = {pos.ADJECTIVE, pos.NOUN, "VERB", "ADV", "NUM"}
RANDOM = "random"


def word_embeddings(
    words: Sequence[str], sentence_model: str | None = None
) -> dict[str, torch.Tensor]:
    """word -> L2-normalised MiniLM embedding (mean-pooled, as sentence-transformers does)."""
    from .metrics.embedding_cosine import embed_sentences, load_sentence_encoder
    from .metrics.sentence_model import default_sentence_model_path

    unique = sorted(set(words))
    if not unique:
        return {}
    tokenizer, model = load_sentence_encoder(
        str(sentence_model or default_sentence_model_path()), "cpu"
    )
    embeddings = embed_sentences(unique, tokenizer, model)
    return dict(zip(unique, embeddings))


def word_diversity(words: Sequence[str], embeddings: dict[str, torch.Tensor]) -> float:
    """The largest cosine distance (1 − cos) between two of ``words``; 0 for fewer than two."""
    distinct = sorted(set(words))
    if len(distinct) < 2:
        return 0.0
    matrix = torch.stack([embeddings[word] for word in distinct])
    return float((1 - matrix @ matrix.T).max().clamp(min=0))


def description_properties(
    descriptions: Sequence[str], tagger: Any = None, sentence_model: str | None = None
) -> dict[str, list[float]]:
    """The five properties (``PROPERTIES``) of each description."""
    tagger = tagger or pos.load_tagger()
    tagged = [tagger.tag(text) for text in descriptions]
    content = [[word for word, tag in tags if tag in _CONTENT_TAGS] for tags in tagged]
    embeddings = word_embeddings([word for words in content for word in words], sentence_model)
    properties: dict[str, list[float]] = {
        name: [float(pos.count_tags(tags, tag)) for tags in tagged]
        for name, tag in _COUNTED_TAGS.items()
    }
    properties["length"] = [float(len(tags)) for tags in tagged]
    properties["word_diversity"] = [word_diversity(words, embeddings) for words in content]
    return properties


def property_order(values: Sequence[float], seed: int = 0) -> list[int]:
    """Indices by decreasing value, ties in a seeded random order."""
    tie_break = np.random.default_rng(seed).permutation(len(values))
    return sorted(range(len(values)), key=lambda i: (-values[i], tie_break[i]))


def layer_shares(
    layers: Sequence[str], properties: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    """layer -> property -> share of the layer's units that have it (see the module docs)."""
    has = {}
    for name, values in properties.items():
        values = np.asarray(values, dtype=float)
        has[name] = values >= 1 if name in _COUNTED_TAGS else values > np.median(values)
    layer_array = np.asarray(layers)
    return {
        layer: {name: float(flags[layer_array == layer].mean()) for name, flags in has.items()}
        for layer in dict.fromkeys(layers)
    }


@dataclass
class AnalysisResult:
    tagger: str
    units: list[Unit]
    descriptions: list[str]
    properties: dict[str, list[float]]
    curves: dict[str, AblationCurve]
    layer_shares: dict[str, dict[str, float]]
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "tagger": self.tagger,
            "mode": self.mode,
            "units": [
                {
                    "layer": layer,
                    "unit": unit,
                    "description": text,
                    **{name: values[i] for name, values in self.properties.items()},
                }
                for i, ((layer, unit), text) in enumerate(zip(self.units, self.descriptions))
            ],
            "curves": {
                name: {"num_ablated": curve.num_ablated, "accuracy": curve.accuracy}
                for name, curve in self.curves.items()
            },
            "layer_shares": self.layer_shares,
        }


def analyze_descriptions(
    model: torch.nn.Module | VisionModel,
    descriptions: datasets.Dataset,
    dataset: datasets.Dataset,
    *,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    num_points: int | None = 11,
    mode: str = "zero",
    seed: int = 0,
    tagger: Any = None,
    sentence_model: str | None = None,
    **evaluator_options: Any,
) -> AnalysisResult:
    """Score the described units by each property and ablate them in that order.

    Args:
        descriptions: ``describe``'s output (columns layer, unit, description).
        dataset: labelled images to measure accuracy on (image and label columns, see
            :class:`~milan_hf.ablation.AccuracyEvaluator` for ``evaluator_options``).
        num_points: accuracies measured per curve, evenly spaced in the number ablated
            (``None``: after every unit).
        mode: ``"zero"`` or ``"mean"`` ablation.
    """
    for column in (schema.LAYER, schema.UNIT, schema.DESCRIPTION):
        if column not in descriptions.column_names:
            raise ValueError(f"the descriptions have no column {column!r}")
    if len(descriptions) == 0:
        raise ValueError("no described units to analyse")
    tagger = tagger or pos.load_tagger()
    units = [
        (str(layer), int(unit))
        for layer, unit in zip(descriptions[schema.LAYER], descriptions[schema.UNIT])
    ]
    texts = [str(text) for text in descriptions[schema.DESCRIPTION]]
    properties = description_properties(texts, tagger, sentence_model)
    evaluator = AccuracyEvaluator(model, dataset, transform=transform, **evaluator_options)
    means = None
    if mode == "mean":
        from .ablation import unit_means

        means = unit_means(evaluator, sorted({layer for layer, _ in units}))
    steps = ablation_steps(len(units), num_points)
    orders = {name: property_order(values, seed) for name, values in properties.items()}
    orders[RANDOM] = list(np.random.default_rng(seed).permutation(len(units)))
    curves = {
        name: ablation_curve(
            evaluator,
            [units[i] for i in order],
            steps=steps,
            mode=mode,
            means=means,
            desc=f"ablating by {name}",
        )
        for name, order in orders.items()
    }
    return AnalysisResult(
        tagger=tagger.name,
        units=units,
        descriptions=texts,
        properties=properties,
        curves=curves,
        layer_shares=layer_shares([layer for layer, _ in units], properties),
        mode=mode,
    )


def plot_analysis(result: AnalysisResult, path: str | Path, title: str | None = None) -> Path:
    """Figure 4 of MILAN: accuracy vs units ablated per property, and shares per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves_axis, shares_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in result.curves.items():
        style = {"color": "black", "linestyle": "--"} if name == RANDOM else {}
        curves_axis.plot(
            curve.num_ablated, curve.accuracy, marker="o", markersize=3, label=name, **style
        )
    curves_axis.set_xlabel("units ablated")
    curves_axis.set_ylabel("accuracy")
    curves_axis.set_title("ablating units in decreasing order of each property")
    curves_axis.legend(fontsize=8)
    layers = list(result.layer_shares)
    width = 0.8 / len(PROPERTIES)
    for index, name in enumerate(PROPERTIES):
        positions = np.arange(len(layers)) + (index - (len(PROPERTIES) - 1) / 2) * width
        shares = [result.layer_shares[layer][name] for layer in layers]
        shares_axis.bar(positions, shares, width, label=name)
    shares_axis.set_xticks(np.arange(len(layers)), layers)
    shares_axis.set_ylim(0, 1)
    shares_axis.set_ylabel("share of units")
    shares_axis.set_title("units with each property, per layer")
    shares_axis.legend(fontsize=8)
    figure.suptitle(title or f"description properties ({result.tagger})", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def save_analysis(result: AnalysisResult, output_dir: str | Path) -> dict[str, Path]:
    """Write ``analysis.json`` and ``analysis.png`` into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "analysis.json"
    json_path.write_text(json.dumps(result.as_dict(), indent=2))
    return {"json": json_path, "figure": plot_analysis(result, output_dir / "analysis.png")}
