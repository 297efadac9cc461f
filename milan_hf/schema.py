"""The exemplar-set schema shared by extraction, MILANNOTATIONS, training and evaluation.

One row per unit. Extraction output, the MILANNOTATIONS loader and the probe-world corpus all
produce this schema, so every downstream consumer (captioner processor, trainer, evaluator,
report) reads one type. See ``shared/DESIGN.md`` ("Exemplar-set row").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Features

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
