"""Switch off units of a vision model and measure what it costs: the ablation engine.

``ablate_units(model, {"layer4": [3, 17]})`` is a context manager that, by forward hooks, sets
the chosen units of each named layer to zero (or to their mean activation) for every forward
pass inside the ``with`` block; the model is untouched afterwards. Units are indexed as in the
exemplar sets (``milan_hf.exemplars``): the channel of a ``(B, C, H, W)`` or ``(B, C)`` output,
the last dimension of a ``(B, tokens, C)`` one. Works for any ``torch.nn.Module`` (timm,
transformers, plain torch) and for a :class:`~milan_hf.vision_models.VisionModel`.

``AccuracyEvaluator`` preprocesses a labelled ``datasets.Dataset`` once and then measures the
model's accuracy on it as often as asked (batched, on an ``accelerate`` accelerator's processes
when given one); ``ablation_curve`` ablates units cumulatively in a given order (e.g. by a score
of their descriptions) and returns accuracy against the number ablated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .exemplars import layer_output_tensor
from .vision_models import VisionModel

ABLATION_MODES = ("zero", "mean")
#: A unit: (layer name, unit index).
Unit = tuple[str, int]


def _module_of(model: torch.nn.Module | VisionModel) -> torch.nn.Module:
    return model.module if isinstance(model, VisionModel) else model


def _named_layers(module: torch.nn.Module, layers: Sequence[str]) -> dict[str, torch.nn.Module]:
    modules = dict(module.named_modules())
    missing = [layer for layer in layers if layer not in modules]
    if missing:
        raise ValueError(f"unknown layer(s) {missing} of {type(module).__name__}")
    return {layer: modules[layer] for layer in layers}


def _unit_dim(tensor: torch.Tensor) -> int:
    """The dimension that indexes units, as in ``milan_hf.exemplars.output_to_maps``."""
    if tensor.dim() in (2, 4):
        return 1
    if tensor.dim() == 3:
        return 2
    raise ValueError(f"cannot ablate units of an output of shape {tuple(tensor.shape)}")


def _replace_first(output: Any, tensor: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    first_key = next(iter(output.keys()))  # a transformers ModelOutput: mutable mapping
    output[first_key] = tensor
    return output


def _ablation_hook(layer: str, units: torch.Tensor, values: torch.Tensor | None) -> Callable:
    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        tensor = layer_output_tensor(output, layer)
        dim = _unit_dim(tensor)
        if int(units.max()) >= tensor.shape[dim]:
            raise ValueError(
                f"unit {int(units.max())} is out of range: the layer has {tensor.shape[dim]} units"
            )
        index = units.to(tensor.device)
        keep = torch.ones(tensor.shape[dim], dtype=tensor.dtype, device=tensor.device)
        keep[index] = 0
        mask_shape = [1] * tensor.dim()
        mask_shape[dim] = tensor.shape[dim]
        ablated = tensor * keep.view(mask_shape)  # not in place: autograd and views stay valid
        if values is not None:
            fill = torch.zeros(tensor.shape[dim], dtype=tensor.dtype, device=tensor.device)
            fill[index] = values.to(tensor.device, tensor.dtype)
            ablated = ablated + fill.view(mask_shape)
        return _replace_first(output, ablated)

    return hook


@contextlib.contextmanager
def ablate_units(
    model: torch.nn.Module | VisionModel,
    units: Mapping[str, Sequence[int]] | Sequence[Unit],
    mode: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Inside the block, the chosen units output zero (``mode="zero"``) or a constant, their
    mean activation (``mode="mean"``, ``means[layer]`` one value per unit of that layer, e.g.
    from :func:`unit_means`).

    ``units``: ``{layer: [unit, ...]}`` or a list of ``(layer, unit)`` pairs. Hooks are removed
    on exit, also when the block raises.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose from {ABLATION_MODES}")
    by_layer = group_units(units)
    if mode == "mean":
        missing = [layer for layer in by_layer if means is None or layer not in means]
        if missing:
            raise ValueError(f"mean ablation needs the mean activations of layer(s) {missing}")
    modules = _named_layers(_module_of(model), list(by_layer))
    handles = []
    try:
        for layer, indices in by_layer.items():
            if not indices:
                continue
            index = torch.tensor(sorted(set(indices)), dtype=torch.long)
            values = None if mode == "zero" else torch.as_tensor(means[layer])[index]
            handles.append(
                modules[layer].register_forward_hook(_ablation_hook(layer, index, values))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


def group_units(units: Mapping[str, Sequence[int]] | Sequence[Unit]) -> dict[str, list[int]]:
    """``{layer: [unit, ...]}`` from either form ``ablate_units`` accepts; checks the indices."""
    pairs = (
        [(layer, unit) for layer, indices in units.items() for unit in indices]
        if isinstance(units, Mapping)
        else [tuple(pair) for pair in units]
    )
    grouped: dict[str, list[int]] = {}
    for layer, unit in pairs:
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or unit < 0:
            raise ValueError(f"unit indices must be integers >= 0, got {unit!r} in {layer!r}")
        grouped.setdefault(str(layer), []).append(int(unit))
    return grouped


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return layer_output_tensor(output, "the model's output")


@dataclass
class AccuracyEvaluator:
    """A model's accuracy on a labelled dataset, preprocessed once, measured repeatedly.

    Args:
        model: the classifier (a module, or a ``VisionModel`` whose transform is the default).
        dataset: a ``datasets.Dataset`` with an image column and an integer label column.
        transform: PIL image -> normalised tensor (default: the ``VisionModel``'s).
        accelerator: an ``accelerate.Accelerator``: each process scores its shard of the
            batches and the predictions are gathered (default: one process on ``device``).
    """

    model: torch.nn.Module | VisionModel
    dataset: datasets.Dataset
    transform: Callable[[Image.Image], torch.Tensor] | None = None
    image_column: str = "image"
    label_column: str = "label"
    batch_size: int = 64
    accelerator: Any = None
    device: torch.device | str | None = None
    progress: bool = True
    _batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for column in (self.image_column, self.label_column):
            if column not in self.dataset.column_names:
                raise ValueError(
                    f"the dataset has no column {column!r} (columns: {self.dataset.column_names})"
                )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        transform = self.transform
        if transform is None:
            if not isinstance(self.model, VisionModel):
                raise ValueError("pass a transform, or the model as a milan_hf VisionModel")
            transform = self.model.transform
        self.keyword_input = isinstance(self.model, VisionModel) and self.model.keyword_input
        self.module = _module_of(self.model).eval()
        if self.accelerator is not None:
            self.device = self.accelerator.device
        self.device = torch.device(self.device or "cpu")
        self.module.to(self.device)
        indices = list(range(len(self.dataset)))
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            # Contiguous shards; gather_for_metrics drops nothing since shards are explicit.
            shard = np.array_split(indices, self.accelerator.num_processes)
            indices = shard[self.accelerator.process_index].tolist()
        rows = self.dataset.select_columns([self.image_column, self.label_column])
        for start in tqdm(
            range(0, len(indices), self.batch_size),
            desc="preparing images",
            disable=not self.progress,
        ):
            batch = rows[indices[start : start + self.batch_size]]
            pixels = torch.stack(
                [transform(image.convert("RGB")) for image in batch[self.image_column]]
            )
            labels = torch.as_tensor(batch[self.label_column], dtype=torch.long)
            self._batches.append((pixels, labels))

    @torch.inference_mode()
    def predictions(self, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class, label) for every image, gathered over processes."""
        predicted, labels = [], []
        for pixels, batch_labels in tqdm(
            self._batches, desc=desc, disable=not (self.progress and desc)
        ):
            pixels = pixels.to(self.device)
            output = self.module(pixel_values=pixels) if self.keyword_input else self.module(pixels)
            predicted.append(_logits(output).argmax(-1).cpu())
            labels.append(batch_labels)
        predicted_all = torch.cat(predicted) if predicted else torch.empty(0, dtype=torch.long)
        labels_all = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            predicted_all = self._gather(predicted_all)
            labels_all = self._gather(labels_all)
        return predicted_all, labels_all

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        from accelerate.utils import gather_object

        return torch.cat(gather_object([values]))

    def accuracy(self, desc: str | None = None) -> float:
        predicted, labels = self.predictions(desc)
        return float((predicted == labels).float().mean()) if len(labels) else float("nan")

    def accuracy_without(
        self,
        units: Mapping[str, Sequence[int]] | Sequence[Unit],
        mode: str = "zero",
        means: Mapping[str, torch.Tensor] | None = None,
    ) -> float:
        """Accuracy with ``units`` ablated."""
        with ablate_units(self.module, units, mode=mode, means=means):
            return self.accuracy()


def evaluate_accuracy(
    model: torch.nn.Module | VisionModel,
    dataset: datasets.Dataset,
    *,
    ablated: Mapping[str, Sequence[int]] | Sequence[Unit] = (),
    mode: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
    **evaluator_options: Any,
) -> float:
    """Accuracy of ``model`` on ``dataset`` (optionally with ``ablated`` units switched off);
    ``evaluator_options`` as in :class:`AccuracyEvaluator`."""
    evaluator = AccuracyEvaluator(model, dataset, **evaluator_options)
    return evaluator.accuracy_without(ablated, mode=mode, means=means)


@torch.inference_mode()
def unit_means(evaluator: AccuracyEvaluator, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean activation of every unit of ``layers`` over the evaluator's images (and positions),
    the constant that mean ablation substitutes."""
    modules = _named_layers(evaluator.module, layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(layers, 0)

    def recorder(layer: str) -> Callable:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            tensor = layer_output_tensor(output, layer).float()
            dim = _unit_dim(tensor)
            flat = tensor.movedim(dim, -1).reshape(-1, tensor.shape[dim])
            sums[layer] = sums.get(layer, 0) + flat.sum(0).cpu()
            counts[layer] += flat.shape[0]

        return hook

    handles = [modules[layer].register_forward_hook(recorder(layer)) for layer in layers]
    try:
        evaluator.predictions()
    finally:
        for handle in handles:
            handle.remove()
    return {layer: sums[layer] / max(1, counts[layer]) for layer in layers}


@dataclass
class AblationCurve:
    """Accuracy after ablating the first ``num_ablated[i]`` units of ``order``."""

    order: list[Unit]
    num_ablated: list[int]
    accuracy: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "order": [list(unit) for unit in self.order],
            "num_ablated": self.num_ablated,
            "accuracy": self.accuracy,
        }


def ablation_steps(total: int, num_points: int | None, every_up_to: int = 0) -> list[int]:
    """Counts 0..total at which to measure: every count (``num_points=None``), or every count
    up to ``every_up_to`` and then ``num_points`` spread evenly over 0..total."""
    if num_points is None or num_points >= total + 1:
        return list(range(total + 1))
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2, got {num_points}")
    spread = {round(x) for x in np.linspace(0, total, num_points)}
    return sorted(spread | set(range(min(every_up_to, total) + 1)))


def ablation_curve(
    evaluator: AccuracyEvaluator,
    order: Sequence[Unit],
    *,
    steps: Sequence[int] | None = None,
    mode: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
    desc: str = "ablating",
) -> AblationCurve:
    """Ablate ``order``'s units cumulatively (first 0, then the first n, ...) and measure.

    ``steps``: the counts to measure at (default: every count from 0 to ``len(order)``).
    """
    order = [(str(layer), int(unit)) for layer, unit in order]
    steps = list(range(len(order) + 1)) if steps is None else sorted(set(int(s) for s in steps))
    if steps and (steps[0] < 0 or steps[-1] > len(order)):
        raise ValueError(f"steps must lie in 0..{len(order)}, got {steps[0]}..{steps[-1]}")
    accuracies = []
    for count in tqdm(steps, desc=desc, disable=not evaluator.progress):
        accuracies.append(evaluator.accuracy_without(order[:count], mode=mode, means=means))
    return AblationCurve(order, steps, accuracies)


def single_unit_accuracies(
    evaluator: AccuracyEvaluator,
    units: Sequence[Unit],
    mode: str = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
) -> list[float]:
    """Accuracy with each unit of ``units`` ablated alone."""
    return [
        evaluator.accuracy_without([unit], mode=mode, means=means)
        for unit in tqdm(units, desc="ablating one at a time", disable=not evaluator.progress)
    ]
