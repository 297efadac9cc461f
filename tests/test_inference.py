"""One inference path and one set of decoding defaults: the CLI, ``milan_hf.describe``, the
pipeline and ``generate`` describe the same exemplar rows identically by default."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import pipeline

import milan_hf
from milan_hf.cli import main as cli_main
from milan_hf.describer import load_description_outputs
from milan_hf.inference import describe_exemplars, load_captioner, prefer_well_formed
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import (
    single_thread,  # noqa: F401  (fixture)
    tiny_captioner,
    tiny_tokenizer,
)

pytestmark = pytest.mark.usefixtures("single_thread")

VISION_MODEL, LAYER = "test_resnet", "layer2"
WORDS = ("red", "blue", "green", "squares", "top", "in", "the")


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    """A tiny captioner that would repeat "red" forever, so that n-gram blocking (on by
    default) changes its descriptions: an entry point that decoded otherwise would show."""
    tokenizer = tiny_tokenizer(WORDS)
    model = tiny_captioner(tokenizer, seed=2)
    with torch.no_grad():
        model.output.bias[tokenizer.convert_tokens_to_ids("red")] += 3.0
        model.output.bias[model.config.eos_token_id] -= 3.0
    folder = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(folder)
    MilanProcessor.from_model_config(model.config, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory):
    """A folder of random images and a seeded checkpoint of a tiny timm model."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for index in range(8):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    torch.manual_seed(0)
    checkpoint = root / "weights.safetensors"
    save_file(timm.create_model(VISION_MODEL).state_dict(), str(checkpoint))
    return images, checkpoint


