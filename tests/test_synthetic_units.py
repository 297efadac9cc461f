"""Synthetic units: seeded, exemplar schema, masks on their concept, wordings that name it."""

import numpy as np
import pytest

from milan_hf.probe_world import concepts as C
from milan_hf.probe_world.phrasing import description_defects, expression_named
from milan_hf.probe_world.scenes import generate_scene
from milan_hf.probe_world.synthetic_units import (
    SyntheticUnitSettings,
    expression_mask,
    iter_synthetic_units,
    relation_scene,
    synthetic_unit_dataset,
    unit_masks,
)

SMALL = SyntheticUnitSettings(k=6, image_size=32, units_per_block=8, scenes_per_block=40)


def _expression(concept: str) -> tuple:
    for operator in (" AND ", " OR ", " ABOVE "):
        if operator in concept:
            return (operator.strip().lower(), *concept.split(operator))
    return ("concept", concept)


def test_units_are_seeded_and_name_their_concept():
    first = list(iter_synthetic_units(5, 12, SMALL))
    again = list(iter_synthetic_units(5, 12, SMALL))
    other = list(iter_synthetic_units(6, 12, SMALL))
    assert [u["descriptions"] for u in first] == [u["descriptions"] for u in again]
    assert all(
        np.array_equal(a, b) for u, v in zip(first, again) for a, b in zip(u["masks"], v["masks"])
    )
    assert [u["concept"] for u in first] != [u["concept"] for u in other]
    for unit in first:
        assert len(unit["ids"]) == len(unit["masks"]) == len(unit["images"]) == SMALL.k
        assert unit["activations"] == sorted(unit["activations"], reverse=True)
        assert unit["masks"][0].shape == (32, 32) and unit["masks"][0].any()
        assert len(unit["descriptions"]) == 3
        expression = _expression(unit["concept"])
        for text in unit["descriptions"]:
            assert expression_named(text, expression) and not description_defects(text)


def test_masks_lie_on_the_concept():
    # Top exemplars of a unit for "red AND top": the masks fall on red pixels of the top half.
    expression = ("and", "red", "top")
    scenes = [generate_scene(1, i, 64, (), ["red", "top"]) for i in range(6)]
    targets = [expression_mask(expression, s) for s in scenes]
    masks, activations, threshold = unit_masks(targets, [1.0] * 6, np.random.default_rng(0))
    assert masks.shape == (6, 64, 64) and threshold > 0
    inside = sum((m.astype(bool) & t).sum() for m, t in zip(masks, targets))
    assert inside / max(1, sum(m.sum() for m in masks)) > 0.6
    assert all(m[32:].sum() < 0.1 * max(1, m.sum()) for m in masks)  # hardly any at the bottom


def test_relation_units_fire_on_the_upper_concept_only():
    scene = relation_scene(3, 0, 64, (), "red", "circle")
    assert expression_mask(("above", "red", "circle"), scene).any()
    assert not expression_mask(("above", "circle", "red"), scene).any()
    assert np.array_equal(expression_mask(("above", "red", "circle"), scene), scene.masks["red"])


def test_negative_share_and_composition_share():
    settings = SyntheticUnitSettings(
        k=10,
        image_size=32,
        units_per_block=6,
        scenes_per_block=40,
        negative_share=(0.3, 0.3),
        composition_share=0.0,
    )
    units = list(iter_synthetic_units(2, 6, settings))
    assert all(" AND " not in u["concept"] and " OR " not in u["concept"] for u in units)
    # Three of ten exemplars lack the concept: they rank last and their masks are (almost) empty.
    top = np.mean([np.mean([m.mean() for m in u["masks"][:3]]) for u in units])
    bottom = np.mean([np.mean([m.mean() for m in u["masks"][-3:]]) for u in units])
    assert bottom < 0.25 * top
    families = {u["family"] for u in units}
    assert families <= {C.COLOUR, C.SHAPE, C.TEXTURE, C.TEXT, C.OBJECT}


def test_dataset_schema_and_streaming(tmp_path):
    dataset = synthetic_unit_dataset(4, seed=3, settings=SMALL, cache_dir=str(tmp_path))
    assert len(dataset) == 4
    for column in (
        "layer",
        "unit",
        "ids",
        "activations",
        "masks",
        "threshold",
        "images",
        "descriptions",
        "source",
        "concept",
        "family",
    ):
        assert column in dataset.column_names
    assert set(dataset["source"]) == {"synthetic"}
    streamed = synthetic_unit_dataset(None, seed=3, settings=SMALL, streaming=True)
    row = next(iter(streamed))
    assert row["concept"] == dataset[0]["concept"]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="negative_share"):
        SyntheticUnitSettings(negative_share=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_units"):
        synthetic_unit_dataset(None)


def test_or_units_show_each_operand_in_half_their_positives():
    """Drawn from the pool at random, a common operand (text) filled every positive and the
    unit's exemplars never showed the other: an "a or b" unit that looks like an "a" unit."""
    from milan_hf.probe_world.synthetic_units import _block, _exemplar_scenes

    settings = SyntheticUnitSettings(k=10, image_size=48, negative_share=(0.2, 0.2))
    block = _block(4, 0, settings, ())
    min_pixels = settings.image_size**2 // 200
    for expression in (("or", "text", "circle"), ("or", "red", "checkerboard")):
        _, scenes, positives = _exemplar_scenes(
            expression, block, 0, settings, (), np.random.default_rng(1)
        )
        assert positives == 8
        for operand in expression[1:]:
            showing = [expression_mask(("concept", operand), s).sum() >= min_pixels
                       for s in scenes[:positives]]  # fmt: skip
            assert sum(showing) >= positives // 2, (expression, operand)
            # Interleaved: the top exemplars are not all one operand.
            assert any(showing[: positives // 2 + 1])


def test_units_are_the_same_in_another_process():
    """Same seed, another PYTHONHASHSEED: the same units, descriptions included (a caption
    tie broken by set order once changed them from one process to the next)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from milan_hf.probe_world.synthetic_units import *\n"
        "s = SyntheticUnitSettings(image_size=96)\n"
        "print(json.dumps([u['descriptions'] for u in iter_synthetic_units(1000000, 1, s)]))"
    )
    outputs = [
        json.loads(subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout)
        for seed in ("1", "2", "3")
    ]  # fmt: skip
    assert outputs[0] == outputs[1] == outputs[2]
