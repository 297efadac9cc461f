"""The fixed-grid histogram quantile against torch.quantile over all values."""

from __future__ import annotations

import pytest
import torch

from milan_hf.quantile_sketch import NUM_BINS, UnitHistogram, _bin_lower_edges


def feed(histogram: UnitHistogram, values: torch.Tensor, batches: int) -> None:
    for chunk in values.chunk(batches, dim=0):
        histogram.update(chunk)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_quantile_within_stated_tolerance(q):
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 100.0, 1e-3, 3.0, 1.0]).view(1, 5, 1, 1)
    shifts = torch.tensor([0.0, -50.0, 0.0, 5.0, 0.0]).view(1, 5, 1, 1)
    values = torch.randn(64, 5, 12, 12) * scales + shifts
    values[:, 4] = torch.relu(values[:, 4])  # half exact zeros, like a ReLU unit
    histogram = UnitHistogram(5)
    feed(histogram, values, batches=7)
    flat = values.transpose(0, 1).reshape(5, -1)
    ordered = flat.sort(dim=1).values
    estimate = histogram.quantile(q)
    # Stated tolerance: the estimate lies in a bin (2**-7 relative wide, or the bin of width
    # 2**-16 around zero) holding one of the order statistics next to the exact quantile.
    rank = q * (flat.shape[1] - 1)
    low = ordered[:, max(int(rank) - 1, 0)]
    high = ordered[:, min(int(rank) + 2, flat.shape[1] - 1)]
    slack = 2**-7
    assert torch.all(estimate >= low - slack * low.abs() - 2**-16), (estimate, low)
    assert torch.all(estimate <= high + slack * high.abs() + 2**-16), (estimate, high)
    exact = torch.quantile(flat, q, dim=1)
    if q in (0.9, 0.99):  # the use case, dense and away from zero: within 1% of exact
        assert torch.all((estimate - exact).abs() <= 0.01 * exact.abs() + 1e-4)


def test_merge_is_exact_and_order_free():
    torch.manual_seed(1)
    values = torch.randn(40, 3, 5, 5).exp()
    whole = UnitHistogram(3)
    feed(whole, values, batches=1)
    left, right = UnitHistogram(3), UnitHistogram(3)
    feed(left, values[25:], batches=3)
    feed(right, values[:25], batches=2)
    merged = left.merge_(right)
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(merged.quantile(0.99), whole.quantile(0.99))


def test_nan_and_extremes():
    values = torch.zeros(2, 2, 3, 3)
    values[:, 0] = 7.0
    values[0, 0, 0, 0] = float("nan")
    values[:, 1] = 1e9  # beyond the grid: saturates, clamped to the exact maximum
    histogram = UnitHistogram(2)
    histogram.update(values)
    assert histogram.nan_count.tolist() == [1, 0]
    assert histogram.counts.view(2, NUM_BINS).sum(dim=1).tolist() == [17, 18]
    assert histogram.quantile(0.5).tolist() == pytest.approx([7.0, 1e9], rel=1e-2)
    assert histogram.maximum.tolist() == [7.0, 1e9]


def test_bin_edges_increase_and_bad_arguments():
    edges = _bin_lower_edges()
    assert len(edges) == NUM_BINS + 1 and bool((edges[1:] > edges[:-1]).all())
    with pytest.raises(ValueError, match="quantile must be in"):
        UnitHistogram(1).quantile(1.5)
    with pytest.raises(ValueError, match=r"expected maps of shape \(batch, 3"):
        UnitHistogram(3).update(torch.zeros(2, 4, 1, 1))
