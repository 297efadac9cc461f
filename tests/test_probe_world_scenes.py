"""Probe-world scenes: determinism, masks that match the pixels, renderer, dataset and CLI."""

import numpy as np
import pytest
from datasets import load_from_disk

from milan_hf.cli import main as cli_main
from milan_hf.probe_world import concepts as C
from milan_hf.probe_world.rendering import (
    describe_scene,
    render_concept_images,
    render_concepts,
)
from milan_hf.probe_world.scenes import (
    COLOUR_JITTER,
    COLOUR_TOLERANCE,
    build_scene_dataset,
    generate_scene,
    region_masks,
    shape_mask,
)

STAMPS = C.load_stamps()
needs_stamps = pytest.mark.skipif(not STAMPS, reason="tuxpaint-stamps-default is not installed")
SIZE = 48


def test_same_seed_same_scenes_and_other_seed_other_scenes():
    first = [generate_scene(5, i, SIZE, STAMPS) for i in range(6)]
    again = [generate_scene(5, i, SIZE, STAMPS) for i in range(6)]
    other = [generate_scene(6, i, SIZE, STAMPS) for i in range(6)]
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image)
        assert a.concepts() == b.concepts()
        assert all(np.array_equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not np.array_equal(a.image, c.image) for a, c in zip(first, other))
    # Scene i depends only on (seed, i), not on which scenes were generated before it.
    assert np.array_equal(generate_scene(5, 4, SIZE, STAMPS).image, first[4].image)


def test_colour_masks_cover_exactly_pixels_of_that_colour():
    references = {name: np.array(rgb, dtype=float) for name, rgb in C.COLOUR_RGB.items()}
    for index in range(40):
        scene = generate_scene(11, index, SIZE, STAMPS)
        pixels = scene.image.astype(float)
        for name, mask in scene.masks.items():
            assert mask.shape == (SIZE, SIZE) and mask.dtype == bool and mask.any()
            if name in references:
                distance = np.linalg.norm(pixels[mask] - references[name], axis=-1)
                # Painted fills stay within their jitter, cut-outs within the tolerance.
                assert distance.max() <= max(COLOUR_TOLERANCE, COLOUR_JITTER * np.sqrt(3)) + 1e-6
        # Every pixel shows the background or an item, so some colour/shape/texture/object
        # concept covers it (text boxes aside, which are regions around glyphs).
        covered = np.zeros((SIZE, SIZE), dtype=bool)
        for name, mask in scene.masks.items():
            if name != "text":
                covered |= mask
        assert covered.all(), (index, scene.concepts())


def test_rendered_shape_mask_is_the_drawn_shape_in_the_requested_colour_and_region():
    for index, scene in enumerate(render_concepts(["red", "star", "top"], 6, size=SIZE, seed=3)):
        item = scene.spec.items[-1]
        assert item.kind == "shape" and item.name == "star" and item.fill.colours == ("red",)
        expected = shape_mask(
            "star", item.centre[0] * SIZE, item.centre[1] * SIZE, item.radius * SIZE, SIZE, SIZE
        )
        assert np.array_equal(scene.masks["star"], expected), index
        # The topmost item is not occluded: its pixels are all red, and it lies in the top half.
        red = np.array(C.COLOUR_RGB["red"], dtype=float)
        assert np.abs(scene.image[expected].astype(float) - red).max() <= COLOUR_JITTER
        assert not (expected & region_masks(SIZE, SIZE)["bottom"]).any()
        assert (scene.masks["red"] & expected).sum() == expected.sum()


def test_later_items_occlude_the_masks_of_earlier_ones():
    for index in range(30):
        scene = generate_scene(2, index, SIZE, STAMPS, num_items=3)
        footprints = {}
        for name, mask in scene.masks.items():
            if C.concept_family(name) in (C.SHAPE, C.OBJECT):
                footprints[name] = mask
        background = scene.spec.background.concepts()
        top_item = scene.spec.items[-1]
        if top_item.kind == "shape" and top_item.name in scene.masks:
            top = scene.masks[top_item.name]
            for name in background:
                if name in scene.masks and name not in top_item.fill.concepts():
                    assert not (scene.masks[name] & top).any(), (index, name)


