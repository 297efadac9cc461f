"""The location-aware exemplar encoder: where a mask lies reaches the decoder."""

from __future__ import annotations

import pytest
import torch

from milan_hf.configuration_milan import MilanCaptionerConfig
from milan_hf.inference import encode_exemplar_sets
from milan_hf.modeling_milan import (
    MilanCaptionerModel,
    below_mask_weights,
    mask_location_features,
)
from milan_hf.processing_milan import MilanProcessor
from tests.captioner_fixtures import random_rows, single_thread, tiny_captioner, tiny_tokenizer

__all__ = ["single_thread"]


def _half(side: str, size: int = 16) -> torch.Tensor:
    mask = torch.zeros(size, size)
    if side == "top":
        mask[: size // 2] = 1
    elif side == "bottom":
        mask[size // 2 :] = 1
    elif side == "left":
        mask[:, : size // 2] = 1
    elif side == "right":
        mask[:, size // 2 :] = 1
    return mask


def test_location_features_say_where_and_how_large():
    masks = torch.stack([_half(side) for side in ("top", "bottom", "left", "right", "none")])
    features = mask_location_features(masks, grid=2)
    assert features.shape == (5, 2 * 2 + 5)
    cells, (centre_x, centre_y, spread_x, spread_y, area) = features[:, :4], features[:, 4:].T
    # Row-major 2x2 cells: the top half covers the first two cells fully, the others not at all.
    assert cells[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert cells[2].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert centre_y[0] < -0.4 and centre_y[1] > 0.4 and abs(centre_x[0]) < 1e-6
    assert centre_x[2] < -0.4 and centre_x[3] > 0.4 and abs(centre_y[2]) < 1e-6
    assert spread_x[0] > spread_y[0]  # a wide band: spread along x, little along y
    assert torch.allclose(area[:4], torch.full((4,), 0.5))
    assert features[4].abs().sum() == 0  # empty mask: nothing anywhere


def test_small_mask_has_small_area_and_its_own_cell():
    mask = torch.zeros(1, 20, 20)
    mask[0, 15:20, 15:20] = 1  # bottom-right corner
    features = mask_location_features(mask, grid=4)
    cells = features[0, :16].view(4, 4)
    assert cells[3, 3] == 1 and cells.sum() == 1
    assert features[0, -1].item() == pytest.approx(25 / 400)


def test_default_encoder_is_the_original(single_thread):
    tokenizer = tiny_tokenizer()
    plain, located = tiny_captioner(tokenizer), tiny_captioner(tokenizer, mask_location_grid=3)
    assert plain.config.mask_location_grid == 0
    assert located.encoder.feature_size == plain.encoder.feature_size + 3 * 3 + 5
    rows = random_rows(2, k=2)
    processor = MilanProcessor.from_model_config(plain.config, tokenizer)
    inputs = processor(rows)
    with torch.no_grad():
        plain_features = plain.encode_exemplars(inputs["pixel_values"], inputs["masks"])
        located_features = located.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    # Same backbone weights (same seed): the pooled part is unchanged, location comes after it.
    assert torch.allclose(located_features[..., : plain.encoder.feature_size], plain_features)
    expected = mask_location_features(inputs["masks"].flatten(0, 1).float(), 3).view(2, 2, -1)
    assert torch.allclose(located_features[..., plain.encoder.feature_size :], expected)


def test_shared_image_path_and_round_trip_keep_location(tmp_path, single_thread):
    tokenizer = tiny_tokenizer()
    model = tiny_captioner(tokenizer, mask_location_grid=2)
    processor = MilanProcessor.from_model_config(model.config, tokenizer)
    rows = random_rows(3, k=2)
    inputs = processor(rows)
    pairwise = model.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    shared = encode_exemplar_sets(rows, model, processor, images_per_pass=2)
    assert torch.allclose(shared["exemplar_features"], pairwise, atol=1e-5)

    model.save_pretrained(tmp_path)
    loaded = MilanCaptionerModel.from_pretrained(tmp_path).eval()
    assert loaded.config.mask_location_grid == 2
    assert torch.allclose(
        loaded.encode_exemplars(inputs["pixel_values"], inputs["masks"]), pairwise
    )


@pytest.mark.parametrize("bad", [-1, 33, 2.5, "4"])
def test_bad_grid_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="mask_location_grid"):
        MilanCaptionerConfig(vocab_size=8, backbone="test_efficientnet", mask_location_grid=bad)


def test_context_pooling_appends_what_lies_outside_the_mask(single_thread):
    tokenizer = tiny_tokenizer()
    plain = tiny_captioner(tokenizer, mask_location_grid=2)
    context = tiny_captioner(tokenizer, mask_location_grid=2, mask_context_pooling=True)
    deepest = plain.encoder.backbone.feature_info.channels()[-1]
    assert context.encoder.feature_size == plain.encoder.feature_size + deepest
    rows = random_rows(2, k=2)
    processor = MilanProcessor.from_model_config(context.config, tokenizer)
    inputs = processor(rows)
    masks = inputs["masks"].clone()
    masks[0, 0] = 0  # an empty mask: its context is the whole image
    with torch.no_grad():
        plain_features = plain.encode_exemplars(inputs["pixel_values"], masks)
        features = context.encode_exemplars(inputs["pixel_values"], masks)
        whole_image = context.encoder.backbone(inputs["pixel_values"][0, :1])[-1].mean(dim=(-1, -2))
    # The original features and the location come first, unchanged.
    assert torch.allclose(features[..., : plain.encoder.feature_size], plain_features)
    assert torch.allclose(features[0, 0, plain.encoder.feature_size :], whole_image[0], atol=1e-5)
    # A full mask leaves no outside: the context part pools nothing.
    full = torch.ones_like(masks)
    with torch.no_grad():
        inside_only = context.encode_exemplars(inputs["pixel_values"], full)
    assert inside_only[..., plain.encoder.feature_size :].abs().max() < 1e-5
    # The shared-image path (training caches, describe) pools the same.
    shared = encode_exemplar_sets(rows, context, processor, images_per_pass=2)
    pairwise = context.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    assert torch.allclose(shared["exemplar_features"], pairwise, atol=1e-5)


def test_below_mask_weights_cover_the_band_under_the_mask():
    mask = torch.zeros(1, 1, 6, 6)
    mask[0, 0, 1:3, 2:4] = 1  # rows 1-2
    weights = below_mask_weights(mask)[0, 0]
    assert weights[:2].abs().max() == 0  # above the mask and its first row: nothing
    assert torch.allclose(weights[2, :2], torch.full((2,), 0.5))  # half the mask is above
    assert weights[2, 2:4].abs().max() == 0  # the mask itself is left out
    assert torch.allclose(weights[3:], torch.ones(3, 6))  # wholly below: the full row
    empty, bottom = torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)
    bottom[..., 5, :] = 1
    assert below_mask_weights(empty).abs().max() == 0
    assert below_mask_weights(bottom).abs().max() == 0


def test_below_context_pools_under_the_mask_and_round_trips(tmp_path, single_thread):
    tokenizer = tiny_tokenizer()
    context = tiny_captioner(tokenizer, mask_location_grid=2, mask_context_pooling=True)
    below = tiny_captioner(
        tokenizer, mask_location_grid=2, mask_context_pooling=True, mask_below_context=True
    )
    deepest = context.encoder.backbone.feature_info.channels()[-1]
    assert below.encoder.feature_size == context.encoder.feature_size + deepest
    # 128 px: a 4×4 deepest stage, and a mask drawn at that resolution (no resampling).
    torch.manual_seed(0)
    with torch.no_grad():
        feature_maps = below.encoder.backbone(torch.randn(1, 3, 128, 128))
        deepest = feature_maps[-1]
        top = _half("top", deepest.shape[-1]).unsqueeze(0)
        pooled = below.encoder.pool(feature_maps, torch.tensor([0]), top)
        before = context.encoder.pool(feature_maps, torch.tensor([0]), top)
    assert deepest.shape[-1] == 4
    assert torch.allclose(pooled[:, : context.encoder.feature_size], before)
    # A mask on the top half: the band below it is the bottom half of the deepest stage.
    bottom_half = deepest[0, :, 2:].mean(dim=(-1, -2))
    assert torch.allclose(pooled[0, context.encoder.feature_size :], bottom_half, atol=1e-5)
    rows = random_rows(2, k=2)
    processor = MilanProcessor.from_model_config(below.config, tokenizer)
    inputs = processor(rows)
    shared = encode_exemplar_sets(rows, below, processor, images_per_pass=2)
    pairwise = below.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    assert torch.allclose(shared["exemplar_features"], pairwise, atol=1e-5)
    below.save_pretrained(tmp_path)
    loaded = MilanCaptionerModel.from_pretrained(tmp_path).eval()
    assert loaded.config.mask_below_context
    assert loaded.encoder.feature_size == below.encoder.feature_size


def test_feature_norm_is_off_by_default_and_round_trips(tmp_path, single_thread):
    tokenizer = tiny_tokenizer()
    plain = tiny_captioner(tokenizer)
    assert plain.feature_norm is None
    assert not any(key.startswith("feature_norm.") for key in plain.state_dict())
    normed = tiny_captioner(tokenizer, exemplar_feature_norm=True, mask_context_pooling=True)
    with torch.no_grad():
        normed.feature_norm.weight.uniform_(0.5, 1.5)  # not the identity: the load must keep it
    rows = random_rows(2, k=2)
    processor = MilanProcessor.from_model_config(normed.config, tokenizer)
    inputs = processor(rows)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, tokenizer.eos_token_id]] * 2)
    expected = normed.sequence_log_probs(
        ids, normed.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    )
    normed.save_pretrained(tmp_path)
    loaded = MilanCaptionerModel.from_pretrained(tmp_path).eval()
    assert loaded.config.exemplar_feature_norm and loaded.config.mask_context_pooling
    features = loaded.encode_exemplars(inputs["pixel_values"], inputs["masks"])
    assert torch.allclose(loaded.sequence_log_probs(ids, features), expected, atol=1e-5)
