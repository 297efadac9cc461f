"""Streaming per-unit quantiles with bounded memory, exact under merging.

MILAN thresholds each unit at a high quantile (0.99) of *all* its spatial activations over the
probe set. Keeping every activation is out of the question at ImageNet scale, so each unit keeps
a histogram over a fixed, data-independent grid of float32 values: the bin of a value is its
sign, exponent and top ``MANTISSA_BITS`` mantissa bits. Because the grid is fixed, histograms
from different batches or processes merge by addition, so a run split over any number of
processes gives *exactly* the single-process threshold; memory is ``units × NUM_BINS`` counts,
independent of the number of images.

Accuracy: a bin spans a relative width of ``2**-MANTISSA_BITS`` (0.78%); the estimate
interpolates linearly inside the bin, so its error is below 0.78% of the quantile's magnitude
(typically far less). Magnitudes below ``2**MIN_EXPONENT`` (1.5e-5) share the bin next to zero
and magnitudes above ``2**MAX_EXPONENT`` (65536) share the outermost bins; the estimate is
clamped to the unit's exact running minimum and maximum, which are tracked alongside.
"""

from __future__ import annotations

import torch

MANTISSA_BITS = 7
MIN_EXPONENT = -16
MAX_EXPONENT = 16
_MAGNITUDE_BINS = (MAX_EXPONENT - MIN_EXPONENT) << MANTISSA_BITS
#: bins per unit: negative magnitudes (mirrored), the shared near-zero bin, positive magnitudes
NUM_BINS = 2 * _MAGNITUDE_BINS - 1
# float32 bit pattern of 2**MIN_EXPONENT, shifted to keep the exponent and top mantissa bits
_FIRST_MAGNITUDE_KEY = (127 + MIN_EXPONENT) << MANTISSA_BITS


def _bin_lower_edges() -> torch.Tensor:
    """Value at the lower edge of every bin, in bin order, plus the upper edge of the last."""
    magnitude_index = torch.arange(_MAGNITUDE_BINS + 1, dtype=torch.float64)
    exponent = torch.div(magnitude_index, 1 << MANTISSA_BITS, rounding_mode="floor")
    mantissa = magnitude_index - exponent * (1 << MANTISSA_BITS)
    magnitude_edges = torch.pow(2.0, exponent + MIN_EXPONENT) * (
        1 + mantissa / (1 << MANTISSA_BITS)
    )
    magnitude_edges[0] = 0.0  # the first magnitude bin also holds everything tinier
    # Bin b (0..NUM_BINS-1) covers signed magnitude index s = b - (M-1) in [-(M-1), M-1]:
    # for s >= 0 it spans [edge[s], edge[s+1]); for s < 0 it spans (-edge[-s+1], -edge[-s]].
    negative = -magnitude_edges.flip(0)[:-1]  # -edge[M] ... -edge[1]
    return torch.cat([negative, magnitude_edges[1:]])  # NUM_BINS + 1 edges, increasing