def test_pattern_textures_split_their_area_between_two_colours():
    scenes = render_concepts(["vertical stripes"], 4, size=SIZE, distractors=False)
    for scene in scenes:
        colours = scene.spec.items[-1].fill.colours
        stripes = scene.masks["vertical stripes"]
        first, second = (scene.masks[c] & stripes for c in colours)
        assert not (first & second).any()
        assert np.array_equal(first | second, stripes)
        # Vertical stripes: inside the item, each column has a single colour.
        for column in np.nonzero(stripes.any(axis=0))[0]:
            inside = stripes[:, column]
            assert first[inside, column].all() or not first[inside, column].any()


def test_renderer_handles_expressions_and_rejects_unknown_concepts():
    either = render_concepts(("or", "red", "blue"), 4, size=SIZE)
    assert ["red" in s.masks for s in either] == [True, False, True, False]
    assert ["blue" in s.masks for s in either][1::2] == [True, True]
    images = render_concept_images(("and", "green", "ring"), 2, size=SIZE)
    assert [image.size for image in images] == [(SIZE, SIZE)] * 2
    with pytest.raises(ValueError, match="unknown concept"):
        render_concepts(["purplish-unicorn"], 1, size=SIZE)
    with pytest.raises(ValueError, match="one item"):
        render_concepts(["circle", "square"], 1, size=SIZE)


@needs_stamps
def test_object_scenes_have_object_masks_and_captions():
    scenes = render_concepts(["bird"], 3, size=SIZE, distractors=False)
    for scene in scenes:
        assert scene.masks["bird"].any()
        assert scene.captions and all(isinstance(c, str) and c for c in scene.captions)


def test_world_without_stamps(monkeypatch, tmp_path):
    monkeypatch.setenv("MILAN_HF_STAMPS", str(tmp_path / "missing"))
    C.load_stamps.cache_clear()
    try:
        assert C.load_stamps() == ()
        scene = generate_scene(0, 0, SIZE, C.load_stamps())
        assert all(C.concept_family(n) != C.OBJECT for n in scene.masks)
    finally:
        C.load_stamps.cache_clear()


def test_scene_dataset_matches_generated_scenes(tmp_path):
    dataset = build_scene_dataset(5, seed=9, size=SIZE, cache_dir=str(tmp_path))
    assert dataset.column_names == ["image", "concepts", "masks", "objects"]
    for index in range(5):
        row = dataset[index]
        scene = generate_scene(9, index, SIZE, STAMPS)
        assert np.array_equal(np.asarray(row["image"]), scene.image)
        assert row["concepts"] == scene.concepts()
        for name, mask in zip(row["concepts"], row["masks"]):
            assert np.array_equal(np.asarray(mask, dtype=bool), scene.masks[name])


def test_probe_world_cli_writes_a_loadable_dataset(tmp_path, capsys):
    output = tmp_path / "scenes"
    argv = ["probe-world", "--num-images", "4", "--seed", "1", "--size", "32"]
    assert cli_main([*argv, "--output", str(output)]) == 0
    dataset = load_from_disk(str(output))
    assert len(dataset) == 4 and dataset[0]["image"].size == (32, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    assert cli_main([*argv, "--output", str(output)]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert cli_main(["probe-world", "--num-images", "0", "--output", str(tmp_path / "x")]) == 2


def test_scene_captions_state_items_and_relations():
    for scene in render_concepts(["blue", "square", "bottom"], 3, size=SIZE, seed=2):
        caption = describe_scene(scene, stamps=())
        assert caption.split(",")[-2].strip().startswith("a blue square")
        if len(scene.spec.items) > 1:
            previous, square = scene.spec.items[-2:]
            dx = square.centre[0] - previous.centre[0]
            dy = square.centre[1] - previous.centre[1]
            if abs(dy) >= abs(dx):
                relation = "below" if dy > 0 else "above"
            else:
                relation = "right of" if dx > 0 else "left of"
            assert f"a blue square {relation} it" in caption
