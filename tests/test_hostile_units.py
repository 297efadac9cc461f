"""Dead and constant units (issue 11): infinite, NaN and constant activations are flagged
``dead``, get empty masks, and never turn into huge finite activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from milan_hf import schema
from milan_hf.exemplars import extract_exemplars
from milan_hf.quantile_sketch import UnitHistogram
from tests.test_exemplars import SIZE, write_images

# float32's largest finite value: what nan_to_num turns infinities into.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class HostileUnits(torch.nn.Module):
    """One map per kind of unit, all from the input's first channel (which varies)."""

    KINDS = (
        "normal",
        "constant",
        "constant_up_to_rounding",
        "some_plus_inf",
        "some_minus_inf",
        "some_nan",
        "all_nan",
        "zero",
    )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At a quarter of the input's resolution, so that masks are upsampled (where rounding
        # once speckled the masks of constant units).
        signal = torch.nn.functional.avg_pool2d(x[:, :1], 4)
        bright = signal > signal.mean()
        maps = {
            "normal": signal,
            "constant": torch.full_like(signal, 0.7),
            # 0.7 give or take a float32 step or two: constant up to rounding.
            "constant_up_to_rounding": 0.7 + 6e-8 * signal.clamp(-2, 2),
            "some_plus_inf": torch.where(bright, torch.full_like(signal, math.inf), signal),
            "some_minus_inf": torch.where(bright, torch.full_like(signal, -math.inf), signal),
            "some_nan": torch.where(bright, torch.full_like(signal, math.nan), signal),
            "all_nan": torch.full_like(signal, math.nan),
            "zero": torch.zeros_like(signal),
        }
        return torch.cat([maps[kind] for kind in self.KINDS], dim=1)


class HostileNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.units = HostileUnits()

    def forward(self, x):
        return self.units(x)


@pytest.fixture(scope="module")
def hostile_exemplars(tmp_path_factory):
    probe = write_images(tmp_path_factory.mktemp("probe"), 12)
    exemplars = extract_exemplars(
        HostileNet(), ["units"], str(probe), k=4, input_size=SIZE, progress=False
    )
    return {HostileUnits.KINDS[row[schema.UNIT]]: row for row in exemplars}


@pytest.mark.parametrize("kind", HostileUnits.KINDS[1:])
def test_non_finite_and_constant_units_are_dead_with_empty_masks(hostile_exemplars, kind):
    row = hostile_exemplars[kind]
    assert row[schema.DEAD], f"{kind} unit not flagged dead"
    assert not np.asarray(row[schema.MASKS]).any(), f"{kind} unit has non-empty masks"


def test_a_normal_unit_is_alive_with_masks(hostile_exemplars):
    row = hostile_exemplars["normal"]
    assert not row[schema.DEAD]
    assert np.asarray(row[schema.MASKS]).any()


@pytest.mark.parametrize("kind", ["some_plus_inf", "some_minus_inf", "some_nan", "all_nan"])
def test_activations_never_become_huge_finite_numbers(hostile_exemplars, kind):
    activations = hostile_exemplars[kind][schema.ACTIVATIONS]
    assert all(math.isinf(a) or abs(a) < 1e38 for a in activations), activations
    if kind == "some_plus_inf":
        assert activations[0] == math.inf  # the true maximum, ranked first


def maps_with_hostile_units(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(3, 5, 4, 4, generator=generator)
    maps[:, 1] = 2.5  # constant
    maps[0, 2, 1, 1] = math.inf
    maps[1, 3, 0, 0] = math.nan
    maps[:, 4] = 2.5 * (1 + 1e-7 * torch.rand(3, 4, 4, generator=generator))  # rounding noise
    return maps


def test_histogram_reports_its_dead_units():
    histogram = UnitHistogram(5)
    histogram.update(maps_with_hostile_units(0))
    assert histogram.dead_units().tolist() == [False, True, True, True, True]
    assert UnitHistogram(2).dead_units().tolist() == [True, True]  # saw nothing


def test_histograms_merge_to_the_histogram_of_all_the_data():
    first, second = maps_with_hostile_units(1), maps_with_hostile_units(2)
    together = UnitHistogram(5)
    together.update(torch.cat([first, second]))
    merged = UnitHistogram(5)
    merged.update(first)
    part = UnitHistogram(5)
    part.update(second)
    merged.merge_(part)
    assert torch.equal(merged.counts, together.counts)
    assert torch.equal(merged.dead_units(), together.dead_units())
    assert torch.allclose(merged.quantile(0.5), together.quantile(0.5), equal_nan=True)


class TwoIdenticalProcesses:
    """What ``accelerate.Accelerator`` offers for merging, as seen by one of two processes
    that saw the same data: ``gather`` stacks both processes' tensors."""

    num_processes = 2

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tensor])


def test_histogram_merges_across_processes_itself():
    maps = maps_with_hostile_units(3)
    histogram, twice = UnitHistogram(5), UnitHistogram(5)
    histogram.update(maps)
    twice.update(torch.cat([maps, maps]))
    histogram.merge_across_processes(TwoIdenticalProcesses())
    assert torch.equal(histogram.counts, twice.counts)
    assert torch.equal(histogram.minimum, twice.minimum)
    assert torch.equal(histogram.maximum, twice.maximum)
    assert torch.equal(histogram.dead_units(), twice.dead_units())
