"""Tiny captioners, tokenizers and exemplar sets shared by the captioner tests."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf import schema
from milan_hf.configuration_milan import MilanCaptionerConfig, MilanPriorConfig
from milan_hf.modeling_milan import MilanCaptionerModel
from milan_hf.tokenization_milan import MilanTokenizer


@pytest.fixture
def single_thread():
    """Tiny models run fastest on one thread, and a busy CPU does not stall them on thread
    barriers; the previous setting is restored for other tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_BACKBONE = "test_efficientnet"  # timm's 82k-parameter test model, random weights
IMAGE_SIZE = 32


def tiny_tokenizer(words=("red", "blue", "squares")) -> MilanTokenizer:
    return MilanTokenizer.from_words(words)


def tiny_captioner(
    tokenizer: MilanTokenizer,
    with_prior: bool = True,
    seed: int = 0,
    hidden_size: int = 16,
    mask_location_grid: int = 0,
    mask_context_pooling: bool = False,
    mask_below_context: bool = False,
    exemplar_feature_norm: bool = False,
) -> MilanCaptionerModel:
    torch.manual_seed(seed)
    vocab_size = len(tokenizer)
    prior_config = None
    if with_prior:
        prior_config = MilanPriorConfig(
            vocab_size=vocab_size, embedding_size=8, hidden_size=hidden_size, dropout=0.0
        )
    config = MilanCaptionerConfig(
        vocab_size=vocab_size,
        backbone=TINY_BACKBONE,
        backbone_pretrained=False,
        image_size=IMAGE_SIZE,
        embedding_size=8,
        hidden_size=hidden_size,
        dropout=0.0,
        mask_location_grid=mask_location_grid,
        mask_context_pooling=mask_context_pooling,
        mask_below_context=mask_below_context,
        exemplar_feature_norm=exemplar_feature_norm,
        prior_config=prior_config,
    )
    return MilanCaptionerModel(config).eval()


def random_rows(units: int, k: int = 3, height: int = 40, width: int = 48, seed: int = 0):
    """Exemplar-set rows with random images and masks at the probed model's geometry."""
    rng = np.random.default_rng(seed)
    return [
        {
            schema.LAYER: "layer1",
            schema.UNIT: unit,
            schema.IMAGES: [
                Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
                for _ in range(k)
            ],
            schema.MASKS: [rng.integers(0, 2, (height, width), dtype=np.uint8) for _ in range(k)],
        }
        for unit in range(units)
    ]


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def colour_corpus(units_per_colour: int = 4, k: int = 2, size: int = IMAGE_SIZE, seed: int = 0):
    """Units whose exemplars show a square of one colour (masked), described by that colour."""
    rng = np.random.default_rng(seed)
    rows = []
    for colour, rgb in COLOURS.items():
        for _ in range(units_per_colour):
            images, masks = [], []
            for _ in range(k):
                image = np.full((size, size, 3), 128, np.uint8)
                mask = np.zeros((size, size), np.uint8)
                y, x = rng.integers(0, size // 2, 2)
                image[y : y + size // 2, x : x + size // 2] = rgb
                mask[y : y + size // 2, x : x + size // 2] = 1
                images.append(Image.fromarray(image))
                masks.append(mask)
            rows.append(
                {
                    schema.LAYER: "layer1",
                    schema.UNIT: len(rows),
                    schema.IDS: list(range(k)),
                    schema.ACTIVATIONS: [1.0] * k,
                    schema.MASKS: masks,
                    schema.THRESHOLD: 0.5,
                    schema.DEAD: False,
                    schema.IMAGES: images,
                    schema.DESCRIPTIONS: [f"{colour} squares", f"the {colour} regions"],
                }
            )
    features = schema.exemplar_features(mask_size=size, with_images=True, with_descriptions=True)
    return datasets.Dataset.from_list(rows, features=features)
