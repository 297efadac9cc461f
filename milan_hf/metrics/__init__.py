"""Description metrics as local ``evaluate`` modules (hub metric scripts do not load offline).

Each module holds one ``evaluate.Metric``: use the class directly, through :func:`load_metric`,
or with ``evaluate.load(metric_path(name))``. Every metric takes ``predictions`` (one string per
unit) and ``references`` (a list of strings per unit) and lists in ``per_prediction_keys`` the
result keys that hold one value per prediction.
"""

from __future__ import annotations

from pathlib import Path

import evaluate

from milan_hf.metrics.bertscore import PAPER_BERTSCORE_SETTINGS, DescriptionBertScore
from milan_hf.metrics.bleu import DescriptionBleu
from milan_hf.metrics.embedding_cosine import DescriptionEmbeddingCosine
from milan_hf.metrics.rouge import DescriptionRougeL
from milan_hf.metrics.sentence_model import default_sentence_model_path

#: Metric name -> class. The names are also the module file names.
METRICS: dict[str, type[evaluate.Metric]] = {
    "bertscore": DescriptionBertScore,
    "bleu": DescriptionBleu,
    "rouge": DescriptionRougeL,
    "embedding_cosine": DescriptionEmbeddingCosine,
}


def _check_name(name: str) -> None:
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; choose from {sorted(METRICS)}.")


def metric_path(name: str) -> str:
    """Path of a metric's module file, for ``evaluate.load(metric_path("bleu"))``."""
    _check_name(name)
    return str(Path(__file__).with_name(f"{name}.py"))


def load_metric(name: str, **kwargs) -> evaluate.Metric:
    """Instantiate a metric by name; results are kept in memory (no cache files)."""
    _check_name(name)
    kwargs.setdefault("keep_in_memory", True)
    return METRICS[name](**kwargs)


__all__ = [
    "METRICS",
    "PAPER_BERTSCORE_SETTINGS",
    "DescriptionBertScore",
    "DescriptionBleu",
    "DescriptionEmbeddingCosine",
    "DescriptionRougeL",
    "default_sentence_model_path",
    "load_metric",
    "metric_path",
]
