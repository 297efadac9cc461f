"""IoU annotator and description grammar: hand-made cases, and recovery of planted units."""

import numpy as np
import pytest

from milan_hf.exemplars import extract_exemplars
from milan_hf.probe_world import concepts as C
from milan_hf.probe_world.annotation import (
    SceneMasks,
    candidate_ious,
    choose_expression,
    describe_by_iou,
    same_expression,
)
from milan_hf.probe_world.phrasing import NOTHING_PHRASES, grammar_vocabulary, phrase
from milan_hf.probe_world.planted import planted_transform, planted_units, planted_units_model
from milan_hf.probe_world.scenes import build_scene_dataset, generate_scene, region_masks

H = W = 8


def _box(top, left, bottom, right, k=2):
    mask = np.zeros((k, H, W), dtype=bool)
    mask[:, top:bottom, left:right] = True
    return mask


def test_single_concept_iou_is_exact():
    unit = _box(0, 0, 4, 4)  # 16 pixels per image
    concepts = {"red": _box(0, 0, 4, 8), "circle": _box(4, 4, 8, 8)}  # red: 32 px, overlap 16
    scored = dict(candidate_ious(unit, concepts))
    assert scored[("concept", "red")] == pytest.approx(16 / 32)
    assert scored[("concept", "circle")] == 0.0


def test_or_beats_its_parts_when_the_unit_fires_on_both():
    red, blue = _box(0, 0, 4, 4), _box(4, 4, 8, 8)
    unit = red | blue
    scored = candidate_ious(unit, {"red": red, "blue": blue, "circle": _box(0, 0, 2, 2)})
    expression, iou = choose_expression(scored)
    assert same_expression(expression, ("or", "blue", "red")) and iou == pytest.approx(1.0)


def test_and_of_attribute_and_shape():
    red = _box(0, 0, 8, 4)  # left half red
    circle = _box(0, 0, 4, 8)  # top half circle
    unit = red & circle
    scored = candidate_ious(unit, {"red": red, "circle": circle})
    expression, iou = choose_expression(scored)
    assert same_expression(expression, ("and", "red", "circle")) and iou == pytest.approx(1.0)
    assert dict(scored)[("concept", "red")] == pytest.approx(0.5)


def test_concept_and_region():
    green = _box(0, 0, 8, 4)  # left half
    regions = {name: np.broadcast_to(m, (2, H, W)) for name, m in region_masks(H, W).items()}
    unit = green & regions["bottom"]
    expression, iou = choose_expression(candidate_ious(unit, {"green": green, **regions}))
    assert same_expression(expression, ("and", "green", "bottom")) and iou == pytest.approx(1.0)


def test_ties_go_to_the_simpler_expression_and_the_floor_gives_no_concept():
    red = _box(0, 0, 4, 4)
    ring = _box(6, 6, 7, 7)  # adds one pixel per image to an OR: not worth the extra term
    unit = _box(0, 0, 4, 5)
    expression, _ = choose_expression(candidate_ious(unit, {"red": red, "ring": ring}))
    assert expression == ("concept", "red")
    tiny = _box(0, 0, 1, 1)
    expression, iou = choose_expression(candidate_ious(tiny, {"red": _box(0, 0, 8, 8)}))
    assert expression == ("none",) and iou == pytest.approx(1 / 64)


def test_describe_by_iou_on_hand_made_exemplars_and_resized_scene_masks():
    scenes = [generate_scene(4, i, 32, (), required=["blue", "square"]) for i in range(3)]
    masks = SceneMasks(scenes)
    ids = [0, 1, 2]
    # A unit that fires exactly on the blue squares, with masks at twice the scene size.
    unit_masks = np.stack(
        [np.kron(scenes[i].masks["square"], np.ones((2, 2), dtype=bool)) for i in ids]
    )
    rows = [
        {"layer": "l", "unit": 0, "ids": ids, "masks": unit_masks},
        {"layer": "l", "unit": 1, "ids": ids, "masks": np.zeros_like(unit_masks)},
    ]
    square, silent = describe_by_iou(rows, masks, progress=False)
    # The blue square is both "blue" and "square" here: equal IoU, so a single concept wins.
    assert square.expression in {("concept", "blue"), ("concept", "square")}
    assert square.iou > 0.9 and len(square.descriptions) == 3
    assert silent.expression == ("none",)
    assert all(d in NOTHING_PHRASES for d in silent.descriptions)