def test_cli_describe_pipeline_and_generate_agree_by_default(tmp_path, captioner_dir, probe_setup):
    images, checkpoint = probe_setup
    output = tmp_path / "out"
    common = ["--model", VISION_MODEL, "--layers", LAYER, "--images", str(images)]
    status = cli_main(
        ["describe", *common, "--checkpoint", str(checkpoint), "--captioner", str(captioner_dir),
         "--output", str(output), "--k", "3", "--max-units", "4", "--no-report"]
    )  # fmt: skip
    assert status == 0
    with open(output / "descriptions.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    # Dead units (all zero after the ReLU here) get the marker, never a caption; the pipeline
    # and generate describe whatever rows they are given, so compare the live units.
    assert {row["description"] for row in written if row["dead"] == "True"} <= {
        milan_hf.schema.DEAD_UNIT_DESCRIPTION
    }
    from_cli = [row["description"] for row in written if row["dead"] == "False"]
    _, exemplars = load_description_outputs(output)
    rows = [row for row in exemplars if not row["dead"]]

    described = milan_hf.describe(
        VISION_MODEL, [LAYER], str(images), checkpoint=checkpoint, captioner=captioner_dir,
        k=3, units=4, progress=False,
    )  # fmt: skip
    from_describe = [row["description"] for row in described if not row["dead"]]
    from_pipeline = [
        result["description"]
        for result in pipeline("neuron-description", model=str(captioner_dir))(rows)
    ]
    model = MilanCaptionerModel.from_pretrained(captioner_dir)
    processor = MilanProcessor.from_pretrained(captioner_dir)
    # generate gives token ids; every text entry point then keeps the best defect-free
    # candidate of its beam (inference.prefer_well_formed), the one step generate cannot take.
    generated = prefer_well_formed(model.generate(**processor(rows)), processor)
    from_generate = processor.batch_decode(generated.sequences)

    assert len(written) == 4 and len(from_cli) >= 2 and all(from_cli)
    assert from_cli == from_describe == from_pipeline == from_generate
    # The defaults really are in force: without n-gram blocking the descriptions differ.
    unblocked = model.generate(**processor(rows), no_repeat_ngram_size=0)
    assert processor.batch_decode(unblocked.sequences) != from_generate


def test_describe_exemplars_matches_generate_and_loads_any_captioner(captioner_dir):
    model, processor = load_captioner(captioner_dir)
    from tests.captioner_fixtures import random_rows

    rows = random_rows(units=5, k=3)
    described = describe_exemplars(rows, model, processor, batch_size=2, progress=False)
    output = prefer_well_formed(model.generate(**processor(rows)), processor)
    assert described["description"] == processor.batch_decode(output.sequences)
    torch.testing.assert_close(torch.tensor(described["score"]), output.scores)
    # A loaded model works too: its processor comes from the directory it was loaded from.
    again, again_processor = load_captioner(model)
    assert again_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def shared_image_rows(units: int = 6, k: int = 3, pool: int = 5, seed: int = 0):
    """Units whose exemplars come from a small pool of images (as top-k images overlap)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
              for _ in range(pool)]  # fmt: skip
    rows = []
    for unit in range(units):
        chosen = rng.choice(pool, size=k, replace=False)
        rows.append({
            "layer": "layer1", "unit": unit,
            "images": [images[i].copy() for i in chosen],  # equal content, distinct objects
            "masks": [rng.integers(0, 2, (40, 48), dtype=np.uint8) for _ in chosen],
        })  # fmt: skip
    return rows, pool


def count_backbone_images(model):
    seen = []
    hook = model.encoder.backbone.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].shape[0])
    )
    return seen, hook


def test_each_distinct_image_goes_through_the_backbone_once(captioner_dir):
    from milan_hf.inference import encode_exemplar_sets

    model, processor = load_captioner(captioner_dir)
    rows, pool = shared_image_rows(units=6, k=3, pool=5)
    seen, hook = count_backbone_images(model)
    encoded = encode_exemplar_sets(rows, model, processor, images_per_pass=2)
    assert sum(seen) == pool and max(seen) <= 2  # 18 exemplar slots, 5 distinct images
    seen.clear()
    per_pair = processor(rows)
    expected = model.encode_exemplars(per_pair["pixel_values"], per_pair["masks"])
    assert sum(seen) == 18
    hook.remove()
    torch.testing.assert_close(encoded["exemplar_features"], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(encoded["exemplar_mask"], per_pair["exemplar_mask"])
    # The same descriptions as the per-pair path, decoding many units together.
    described = describe_exemplars(rows, model, processor, batch_size=4, progress=False)
    by_pairs = processor.batch_decode(
        prefer_well_formed(model.generate(**per_pair), processor).sequences
    )
    assert described["description"] == by_pairs


def test_exemplar_ids_with_probe_images_need_no_materialised_images(probe_setup, captioner_dir):
    from milan_hf.exemplars import extract_exemplars, materialize_images

    images, checkpoint = probe_setup
    vision_model = milan_hf.load_vision_model(VISION_MODEL, checkpoint=checkpoint)
    exemplars = extract_exemplars(vision_model, [LAYER], str(images), k=3, progress=False)
    # Masks read straight from Arrow are the dataset's masks, for any range of rows.
    from milan_hf.inference import _arrow_masks_reader

    for dataset in (exemplars, exemplars.select([5, 1, 2, 7])):  # also through an index map
        read_masks = _arrow_masks_reader(dataset)
        for start, stop in ((0, 2), (1, 4)):
            for offset, masks in enumerate(read_masks(start, stop)):
                expected = np.asarray(dataset[start + offset]["masks"], dtype=np.uint8)
                assert np.array_equal(masks, expected)
    exemplars = exemplars.select(range(2, 7))
    model, processor = load_captioner(captioner_dir)
    seen, hook = count_backbone_images(model)
    from_ids = describe_exemplars(
        exemplars, model, processor, probe_images=str(images), progress=False
    )
    distinct = len({i for ids in exemplars["ids"] for i in ids})
    assert sum(seen) == distinct < 5 * 3
    hook.remove()
    materialised = materialize_images(exemplars, probe_images=str(images), progress=False)
    assert from_ids.to_list() == describe_exemplars(
        materialised, model, processor, progress=False
    ).to_list()