class UnitHistogram:
    """Fixed-grid activation histograms for ``num_units`` units, updated batch by batch.

    Also tracks each unit's exact minimum, maximum and count of NaN activations, which mark
    dead units (constant or NaN everywhere).
    """

    def __init__(self, num_units: int, device: torch.device | str = "cpu"):
        self.num_units = num_units
        self.counts = torch.zeros(num_units * NUM_BINS, dtype=torch.int64, device=device)
        self.minimum = torch.full((num_units,), float("inf"), dtype=torch.float32, device=device)
        self.maximum = torch.full((num_units,), float("-inf"), dtype=torch.float32, device=device)
        self.nan_count = torch.zeros(num_units, dtype=torch.int64, device=device)
        # Added to each unit's signed magnitude index so that unit u's bins start at u*NUM_BINS.
        self._offsets = (
            torch.arange(num_units, dtype=torch.int32, device=device) * NUM_BINS
            + (_MAGNITUDE_BINS - 1)
        ).view(1, num_units, 1, 1)

    def update(self, maps: torch.Tensor) -> None:
        """Add activation maps of shape (batch, units, height, width)."""
        maps = maps.detach().float().contiguous()
        if maps.dim() != 4 or maps.shape[1] != self.num_units:
            raise ValueError(
                f"expected maps of shape (batch, {self.num_units}, height, width), "
                f"got {tuple(maps.shape)}"
            )
        nan = torch.isnan(maps)
        if bool(nan.any()):
            nan_per_unit = nan.sum(dim=(0, 2, 3))
            self.nan_count += nan_per_unit
            self.minimum = torch.minimum(
                self.minimum, maps.masked_fill(nan, float("inf")).amin(dim=(0, 2, 3))
            )
            self.maximum = torch.maximum(
                self.maximum, maps.masked_fill(nan, float("-inf")).amax(dim=(0, 2, 3))
            )
            # Histogram NaNs as zeros, then take those zeros back out of the zero bins.
            maps = maps.masked_fill(nan, 0.0)
            self.counts.index_add_(0, self._offsets.view(-1).long(), -nan_per_unit)
        else:
            self.minimum = torch.minimum(self.minimum, maps.amin(dim=(0, 2, 3)))
            self.maximum = torch.maximum(self.maximum, maps.amax(dim=(0, 2, 3)))
        # Bit tricks instead of log2: a handful of in-place integer passes over the data.
        bits = maps.view(torch.int32)
        sign = bits >> 31  # 0 for +, -1 for -
        index = torch.bitwise_and(bits, 0x7FFFFFFF).bitwise_right_shift_(23 - MANTISSA_BITS)
        index.clamp_(_FIRST_MAGNITUDE_KEY, _FIRST_MAGNITUDE_KEY + _MAGNITUDE_BINS - 1)
        index.sub_(_FIRST_MAGNITUDE_KEY)  # magnitude index in [0, _MAGNITUDE_BINS)
        index.bitwise_xor_(sign).sub_(sign)  # negate the index of negative values
        index.add_(self._offsets)
        ones = torch.ones(1, dtype=torch.int64, device=index.device).expand(index.numel())
        self.counts.index_add_(0, index.view(-1), ones)

    def merge_(self, other: UnitHistogram) -> UnitHistogram:
        """Add another histogram's counts (e.g. from another process) into this one."""
        self.counts += other.counts
        self.minimum = torch.minimum(self.minimum, other.minimum)
        self.maximum = torch.maximum(self.maximum, other.maximum)
        self.nan_count += other.nan_count
        return self

    def quantile(self, q: float) -> torch.Tensor:
        """Per-unit estimate of the q-quantile (linear interpolation, like ``torch.quantile``)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        counts = self.counts.view(self.num_units, NUM_BINS).double().cpu()
        total = counts.sum(dim=1)
        cumulative = counts.cumsum(dim=1)
        # 0-based fractional rank of the quantile among the sorted values.
        rank = q * (total - 1).clamp(min=0)
        bin_index = torch.searchsorted(cumulative, rank.unsqueeze(1), right=True).squeeze(1)
        bin_index = bin_index.clamp(max=NUM_BINS - 1)
        before = torch.where(
            bin_index > 0,
            cumulative.gather(1, (bin_index - 1).clamp(min=0).unsqueeze(1)).squeeze(1),
            torch.zeros_like(rank),
        )
        in_bin = counts.gather(1, bin_index.unsqueeze(1)).squeeze(1).clamp(min=1)
        fraction = ((rank - before + 0.5) / in_bin).clamp(0.0, 1.0)
        edges = _bin_lower_edges()
        lower, upper = edges[bin_index], edges[bin_index + 1]
        estimate = lower + fraction * (upper - lower)
        estimate = torch.maximum(
            torch.minimum(estimate, self.maximum.double().cpu()), self.minimum.double().cpu()
        )
        estimate[total == 0] = float("nan")
        return estimate.float()
