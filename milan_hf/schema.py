"""The schema shared by extraction, MILANNOTATIONS, training, description and evaluation.

Exemplar sets: one row per unit. Extraction output, the MILANNOTATIONS loader and the
probe-world corpus all produce this schema, so every downstream consumer (captioner processor,
trainer, evaluator, report) reads one type. See ``shared/DESIGN.md`` ("Exemplar-set row"). The
extraction metadata travels as JSON in ``info.description`` under
:data:`EXEMPLAR_METADATA_KEY`; read and write it with :func:`exemplar_metadata` and
:func:`metadata_description`.

Descriptions: one row per unit, :data:`DESCRIPTION_COLUMNS` (what the captioner gives) and, in
the output of a ``describe`` run, :data:`DEAD` as well (:data:`RUN_DESCRIPTION_COLUMNS`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset, Features

#: Column names, in the order they appear.
LAYER = "layer"
UNIT = "unit"
IDS = "ids"
ACTIVATIONS = "activations"
MASKS = "masks"
THRESHOLD = "threshold"
DEAD = "dead"
IMAGES = "images"
DESCRIPTIONS = "descriptions"
#: The probe-world network / MILANNOTATIONS set a unit comes from (corpora of several models).
SOURCE = "source"

#: Key of the extraction metadata in an exemplar set's ``info.description`` JSON.
EXEMPLAR_METADATA_KEY = "milan_hf_exemplars"

#: Columns of a descriptions dataset.
DESCRIPTION = "description"
SCORE = "score"
CAPTIONER_LOG_PROB = "captioner_log_prob"
PRIOR_LOG_PROB = "prior_log_prob"
DESCRIPTION_COLUMNS = (LAYER, UNIT, DESCRIPTION, SCORE, CAPTIONER_LOG_PROB, PRIOR_LOG_PROB)
#: Which describer and models produced a description, e.g. "milan (captioner: embedded)".
DESCRIBED_BY = "described_by"
#: What PMI decoding chose, where verification replaced it (``milan_hf.faithfulness``).
PMI_DESCRIPTION = "pmi_description"
#: A ``describe`` run also says which units are dead (constant, NaN or inf over the probe set)
#: and what described each unit.
RUN_DESCRIPTION_COLUMNS = (*DESCRIPTION_COLUMNS, DEAD, DESCRIBED_BY)
#: The description of a dead unit: a marker, never a concept (its scores are NaN).
DEAD_UNIT_DESCRIPTION = "(dead unit)"

#: The original MILAN conventions.
DEFAULT_K = 15
DEFAULT_QUANTILE = 0.99
DEFAULT_MASK_SIZE = 224


def exemplar_features(
    mask_size: int | tuple[int, int] = DEFAULT_MASK_SIZE,
    with_images: bool = False,
    with_descriptions: bool = False,
) -> Features:
    """Return the ``datasets.Features`` of an exemplar set.

    Args:
        mask_size: height and width of each binary mask (the model's input size).
        with_images: add the ``images`` column (k materialised exemplar images).
        with_descriptions: add the ``descriptions`` column (human or generated descriptions).
    """
    # Imported here: the command line reads the column names without loading datasets.
    from datasets import Array2D, Features, Image, List, Value

    height, width = (mask_size, mask_size) if isinstance(mask_size, int) else mask_size
    features = {
        LAYER: Value("string"),
        UNIT: Value("int64"),
        IDS: List(Value("int64")),
        ACTIVATIONS: List(Value("float32")),
        MASKS: List(Array2D((height, width), "uint8")),
        THRESHOLD: Value("float32"),
        # A unit whose activations are constant or NaN over the probe set: kept, never crashed on.
        DEAD: Value("bool"),
    }
    if with_images:
        features[IMAGES] = List(Image())
    if with_descriptions:
        features[DESCRIPTIONS] = List(Value("string"))
    return Features(features)


def exemplar_metadata(exemplars: Dataset) -> dict[str, Any]:
    """The extraction metadata (model, layers, k, quantile, geometry, probe source...) of an
    exemplar set; ``{}`` when it has none."""
    try:
        return dict(json.loads(exemplars.info.description or "{}")[EXEMPLAR_METADATA_KEY])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return {}


def metadata_description(metadata: dict[str, Any]) -> str:
    """The ``info.description`` text that carries an exemplar set's ``metadata``."""
    return json.dumps({EXEMPLAR_METADATA_KEY: metadata})


def _description_features(with_dead: bool) -> Features:
    # Imported here, like exemplar_features: the command line reads column names only.
    from datasets import Features, Value

    types = {SCORE: "float32", CAPTIONER_LOG_PROB: "float32", PRIOR_LOG_PROB: "float32"}
    types.update({LAYER: "string", UNIT: "int64", DESCRIPTION: "string", DEAD: "bool",
                  DESCRIBED_BY: "string"})
    columns = RUN_DESCRIPTION_COLUMNS if with_dead else DESCRIPTION_COLUMNS
    return Features({name: Value(types[name]) for name in columns})


def __getattr__(name: str) -> Any:
    """``DESCRIPTION_FEATURES`` (what the captioner gives) and ``RUN_DESCRIPTION_FEATURES``
    (a ``describe`` run's, with ``dead``), built on first use."""
    if name == "DESCRIPTION_FEATURES":
        return _description_features(with_dead=False)
    if name == "RUN_DESCRIPTION_FEATURES":
        return _description_features(with_dead=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
