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

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

MANTISSA_BITS = 7
MIN_EXPONENT = -16
MAX_EXPONENT = 16
#: A unit whose activations span at most this fraction of their magnitude is constant (dead):
#: about 100 float32 steps, far below any real variation and above rounding noise.
CONSTANT_RELATIVE_RANGE = 1e-5
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

    Only finite activations are histogrammed. Each unit also tracks the exact minimum and
    maximum of its finite activations and its counts of NaN and ±inf ones, from which
    :meth:`dead_units` tells the units no threshold can describe.
    """

    def __init__(self, num_units: int, device: torch.device | str = "cpu"):
        self.num_units = num_units
        self.counts = torch.zeros(num_units * NUM_BINS, dtype=torch.int64, device=device)
        self.minimum = torch.full((num_units,), float("inf"), dtype=torch.float32, device=device)
        self.maximum = torch.full((num_units,), float("-inf"), dtype=torch.float32, device=device)
        self.nan_count = torch.zeros(num_units, dtype=torch.int64, device=device)
        self.inf_count = torch.zeros(num_units, dtype=torch.int64, device=device)
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
        nonfinite = ~torch.isfinite(maps)
        if bool(nonfinite.any()):
            nonfinite_per_unit = nonfinite.sum(dim=(0, 2, 3))
            nan_per_unit = torch.isnan(maps).sum(dim=(0, 2, 3))
            self.nan_count += nan_per_unit
            self.inf_count += nonfinite_per_unit - nan_per_unit
            self.minimum = torch.minimum(
                self.minimum, maps.masked_fill(nonfinite, float("inf")).amin(dim=(0, 2, 3))
            )
            self.maximum = torch.maximum(
                self.maximum, maps.masked_fill(nonfinite, float("-inf")).amax(dim=(0, 2, 3))
            )
            # Histogram non-finite values as zeros, then take those zeros back out of the zero
            # bins: the histogram and its quantiles describe the finite activations only.
            maps = maps.masked_fill(nonfinite, 0.0)
            self.counts.index_add_(0, self._offsets.view(-1).long(), -nonfinite_per_unit)
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
        if other.num_units != self.num_units:
            raise ValueError(
                f"cannot merge a histogram of {other.num_units} units into one of {self.num_units}"
            )
        self.counts += other.counts
        self.minimum = torch.minimum(self.minimum, other.minimum)
        self.maximum = torch.maximum(self.maximum, other.maximum)
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count
        return self

    def merge_across_processes(self, accelerator: Accelerator) -> UnitHistogram:
        """Replace this process's histogram by the merge of every process's (in place; every
        process ends with the same histogram). ``accelerator.gather`` concatenates along
        dimension 0, as ``accelerate.Accelerator.gather`` does."""
        if accelerator.num_processes == 1:
            return self
        self.counts = accelerator.gather(self.counts[None]).sum(dim=0)
        self.nan_count = accelerator.gather(self.nan_count[None]).sum(dim=0)
        self.inf_count = accelerator.gather(self.inf_count[None]).sum(dim=0)
        self.minimum = accelerator.gather(self.minimum[None]).amin(dim=0)
        self.maximum = accelerator.gather(self.maximum[None]).amax(dim=0)
        return self

    def dead_units(self) -> torch.Tensor:
        """Per unit (bool, on the CPU): whether no threshold can describe it.

        Dead are units with any non-finite activation (NaN, ±inf), with no activation at all,
        and constant units: those whose finite activations span at most
        ``CONSTANT_RELATIVE_RANGE`` of their magnitude, so that values equal up to
        float rounding (which upsampling would turn into speckled masks) count as one.
        """
        minimum, maximum = self.minimum.double().cpu(), self.maximum.double().cpu()
        magnitude = torch.maximum(minimum.abs(), maximum.abs())
        seen = self.counts.view(self.num_units, NUM_BINS).sum(dim=1).cpu() > 0
        constant = ~(maximum - minimum > CONSTANT_RELATIVE_RANGE * magnitude)
        nonfinite = (self.nan_count + self.inf_count).cpu() > 0
        return nonfinite | ~seen | constant

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
