"""The text-to-image stage: probe-world parsing and rendering, and a tiny diffusers pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from milan_hf.probe_world.synthetic_units import expression_mask
from milan_hf.text_to_image import (
    ProbeWorldTextToImage,
    RenderedDescription,
    load_text_to_image,
    parse_description,
)


@pytest.mark.parametrize(
    "description, expression",
    [
        ("red circles", ("and", "red", "circle")),
        ("stars or dots", ("or", "star", "dots")),
        ("either blue or green areas", ("or", "blue", "green")),
        ("triangles above text", ("above", "triangle", "text")),
        ("hexagons near the left side", ("and", "hexagon", "left")),
        ("squares filled with dots", ("and", "dots", "square")),
        ("vertical stripes in the image", ("concept", "vertical stripes")),
    ],
)
def test_grammar_descriptions_parse_to_their_expression(description, expression):
    assert parse_description(description, stamps=()) == expression


def test_probe_world_renders_images_with_the_expression_and_controls_without():
    stage = ProbeWorldTextToImage(stamps=())
    [red_circles] = stage.render(["red circles"], num_images=4, seed=3, image_size=48)
    assert red_circles.renderable and red_circles.reason == ""
    assert len(red_circles.images) == len(red_circles.controls) == 4
    assert red_circles.images[0].size == (48, 48)
    scenes = red_circles.scenes
    assert all(expression_mask(red_circles.expression, s).any() for s in scenes[:4])
    assert not any(expression_mask(red_circles.expression, s).any() for s in scenes[4:])
    again = stage.render(["red circles"], num_images=4, seed=3, image_size=48)[0]
    assert np.array_equal(np.asarray(again.images[2]), np.asarray(red_circles.images[2]))
    other_seed = stage.render(["red circles"], num_images=4, seed=4, image_size=48)[0]
    assert not np.array_equal(np.asarray(other_seed.images[0]), np.asarray(red_circles.images[0]))


@pytest.mark.parametrize(
    "description, reason",
    [
        ("no clear concept", "names no concept"),
        ("things at the top", "names no concept"),
        ("red squares with stars", "names 3 concepts"),
        ("quantum chromodynamics", "names no concept"),
        ("circles with squares", "cannot draw it"),
    ],
)
def test_descriptions_outside_the_grammar_are_not_rendered(description, reason):
    [result] = ProbeWorldTextToImage(stamps=()).render([description], num_images=2)
    assert not result.renderable and reason in result.reason
    assert result.images == [] and result.controls == []


def test_bad_arguments_are_one_line_errors():
    stage = load_text_to_image("probe-world", stamps=())
    with pytest.raises(TypeError, match="not the string 'red'"):
        stage.render("red")
    with pytest.raises(ValueError, match="num_images must be >= 1, got 0"):
        stage.render(["red"], num_images=0)
    with pytest.raises(ValueError, match="got ''"):
        load_text_to_image("")


def _tiny_pipeline(folder):
    """A randomly initialised Stable Diffusion pipeline built from configs (32 px)."""
    diffusers = pytest.importorskip("diffusers")
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=2,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    vocab = {w: i for i, w in enumerate(["!", "<|startoftext|>", "<|endoftext|>", "red</w>",
                                         "circles</w>", "a</w>", "photo</w>"])}  # fmt: skip

    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    ))  # fmt: skip
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100)
    return diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def test_diffusers_stage_is_seeded_batched_and_makes_controls(tmp_path):
    pipeline = _tiny_pipeline(tmp_path)
    stage = load_text_to_image(
        "tiny-sd", pipeline=pipeline, device="cpu", batch_size=3, num_inference_steps=2
    )
    assert stage.name == "tiny-sd"
    results = stage.render(["red circles", "a photo"], num_images=2, seed=1, image_size=30)
    assert [type(r) for r in results] == [RenderedDescription] * 2
    first = results[0]
    assert first.renderable and len(first.images) == 2 and len(first.controls) == 2
    assert first.images[0].size == (30, 30)
    again = stage.render(["red circles"], num_images=2, seed=1, image_size=30)[0]
    assert np.array_equal(np.asarray(again.images[1]), np.asarray(first.images[1]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(first.images[1]))
