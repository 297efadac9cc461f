"""The ablation engine: hooks switch off exactly the chosen units, curves, accuracy."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf.ablation import (
    AccuracyEvaluator,
    ablate_units,
    ablation_curve,
    ablation_steps,
    evaluate_accuracy,
    group_units,
    single_unit_accuracies,
    unit_means,
)


class TwoConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 5, 3, padding=1)
        self.head = torch.nn.Linear(5, 4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.conv2(torch.relu(self.conv1(pixels)))
        return self.head(torch.relu(features).mean(dim=(2, 3)))


class SumOfUnits(torch.nn.Module):
    """Class 1 when the sum of its 6 non-negative units exceeds 2.5: every unit pushes towards
    class 1, so ablating more of them can only move predictions to class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.units = torch.nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        units = self.units(pixels.flatten(1)[:, :6].abs())
        total = units.sum(1)
        return torch.stack([torch.full_like(total, 2.5), total], dim=1)


def transform(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def labelled_images(labels, seed: int = 0, size: int = 8, low: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(low, 256, (size, size, 3), dtype=np.uint8) for _ in labels]
    images = [Image.fromarray(image) for image in pixels]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": list(labels)}, features=features)


def test_zero_ablation_equals_a_hand_zeroed_model():
    model = TwoConvNet().eval()
    pixels = torch.randn(3, 3, 10, 10)
    zeroed = TwoConvNet().eval()
    with torch.no_grad():
        for unit in (1, 4):
            zeroed.conv1.weight[unit] = 0
            zeroed.conv1.bias[unit] = 0
        zeroed.conv2.weight[2] = 0
        zeroed.conv2.bias[2] = 0
        expected = zeroed(pixels)
        before = model(pixels)
        with ablate_units(model, {"conv1": [1, 4], "conv2": [2]}):
            ablated = model(pixels)
        after = model(pixels)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=0)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # hooks removed on exit
    assert not torch.equal(ablated, before)


def test_only_the_chosen_units_change_and_pairs_work():
    model = TwoConvNet().eval()
    captured = {}
    model.conv1.register_forward_hook(lambda m, i, o: captured.__setitem__("conv1", o))
    pixels = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model(pixels)
        reference = captured["conv1"].clone()
        # the hook that captures runs after the ablation hook only if registered later, so
        # read the layer's effect downstream: ablate via (layer, unit) pairs on conv1 and
        # compare conv1 captured by a hook registered after the ablation.
        with ablate_units(model, [("conv1", 3)]):
            handle = model.conv1.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
            model(pixels)
            handle.remove()
    ablated = captured["a"]
    assert torch.count_nonzero(ablated[:, 3]) == 0
    keep = [u for u in range(6) if u != 3]
    torch.testing.assert_close(ablated[:, keep], reference[:, keep], rtol=0, atol=0)


def test_mean_ablation_substitutes_the_unit_mean_and_token_outputs():
    layer = torch.nn.Linear(4, 3)
    model = torch.nn.Sequential(layer)
    tokens = torch.randn(2, 5, 4)  # (B, tokens, C): units on the last dimension
    means = {"0": torch.tensor([10.0, 20.0, 30.0])}
    with torch.no_grad(), ablate_units(model, {"0": [1]}, mode="mean", means=means):
        output = model(tokens)
    assert torch.all(output[..., 1] == 20.0)
    torch.testing.assert_close(output[..., [0, 2]], layer(tokens)[..., [0, 2]].detach())


def test_bad_input_names_the_bad_value():
    model = TwoConvNet()
    with pytest.raises(ValueError, match="conv9"):
        with ablate_units(model, {"conv9": [0]}):
            pass
    with pytest.raises(ValueError, match="-1"):
        group_units({"conv1": [-1]})
    with pytest.raises(ValueError, match="mode 'half'"):
        with ablate_units(model, {"conv1": [0]}, mode="half"):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with torch.no_grad(), ablate_units(model, {"conv1": [6]}):
            model(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="'target'"):
        AccuracyEvaluator(model, labelled_images([0]), transform=transform, label_column="target")


def test_accuracy_and_a_curve_monotone_by_construction():
    dataset = labelled_images([1] * 12, seed=1, low=200)  # six units of at least 0.78 each
    model = SumOfUnits()
    evaluator = AccuracyEvaluator(model, dataset, transform=transform, batch_size=5, progress=False)
    assert evaluator.accuracy() == 1.0
    order = [("units", unit) for unit in range(6)]
    curve = ablation_curve(evaluator, order)
    assert curve.num_ablated == list(range(7))
    assert all(later <= earlier for earlier, later in zip(curve.accuracy, curve.accuracy[1:]))
    assert curve.accuracy[-1] == 0.0  # nothing left: every image falls to class 0
    alone = single_unit_accuracies(evaluator, order[:2])
    assert len(alone) == 2 and all(0 <= a <= 1 for a in alone)
    full = evaluate_accuracy(model, dataset, ablated={"units": range(6)}, transform=transform,
                             progress=False)  # fmt: skip
    assert full == 0.0


def test_ablating_every_unit_of_a_layer_is_the_end_of_every_order():
    model = TwoConvNet().eval()
    dataset = labelled_images([0, 1, 2, 3] * 3)
    evaluator = AccuracyEvaluator(model, dataset, transform=transform, progress=False)
    units = [("conv2", unit) for unit in range(5)]
    forward = ablation_curve(evaluator, units)
    backward = ablation_curve(evaluator, units[::-1])
    assert forward.accuracy[0] == backward.accuracy[0]
    assert forward.accuracy[-1] == backward.accuracy[-1]  # the same set of units, whatever order
    means = unit_means(evaluator, ["conv2"])
    assert means["conv2"].shape == (5,)


def test_accelerator_single_process_gives_the_same_accuracy():
    from accelerate import Accelerator

    model = TwoConvNet().eval()
    dataset = labelled_images([0, 1, 2, 3] * 2)
    plain = evaluate_accuracy(model, dataset, transform=transform, progress=False)
    accelerated = evaluate_accuracy(model, dataset, transform=transform, progress=False,
                                    accelerator=Accelerator(cpu=True))  # fmt: skip
    assert plain == accelerated


def test_steps_spread_evenly():
    assert ablation_steps(10, None) == list(range(11))
    assert ablation_steps(10, 3) == [0, 5, 10]
    with pytest.raises(ValueError, match="num_points"):
        ablation_steps(10, 1)


def test_steps_every_count_first_then_spread():
    assert ablation_steps(100, 3, every_up_to=4) == [0, 1, 2, 3, 4, 50, 100]