def test_phrases_are_varied_deterministic_and_say_the_concepts():
    expression = ("and", "red", "circle")
    rng = np.random.default_rng
    first = phrase(expression, 3, rng(1))
    assert first == phrase(expression, 3, rng(1)) and len(set(first)) == 3
    red_words = {"red", "reddish", "crimson", "scarlet", "ruby"}
    circle_words = {"circles", "shapes", "discs", "disks", "blobs", "spots", "objects", "orbs"}
    circle_words |= {"regions"}
    for text in first:
        assert red_words & set(text.split()) and circle_words & set(text.split())
    located = phrase(("and", "dots", "top"), 3, rng(0))
    assert all(("top" in t or "upper" in t) and ("dot" in t or "spot" in t) for t in located)
    either = phrase(("or", "grass", "brick"), 3, rng(0))
    grassy = ("grass", "lawn", "turf", "meadow")
    bricky = ("brick", "masonry", "wall")
    assert all(any(g in t for g in grassy) and any(b in t for b in bricky) for t in either)
    with pytest.raises(ValueError, match="operator"):
        phrase(("xor", "red", "blue"))


def test_grammar_vocabulary_has_real_variety():
    words = grammar_vocabulary(C.load_stamps())
    assert len(words) >= (400 if C.load_stamps() else 200)


def test_grammar_vocabulary_covers_every_synthetic_description():
    """The tokenizer learns its words from grammar_vocabulary: a word missing there becomes
    <unk> in training ("text <unk> grass"), and the captioner can never say it."""
    from milan_hf.probe_world.synthetic_units import sample_expression

    words = grammar_vocabulary()
    generator = np.random.default_rng(3)
    operators, missing = set(), set()
    for _ in range(600):
        expression = sample_expression(generator)
        operators.add(expression[0])
        for text in phrase(expression, 3, generator):
            missing.update(set(text.split()) - words)
    assert operators == {"concept", "and", "or", "above"}
    assert not missing, sorted(missing)


def test_annotator_recovers_planted_units(tmp_path):
    """Extraction (milan_hf.exemplars) + annotation on a fixed seed: >= 90% of planted units."""
    size = 48
    # Without cut-outs, so that the measurement is the same whether or not they are installed.
    scenes = build_scene_dataset(320, seed=0, size=size, use_stamps=False, cache_dir=tmp_path)
    exemplars = extract_exemplars(
        planted_units_model(),
        ["colour", "orientation", "logic"],
        scenes,
        transform=planted_transform,
        input_size=size,
        progress=False,
    )
    annotations = describe_by_iou(exemplars, scenes, progress=False)
    truth = {(u.layer, u.unit): u.expression for u in planted_units()}
    assert len(annotations) == len(truth)
    hits = [same_expression(a.expression, truth[(a.layer, a.unit)]) for a in annotations]
    misses = [(a.layer, a.unit, a.concept) for a, hit in zip(annotations, hits) if not hit]
    assert sum(hits) / len(hits) >= 0.9, misses


def test_scene_masks_follow_the_models_resize_and_crop():
    scene = generate_scene(0, 0, 32, (), required=["red", "square"], num_items=1)
    masks = SceneMasks([scene])
    name = scene.concepts().index("square")
    original = masks.masks[0][name]
    geometry = {"type": "resize_center_crop", "resize": 64, "crop": [48, 48]}
    cut = masks.scene_masks(0, (48, 48), geometry)[name]
    # Resize 32 -> 64 doubles every pixel; the 48 px centre crop drops 8 px on each side.
    expected = np.kron(original, np.ones((2, 2), dtype=bool))[8:56, 8:56]
    assert cut.shape == (48, 48)
    assert (cut != expected).mean() < 0.02  # bilinear edges only
    plain = masks.scene_masks(0, (64, 64))[name]
    assert np.array_equal(plain, np.kron(original, np.ones((2, 2), dtype=bool)))
